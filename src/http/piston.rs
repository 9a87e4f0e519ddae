//! Piston's v2 API on the same port: `GET /api/v2/runtimes` and `POST /api/v2/execute` (trailing
//! slashes too), with the shapes, units and edge cases Piston's clients read (see the README's
//! "Piston API"). A request decodes into one run request (`run`) and goes through the same
//! cache, admission and sandboxes as /compile; its answer is rendered here. Departures from
//! Piston, on purpose: the body is JSON whatever its Content-Type (piston-client sends
//! text/plain), a missing `version` is `*` (piston-client leaves it out for aliases), and every
//! error is 400 `{"message"}` as application/json.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::App;
use super::body::{BodyError, read_bounded};
use super::routes::{Resp, answer_response, response};
use crate::answer::Row;
use crate::compile::RunRender;
use crate::hooks::RunResult as Metric;
use crate::languages::Language;
use crate::run::limits::OverMaximum;
use crate::run::{Bounds, RunJob, RunLimits, RunRequest, RunResult};
use crate::sandbox::job::{JobFile, LimitHit, StageOutcome, signal_name};
use crate::sandbox::{SandboxError, StreamKind};

/// Room in a request body for the JSON around the files and stdin.
const BODY_SLACK: usize = 64 << 10;

/// Piston's usual short names of each language.
fn aliases(name: &str) -> &'static [&'static str] {
    match name {
        "python" => &["py", "py3", "python3"],
        "go" => &["golang"],
        "c" => &["gcc"],
        "cpp" | "c++" => &["g++", "cpp", "c++"],
        "javascript" => &["js", "node", "node-js"],
        "sh" => &["shell"],
        "bash" => &["sh"],
        "rust" => &["rs"],
        _ => &[],
    }
}

/// The semver of a toolchain version as the image records it (`python 3.11.2` → `3.11.2`).
pub(super) fn semver(version: &str) -> String {
    let last = version.split_whitespace().last().unwrap_or("");
    let v: String = last
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    if v.is_empty() { "0.0.0".into() } else { v }
}

/// Whether `version` is in the range `want`: `*`, an exact version, or a prefix with `x`/`*`
/// parts (`3`, `3.x`, `3.11.*`).
fn version_matches(want: &str, version: &str) -> bool {
    let want = want.trim().trim_start_matches(['=', 'v', '^', '~']);
    if want.is_empty() || want == "*" {
        return true;
    }
    let have: Vec<&str> = version.split('.').collect();
    want.split('.')
        .enumerate()
        .all(|(i, w)| matches!(w, "x" | "X" | "*") || have.get(i).is_some_and(|h| *h == w))
}

fn runtimes_body(app: &App) -> Bytes {
    let list: Vec<Value> = app
        .languages
        .iter()
        .filter(|l| l.stages.is_some())
        .map(|l| {
            json!({
                "language": l.name,
                "version": semver(&l.version),
                "aliases": aliases(&l.name),
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&list).expect("runtimes serialize"))
}

fn message(status: u16, text: &str) -> Resp {
    let body = serde_json::to_vec(&json!({ "message": text })).expect("message serializes");
    response(status, "application/json", Bytes::from(body))
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = message(405, "Method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Whether `path` is one of ours, and which.
pub fn route(path: &str) -> Option<&'static str> {
    match path.strip_suffix('/').unwrap_or(path) {
        "/api/v2/runtimes" => Some("piston_runtimes"),
        "/api/v2/execute" => Some("piston_execute"),
        _ => None,
    }
}

pub async fn handle(app: &App, which: &'static str, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method == Method::OPTIONS {
        let mut r = response(204, "text/plain; charset=utf-8", Bytes::new());
        app.cors.preflight(&parts.headers, r.headers_mut());
        return r;
    }
    let mut resp = if !app.cors.allows(&parts.headers) {
        // Before the body is read: a page from another origin gets nothing run.
        app.hooks.origin_refused();
        message(403, "Origin not allowed")
    } else if which == "piston_runtimes" {
        if parts.method == Method::GET || parts.method == Method::HEAD {
            response(200, "application/json", runtimes_body(app))
        } else {
            not_allowed("GET, HEAD")
        }
    } else if parts.method != Method::POST {
        not_allowed("POST, OPTIONS")
    } else {
        let bounds = Bounds::default();
        let max = bounds.max_total_bytes * 2 + bounds.max_stdin_bytes * 2 + BODY_SLACK;
        match read_bounded(&parts.headers, body, max, app.read_timeout).await {
            Ok(bytes) => execute(app, &bytes, &bounds, started).await,
            Err(BodyError::TooLarge { .. }) => message(400, "request body is too large"),
            Err(BodyError::Timeout) => message(400, "request body timed out"),
            Err(BodyError::Broken) => message(400, "request body broken"),
        }
    };
    app.cors.apply(&parts.headers, resp.headers_mut());
    resp
}

/// A decoded request: its language and run request.
pub(super) struct Decoded<'a> {
    pub lang: &'a Arc<Language>,
    pub req: RunRequest,
}

fn find<'a>(app: &'a App, name: &str, version: &str) -> Option<&'a std::sync::Arc<Language>> {
    app.languages.iter().find(|l| {
        l.stages.is_some()
            && (l.name == name || aliases(&l.name).contains(&name))
            && version_matches(version, &semver(&l.version))
    })
}

fn decode_content(i: usize, f: &Map<String, Value>) -> Result<Bytes, String> {
    let Some(Value::String(content)) = f.get("content") else {
        return Err(format!("files[{i}].content must be a string"));
    };
    match f.get("encoding").and_then(Value::as_str).unwrap_or("utf8") {
        "utf8" | "" => Ok(Bytes::from(content.clone().into_bytes())),
        "base64" => base64_decode(content)
            .map(Bytes::from)
            .ok_or_else(|| format!("files[{i}].content is not valid base64")),
        "hex" => hex_decode(content)
            .map(Bytes::from)
            .ok_or_else(|| format!("files[{i}].content is not valid hex")),
        other => Err(format!(
            "files[{i}].encoding {other:?} is none of utf8, base64, hex"
        )),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A limit field: missing, null or -1 keeps the language's; other negatives are refused.
fn limit(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(-1.0) => Ok(None),
            Some(v) if v < 0.0 => Err(format!("{name} must be non-negative")),
            Some(v) => Ok(Some(v as u64)),
            None => Err(format!("{name} must be a number")),
        },
        Some(_) => Err(format!("{name} must be a number")),
    }
}

pub(super) fn decode<'a>(
    app: &'a App,
    body: &[u8],
    bounds: &Bounds,
) -> Result<Decoded<'a>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(body) = value else {
        return Err("the request must be a JSON object".into());
    };
    let language = match body.get("language") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err("language is required as a string".into()),
    };
    let version = match body.get("version") {
        None | Some(Value::Null) => "*",
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err("version is required as a string".into()),
    };
    let Some(Value::Array(files)) = body.get("files") else {
        return Err("files is required as an array".into());
    };
    let lang = find(app, language, version)
        .ok_or_else(|| format!("{language}-{version} runtime is unknown"))?;
    if files.is_empty() {
        return Err("files must hold at least one file".into());
    }
    if files.len() > bounds.max_files {
        return Err(format!("too many files: at most {}", bounds.max_files));
    }
    let mut decoded = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let Value::Object(f) = f else {
            return Err(format!("files[{i}] must be an object"));
        };
        let content = decode_content(i, f)?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        let path = match (i, name) {
            (0, "") => String::new(),
            (_, "") => format!("file{i}.code"),
            (_, n) => n.to_owned(),
        };
        decoded.push(JobFile {
            path,
            executable: false,
            content,
        });
    }
    let mut stdin = match body.get("stdin") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        _ => return Err("stdin must be a string".into()),
    };
    // As Piston: stdin ends with a newline.
    if !stdin.ends_with('\n') {
        stdin.push('\n');
    }
    let args = match body.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("args[{i}] must be a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("args must be an array".into()),
    };
    let ms = |n: Option<u64>| n.map(Duration::from_millis);
    let output = limit(&body, "output_max_size")?.map(|n| n as usize);
    let compile_limits = RunLimits {
        wall: ms(limit(&body, "compile_timeout")?),
        cpu: ms(limit(&body, "compile_cpu_time")?),
        memory: limit(&body, "compile_memory_limit")?,
        pids: None,
        output,
    };
    let run_limits = RunLimits {
        wall: ms(limit(&body, "run_timeout")?),
        cpu: ms(limit(&body, "run_cpu_time")?),
        memory: limit(&body, "run_memory_limit")?,
        pids: None,
        output,
    };
    let req = RunRequest {
        files: decoded,
        stdin: Bytes::from(stdin.into_bytes()),
        args,
        compile_limits,
        run_limits,
    };
    req.check(bounds).map_err(|e| e.0)?;
    Ok(Decoded { lang, req })
}

/// The run of a decoded request: its stages with each stage's limits, the request's own within the
/// operator's maxima.
pub(super) fn prepare(d: Decoded<'_>) -> Result<(Arc<Language>, RunJob), OverMaximum> {
    let Decoded { lang, req } = d;
    let stages = lang.stages.clone().expect("found languages have stages");
    let base = lang.limits();
    let compile = req.compile_limits.resolve(
        base,
        &lang.maxima,
        [
            "compile_timeout",
            "compile_cpu_time",
            "compile_memory_limit",
        ],
    )?;
    let run = req.run_limits.resolve(
        base,
        &lang.maxima,
        ["run_timeout", "run_cpu_time", "run_memory_limit"],
    )?;
    Ok((
        lang.clone(),
        RunJob {
            req,
            stages,
            compile,
            run,
        },
    ))
}

async fn execute(app: &App, body: &[u8], bounds: &Bounds, started: Instant) -> Resp {
    let id = app.next_request_id.fetch_add(1, Ordering::Relaxed);
    let Decoded { lang, req } = match decode(app, body, bounds) {
        Ok(d) => d,
        Err(why) => {
            tracing::info!(request_id = id, dialect = "piston", error = %why, "execute refused");
            return message(400, &why);
        }
    };
    let (lang, job) = match prepare(Decoded { lang, req }) {
        Ok(p) => p,
        Err(e) => return message(400, &e.0),
    };
    let version = semver(&lang.version);
    let name = lang.name.clone();
    let how = RunRender {
        dialect: "piston",
        render: std::sync::Arc::new(move |r: &Result<RunResult, SandboxError>| {
            render(&name, &version, r)
        }),
        overloaded: Row {
            status: 503,
            body: Bytes::from_static(br#"{"message":"the server is busy; try again later"}"#),
            cacheable: false,
            metric: None,
            retry_after: true,
        },
    };
    let answer = lang.compile.execute(job, how).await;
    tracing::info!(
        request_id = id,
        dialect = "piston",
        language = %lang.name,
        status = answer.status,
        cache = answer.cache.map_or("-", |c| c.as_str()),
        outcome = answer.result.map_or("-", |r| r.as_str()),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "execute"
    );
    answer_response(answer)
}

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

fn render(language: &str, version: &str, r: &Result<RunResult, SandboxError>) -> Row {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_ranges() {
        assert_eq!(semver("python 3.11.2"), "3.11.2");
        assert_eq!(semver("gcc 12.2.0"), "12.2.0");
        assert_eq!(semver("go 1.19.8"), "1.19.8");
        assert!(version_matches("*", "3.11.2"));
        assert!(version_matches("3.x", "3.11.2"));
        assert!(version_matches("3.11.2", "3.11.2"));
        assert!(!version_matches("2", "3.11.2"));
        assert_eq!(route("/api/v2/execute/"), Some("piston_execute"));
        assert_eq!(route("/api/v2/runtimes"), Some("piston_runtimes"));
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(hex_decode("6869").unwrap(), b"hi");
    }
}
