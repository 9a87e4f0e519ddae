//! Judging a submission: its record becomes a run request that takes the same way as every other
//! run (`CompileService::execute`: cache → admission → sandbox, with the run metrics), under the
//! dialect `judge0`. What is cached is the run's facts, which do not depend on the token nor on
//! the expected output; the verdict (Accepted or Wrong Answer) is decided afterwards, so that one
//! cached run serves every test case with the same input.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::b64;
use super::langs::{MULTI_FILE, Table, multi_file_stages};
use super::record::{Record, now_ms};
use super::status::Status;
use super::submission::strip_shell;
use crate::answer::Row;
use crate::compile::RunRender;
use crate::hooks::RunResult as Metric;
use crate::run::{RunJob, RunLimits, RunRequest, RunResult, Stages};
use crate::sandbox::job::{JobFile, LimitHit, StageOutcome};
use crate::sandbox::{RunOutcome, SandboxError, StreamKind};

/// What a run yields, before the verdict: the cached part of a judged submission.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Facts {
    status_id: u8,
    #[serde(with = "b64::opt")]
    stdout: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    stderr: Option<Vec<u8>>,
    /// Both streams in written order, for `redirect_stderr_to_stdout`.
    #[serde(with = "b64::opt")]
    output: Option<Vec<u8>>,
    #[serde(with = "b64::opt")]
    compile_output: Option<Vec<u8>>,
    message: Option<String>,
    exit_code: Option<i64>,
    exit_signal: Option<i32>,
    time: Option<f64>,
    wall_time: Option<f64>,
    memory: Option<u64>,
}

fn non_empty(v: Vec<u8>) -> Option<Vec<u8>> {
    (!v.is_empty()).then_some(v)
}

fn streams(s: &StageOutcome) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (mut out, mut err, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for c in s.output() {
        match c.kind {
            StreamKind::Stdout => out.extend_from_slice(&c.data),
            StreamKind::Stderr => err.extend_from_slice(&c.data),
        }
        all.extend_from_slice(&c.data);
    }
    (out, err, all)
}

fn facts(r: &Result<RunResult, SandboxError>) -> (Facts, Metric, bool) {
    let ran = match r {
        Ok(ran) => ran,
        Err(e) => {
            let f = Facts {
                status_id: Status::INTERNAL_ERROR.id(),
                message: Some(format!("sandbox failed: {}", e.kind.public_text())),
                ..Default::default()
            };
            return (f, Metric::SandboxError, false);
        }
    };
    if let (Some(c), None) = (&ran.compile, &ran.run) {
        let (_, _, all) = streams(c);
        let timed_out = matches!(c.limit_hit(), Some(LimitHit::Time | LimitHit::Cpu));
        let output = if timed_out {
            b"Compilation time limit exceeded.".to_vec()
        } else {
            all
        };
        let f = Facts {
            status_id: Status::COMPILATION_ERROR.id(),
            compile_output: non_empty(output),
            exit_code: c.exit_code(),
            ..Default::default()
        };
        return (f, Metric::ExitNonzero, !timed_out);
    }
    let Some(run) = &ran.run else {
        let f = Facts {
            status_id: Status::INTERNAL_ERROR.id(),
            message: Some("the run stage did not run".into()),
            ..Default::default()
        };
        return (f, Metric::SandboxError, false);
    };
    let compile_output = ran.compile.as_ref().and_then(|c| non_empty(streams(c).2));
    let (out, err, all) = streams(run);
    let hit = run.limit_hit();
    let (status, message, signal) = match hit {
        Some(LimitHit::Time) => (
            Status::TIME_LIMIT,
            Some("Time limit exceeded".to_owned()),
            Some(libc::SIGKILL),
        ),
        Some(LimitHit::Cpu) => (
            Status::TIME_LIMIT,
            Some("CPU time limit exceeded".to_owned()),
            Some(libc::SIGKILL),
        ),
        Some(LimitHit::Memory) => (
            Status::of_signal(libc::SIGKILL),
            Some("Memory limit exceeded".to_owned()),
            Some(libc::SIGKILL),
        ),
        Some(LimitHit::Output) => (
            Status::of_signal(libc::SIGXFSZ),
            Some("Output limit exceeded".to_owned()),
            Some(libc::SIGXFSZ),
        ),
        None => match (run.exit_code(), run.signal()) {
            (_, Some(sig)) => (
                Status::of_signal(sig),
                Some(format!("Caught fatal signal {sig}")),
                Some(sig),
            ),
            (Some(0), None) => (Status::ACCEPTED, None, None),
            (Some(code), None) => (
                Status::NZEC,
                Some(format!("Exited with error status {code}")),
                None,
            ),
            (None, None) => (
                Status::INTERNAL_ERROR,
                Some("the run ended without a status".to_owned()),
                None,
            ),
        },
    };
    let m = run.measures;
    let secs = |d: Duration| (d.as_micros() as f64 / 1e6 * 1000.0).round() / 1000.0;
    let f = Facts {
        status_id: status.id(),
        stdout: non_empty(out),
        stderr: non_empty(err),
        output: non_empty(all),
        compile_output,
        message,
        // As Judge0: 0 when the program did not exit by itself.
        exit_code: Some(if signal.is_some() {
            0
        } else {
            run.exit_code().unwrap_or(0)
        }),
        exit_signal: signal,
        time: Some(m.map_or(0.0, |m| secs(m.cpu))),
        wall_time: Some(secs(m.map_or(run.elapsed, |m| m.wall))),
        memory: m.and_then(|m| m.peak_memory).map(|b| b / 1024),
    };
    let metric = match &run.outcome {
        RunOutcome::Exited { status: 0, .. } if signal.is_none() => Metric::Ok,
        RunOutcome::Exited { .. } => Metric::ExitNonzero,
        RunOutcome::OutputTooLarge { .. } => Metric::OutputTooLarge,
        RunOutcome::TimedOut { .. } => Metric::Timeout,
        RunOutcome::OutOfMemory { .. } => Metric::Oom,
    };
    // A run stopped by a time or memory limit may end otherwise next time: never cached.
    let deterministic = !matches!(hit, Some(LimitHit::Time | LimitHit::Cpu | LimitHit::Memory));
    let metric = if !deterministic && metric == Metric::ExitNonzero {
        Metric::Timeout
    } else {
        metric
    };
    (f, metric, deterministic)
}

fn render(r: &Result<RunResult, SandboxError>) -> Row {
    let (f, metric, cacheable) = facts(r);
    Row {
        status: 200,
        body: Bytes::from(serde_json::to_vec(&f).expect("facts serialize")),
        cacheable: cacheable && r.is_ok(),
        metric: Some(metric),
        retry_after: false,
    }
}

/// What a compile yields: the cached part of compiling a program once for all its test cases.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Compiled {
    ok: bool,
    timed_out: bool,
    #[serde(with = "b64::opt")]
    output: Option<Vec<u8>>,
    exit_code: Option<i64>,
    /// The compile stage's kept files (the binary).
    files: Vec<Kept>,
    /// A sandbox failure.
    internal: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    path: String,
    executable: bool,
    #[serde(with = "b64::opt")]
    content: Option<Vec<u8>>,
}

fn render_compile(r: &Result<RunResult, SandboxError>) -> Row {
    let (c, metric, cacheable) = match r.as_ref().map(|ran| ran.compile.as_ref()) {
        Err(e) => (
            Compiled {
                internal: Some(format!("sandbox failed: {}", e.kind.public_text())),
                ..Default::default()
            },
            Metric::SandboxError,
            false,
        ),
        Ok(None) => (
            Compiled {
                internal: Some("the compile stage did not run".into()),
                ..Default::default()
            },
            Metric::SandboxError,
            false,
        ),
        Ok(Some(stage)) => {
            let timed_out = matches!(stage.limit_hit(), Some(LimitHit::Time | LimitHit::Cpu));
            let c = Compiled {
                ok: stage.succeeded(),
                timed_out,
                output: non_empty(streams(stage).2),
                exit_code: stage.exit_code(),
                files: stage
                    .files
                    .iter()
                    .map(|f| Kept {
                        path: f.path.clone(),
                        executable: f.executable,
                        content: Some(f.content.to_vec()),
                    })
                    .collect(),
                internal: None,
            };
            let metric = if c.ok {
                Metric::Ok
            } else if timed_out {
                Metric::Timeout
            } else {
                Metric::ExitNonzero
            };
            // A compile stopped by a limit may end otherwise next time: never cached.
            (c, metric, stage.limit_hit().is_none())
        }
    };
    Row {
        status: 200,
        body: Bytes::from(serde_json::to_vec(&c).expect("serializes")),
        cacheable,
        metric: Some(metric),
        retry_after: false,
    }
}

/// Judge0 compares outputs with the trailing whitespace of each line and of the end removed.
pub fn same_output(expected: &[u8], actual: &[u8]) -> bool {
    fn strip(b: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(b);
        let lines: Vec<&str> = text.split('\n').map(str::trim_end).collect();
        lines.join("\n").trim_end().as_bytes().to_vec()
    }
    strip(expected) == strip(actual)
}

/// The end of a judging.
pub enum Judged {
    Done(Box<Record>),
    /// No run slot: try again later.
    Busy,
}

/// Runs `rec` and returns it judged.
pub async fn judge(table: &Table, rec: &Record) -> Judged {
    let mut done = rec.clone();
    done.finished_at = None;
    let Some(entry) = table.get(rec.language_id) else {
        done.status_id = Status::INTERNAL_ERROR.id();
        done.message = Some(format!("language {} is gone", rec.language_id));
        done.finished_at = Some(now_ms());
        return Judged::Done(Box::new(done));
    };
    let lang = &entry.lang;
    let multi = entry.id == MULTI_FILE;
    // A multi-file program is its zip alone: no source file.
    let mut files = Vec::new();
    if !multi {
        files.push(JobFile {
            path: String::new(),
            executable: false,
            content: Bytes::from(rec.source_code.clone().unwrap_or_default()),
        });
    }
    if let Some(zip) = &rec.additional_files {
        // Checked when it was submitted; the same bytes read the same way.
        match super::zip::extract(zip, &crate::run::Bounds::default()) {
            Ok(extra) => files.extend(extra),
            Err(why) => {
                done.status_id = Status::INTERNAL_ERROR.id();
                done.message = Some(format!("additional_files {why}"));
                done.finished_at = Some(now_ms());
                return Judged::Done(Box::new(done));
            }
        }
    }
    let mut stages = if multi {
        multi_file_stages(files.iter().any(|f| f.path == "compile"))
    } else {
        lang.stages.clone().expect("listed languages have stages")
    };
    if let (Some(opts), Some(compile)) = (&rec.compiler_options, stages.compile.as_mut()) {
        compile.extend(strip_shell(opts).split_whitespace().map(str::to_owned));
    }
    let req = RunRequest {
        files,
        stdin: Bytes::from(rec.stdin.clone().unwrap_or_default()),
        args: rec
            .command_line_arguments
            .as_deref()
            .map(|a| {
                strip_shell(a)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        compile_limits: RunLimits::default(),
        run_limits: RunLimits {
            wall: Some(Duration::from_secs_f64(rec.wall_time_limit)),
            cpu: (rec.cpu_time_limit > 0.0).then(|| {
                Duration::from_secs_f64(rec.cpu_time_limit + rec.cpu_extra_time)
                    .min(lang.maxima.cpu)
            }),
            memory: Some(rec.memory_limit * 1024),
            pids: Some(rec.max_processes_and_or_threads),
            output: None,
        },
    };
    let names = ["wall_time_limit", "cpu_time_limit", "memory_limit"];
    let limits = match (
        req.compile_limits
            .resolve(lang.limits(), &lang.maxima, names),
        req.run_limits.resolve(lang.limits(), &lang.maxima, names),
    ) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => {
            // The checks at submission keep to the maxima; the operator may have lowered them
            // since.
            done.status_id = Status::INTERNAL_ERROR.id();
            done.message = Some(e.0);
            done.finished_at = Some(now_ms());
            return Judged::Done(Box::new(done));
        }
    };
    let busy = Row {
        status: 503,
        body: Bytes::new(),
        cacheable: false,
        metric: None,
        retry_after: true,
    };
    // Compile once: a compile-only job (no run command) whose answer is the binary, cached and
    // shared in flight like any run, so that every test case of a program (same source, options
    // and files) takes the same compile, and a compile error is answered without compiling again.
    let mut req = req;
    let mut compile_output = None;
    if stages.compile.is_some() {
        let job = RunJob {
            req: RunRequest {
                files: req.files.clone(),
                ..RunRequest::default()
            },
            stages: Stages {
                run: Vec::new(),
                ..stages.clone()
            },
            compile: limits.0.clone(),
            run: limits.0.clone(),
        };
        let how = RunRender {
            dialect: "judge0-compile",
            round: 0,
            render: std::sync::Arc::new(render_compile),
            overloaded: busy.clone(),
        };
        let answer = lang.compile.execute(job, how).await;
        if answer.status == 503 {
            return Judged::Busy;
        }
        let c: Compiled = serde_json::from_slice(&answer.body).unwrap_or_else(|e| Compiled {
            internal: Some(format!("unreadable compile: {e}")),
            ..Default::default()
        });
        if let Some(why) = c.internal {
            done.status_id = Status::INTERNAL_ERROR.id();
            done.message = Some(why);
            done.finished_at = Some(now_ms());
            return Judged::Done(Box::new(done));
        }
        if !c.ok {
            done.status_id = Status::COMPILATION_ERROR.id();
            done.compile_output = if c.timed_out {
                Some(b"Compilation time limit exceeded.".to_vec())
            } else {
                c.output
            };
            done.exit_code = c.exit_code;
            done.finished_at = Some(now_ms());
            return Judged::Done(Box::new(done));
        }
        let mut files = req.files_named(&stages.main_file);
        for kept in c.files {
            files.retain(|f| f.path != kept.path);
            files.push(JobFile {
                path: kept.path,
                executable: kept.executable,
                content: Bytes::from(kept.content.unwrap_or_default()),
            });
        }
        req.files = files;
        compile_output = c.output;
        stages.compile = None;
        stages.keep = Vec::new();
    }
    let job = RunJob {
        req,
        stages,
        compile: limits.0,
        run: limits.1,
    };
    // number_of_runs: each round in a fresh sandbox, until one is not accepted; the answer is the
    // last round's, with time and memory averaged over the rounds, as Judge0 reports them.
    let mut rounds = Vec::new();
    for round in 0..rec.number_of_runs.max(1) {
        let how = RunRender {
            dialect: "judge0",
            render: std::sync::Arc::new(render),
            overloaded: busy.clone(),
            round,
        };
        let answer = lang.compile.execute(job.clone(), how).await;
        if answer.status == 503 {
            return Judged::Busy;
        }
        let f: Facts = match serde_json::from_slice(&answer.body) {
            Ok(f) => f,
            Err(e) => Facts {
                status_id: Status::INTERNAL_ERROR.id(),
                message: Some(format!("unreadable run facts: {e}")),
                ..Default::default()
            },
        };
        let accepted = f.status_id == Status::ACCEPTED.id();
        rounds.push(f);
        if !accepted {
            break;
        }
    }
    let f = averaged(rounds);
    let mut status = f.status_id;
    let stdout = if rec.redirect_stderr_to_stdout {
        f.output
    } else {
        f.stdout
    };
    if status == Status::ACCEPTED.id()
        && let Some(expected) = &rec.expected_output
        && !same_output(expected, stdout.as_deref().unwrap_or_default())
    {
        status = Status::WRONG_ANSWER.id();
    }
    done.status_id = status;
    done.stdout = stdout;
    done.stderr = if rec.redirect_stderr_to_stdout {
        None
    } else {
        f.stderr
    };
    done.compile_output = f.compile_output.or(compile_output);
    done.message = f.message;
    done.exit_code = f.exit_code;
    done.exit_signal = f.exit_signal;
    done.time = f.time;
    done.wall_time = f.wall_time;
    done.memory = f.memory;
    done.finished_at = Some(now_ms());
    Judged::Done(Box::new(done))
}

/// The last round's facts, with each measurement the mean of the rounds that have it.
fn averaged(mut rounds: Vec<Facts>) -> Facts {
    fn mean<T: Copy>(v: impl Iterator<Item = Option<T>>, to: fn(T) -> f64) -> Option<f64> {
        let got: Vec<f64> = v.flatten().map(to).collect();
        (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64)
    }
    let time = mean(rounds.iter().map(|f| f.time), |t| t);
    let wall_time = mean(rounds.iter().map(|f| f.wall_time), |t| t);
    let memory = mean(rounds.iter().map(|f| f.memory), |m| m as f64);
    let mut last = rounds.pop().expect("at least one round");
    if !rounds.is_empty() {
        last.time = time.map(|t| (t * 1000.0).round() / 1000.0);
        last.wall_time = wall_time.map(|t| (t * 1000.0).round() / 1000.0);
        last.memory = memory.map(|m| m.round() as u64);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_average_their_measurements() {
        let round = |time, memory| Facts {
            status_id: 3,
            time: Some(time),
            wall_time: Some(time * 2.0),
            memory: Some(memory),
            stdout: Some(format!("{time}").into_bytes()),
            ..Default::default()
        };
        let f = averaged(vec![
            round(0.01, 1000),
            round(0.02, 2000),
            round(0.03, 4000),
        ]);
        assert_eq!(f.time, Some(0.02));
        assert_eq!(f.wall_time, Some(0.04));
        assert_eq!(f.memory, Some(2333));
        assert_eq!(f.stdout.as_deref(), Some(&b"0.03"[..]));
        let one = averaged(vec![round(0.0123, 7)]);
        assert_eq!((one.time, one.memory), (Some(0.0123), Some(7)));
    }

    #[test]
    fn outputs_compare_as_judge0_compares() {
        assert!(same_output(b"1\n2\n", b"1  \n2"));
        assert!(same_output(b"a\n\n\n", b"a"));
        assert!(!same_output(b" a", b"a"));
        assert!(!same_output(b"1\n2", b"1\n3"));
        assert!(same_output(b"", b"\n"));
    }
}
