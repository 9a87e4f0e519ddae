//! Renders a run's stages as Piston's clients read them: `run` and `compile` with stdout,
//! stderr, output, code, signal, message, status, cpu_time and wall_time in ms, memory in bytes.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::answer::Row;
use crate::hooks::RunResult as Metric;
use crate::run::RunResult;
use crate::sandbox::job::{LimitHit, StageOutcome, signal_name};
use crate::sandbox::{SandboxError, StreamKind};

/// A stage's `code` and `signal` as Piston writes them: a limit's kill is SIGKILL, and a stage a
/// signal ended has no code.
pub(super) fn stage_exit(s: &StageOutcome) -> (Option<i64>, Option<String>) {
    let signal = match s.limit_hit() {
        Some(_) => Some(libc::SIGKILL),
        None => s.signal(),
    };
    let code = if signal.is_some() {
        None
    } else {
        s.exit_code()
    };
    (code, signal.map(signal_name))
}

/// One stage as Piston writes it.
fn stage_json(s: &StageOutcome) -> Value {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut output = Vec::new();
    for c in s.output() {
        match c.kind {
            StreamKind::Stdout => stdout.extend_from_slice(&c.data),
            StreamKind::Stderr => stderr.extend_from_slice(&c.data),
        }
        output.extend_from_slice(&c.data);
    }
    let hit = s.limit_hit();
    let last_stream = s.output().last().map(|c| c.kind);
    let (status, message) = match hit {
        Some(LimitHit::Time) => (Some("TO"), Some("Time limit exceeded".to_owned())),
        Some(LimitHit::Cpu) => (Some("TO"), Some("CPU time limit exceeded".to_owned())),
        Some(LimitHit::Memory) => (Some("SG"), Some("Memory limit exceeded".to_owned())),
        Some(LimitHit::Output) if last_stream == Some(StreamKind::Stderr) => {
            (Some("EL"), Some("stderr length exceeded".to_owned()))
        }
        Some(LimitHit::Output) => (Some("OL"), Some("stdout length exceeded".to_owned())),
        None => match (s.exit_code(), s.signal()) {
            (_, Some(sig)) => (Some("SG"), Some(format!("Killed by signal {sig}"))),
            (Some(0), None) => (None, None),
            (Some(code), None) => (Some("RE"), Some(format!("Exited with error status {code}"))),
            (None, None) => (Some("XX"), None),
        },
    };
    let (code, signal) = stage_exit(s);
    let m = s.measures;
    let ms = |d: Duration| (d.as_micros() + 500) / 1000;
    json!({
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "output": String::from_utf8_lossy(&output),
        "code": code,
        "signal": signal,
        "message": message,
        "status": status,
        "cpu_time": m.map(|m| ms(m.cpu)),
        "wall_time": ms(m.map_or(s.elapsed, |m| m.wall)),
        "memory": m.and_then(|m| m.peak_memory),
    })
}

pub(super) fn render(language: &str, version: &str, r: &Result<RunResult, SandboxError>) -> Row {
    let ran = match r {
        Ok(ran) => ran,
        Err(e) => {
            let body = json!({ "message": format!("sandbox failed: {}", e.kind.public_text()) });
            return Row {
                status: 500,
                body: Bytes::from(serde_json::to_vec(&body).expect("serializes")),
                cacheable: false,
                metric: Some(Metric::SandboxError),
                retry_after: false,
            };
        }
    };
    let mut out = Map::new();
    out.insert("language".into(), json!(language));
    out.insert("version".into(), json!(version));
    let compile = ran.compile.as_ref().map(stage_json);
    // As Piston: after a failed compile, `run` is a copy of `compile`.
    let run = ran.run.as_ref().map(stage_json).or_else(|| compile.clone());
    out.insert("run".into(), run.unwrap_or(Value::Null));
    if let Some(c) = compile {
        out.insert("compile".into(), c);
    }
    let limited = [&ran.compile, &ran.run]
        .into_iter()
        .flatten()
        .any(|s| s.limit_hit().is_some_and(|h| h != LimitHit::Output));
    Row {
        status: 200,
        body: Bytes::from(serde_json::to_vec(&Value::Object(out)).expect("serializes")),
        cacheable: !limited,
        metric: Some(RunResult::metric(r)),
        retry_after: false,
    }
}
