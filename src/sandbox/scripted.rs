//! An in-memory backend for tests: the program is a script of what the "run" does, one step a
//! line, so that everything above the sandbox (cache, single flight, admission, answers, drain,
//! HTTP, live output) can be exercised without Docker or bwrap, as a normal user, in
//! milliseconds. Output goes through the same collector as the real backends' (cap, stamps, live
//! forwarding) and the same deadline applies. Never a proof that a real backend works.
//!
//! Steps: `out TEXT` / `err TEXT` (TEXT and a newline to stdout / stderr), `sleep MS`, `exit N`
//! (ends the run), `oom` (ends as a memory kill), `hang` (waits for the deadline), `fail`
//! (the sandbox fails). A script that ends without `exit` exits 0; an unknown line is written to
//! stderr and the run exits 2, as a shell would.
//!
//! A job (`run_job`) runs its first file as the script, where `stdin` writes the job's stdin to
//! stdout and `args` its command line; its kept files are the job's files of those names, and its
//! measurements are the wall time alone (CPU 0, peak memory 0).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::job::{Job, Measures, StageOutcome};
use super::output::OutputCollector;
use super::supervise::Report;
use super::{Limits, LiveOutput, RunOutcome, Sandbox, SandboxError, SandboxErrorKind, StreamKind};

pub struct ScriptedSandbox {
    limits: Limits,
    runs: AtomicUsize,
}

impl ScriptedSandbox {
    pub fn new(limits: Limits) -> ScriptedSandbox {
        ScriptedSandbox {
            limits,
            runs: AtomicUsize::new(0),
        }
    }

    /// Runs started so far, for tests that prove a run did or did not happen.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

enum Step<'a> {
    Write(StreamKind, &'a str),
    Sleep(Duration),
    Exit(i64),
    Oom,
    Hang,
    Fail,
    Stdin,
    Args,
    Unknown(&'a str),
}

fn parse(line: &str) -> Step<'_> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "out" => Step::Write(StreamKind::Stdout, rest),
        "err" => Step::Write(StreamKind::Stderr, rest),
        "sleep" => rest.trim().parse().map_or(Step::Unknown(line), |ms| {
            Step::Sleep(Duration::from_millis(ms))
        }),
        "exit" => rest.trim().parse().map_or(Step::Unknown(line), Step::Exit),
        "oom" => Step::Oom,
        "hang" => Step::Hang,
        "fail" => Step::Fail,
        "stdin" => Step::Stdin,
        "args" => Step::Args,
        _ => Step::Unknown(line),
    }
}

#[async_trait]
impl Sandbox for ScriptedSandbox {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn fingerprint(&self) -> String {
        self.limits.fingerprint()
    }

    async fn run(
        &self,
        program: Bytes,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        self.script(&program, &self.limits, None, live).await
    }

    async fn run_job(
        &self,
        job: Job,
        live: Option<LiveOutput>,
        _input: Option<super::job::LiveInput>,
    ) -> Result<StageOutcome, SandboxError> {
        let started = std::time::Instant::now();
        let script = job
            .files
            .first()
            .map(|f| f.content.clone())
            .unwrap_or_default();
        let outcome = self.script(&script, &job.limits, Some(&job), live).await?;
        let status = match &outcome {
            RunOutcome::Exited { status, .. } => *status,
            _ => 137,
        };
        let mut report = Report {
            measures: Some(Measures {
                status,
                signal: (status > 128).then(|| (status - 128) as i32),
                limit: u32::from(matches!(outcome, RunOutcome::TimedOut { .. })) * 2,
                cpu: Duration::ZERO,
                wall: started.elapsed(),
                peak_memory: Some(0),
            }),
            kept: Vec::new(),
        };
        if status == 0 {
            report.kept = job
                .files
                .iter()
                .filter(|f| {
                    job.keep.contains(&f.path)
                        || (job.keep.iter().any(|k| k == crate::run::KEEP_ALL)
                            && !f.path.contains('/')
                            && !f.path.starts_with('.'))
                })
                .cloned()
                .collect();
        }
        Ok(StageOutcome::new(outcome, report, started.elapsed()))
    }
}

impl ScriptedSandbox {
    async fn script(
        &self,
        program: &[u8],
        limits: &Limits,
        job: Option<&Job>,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limits.timeout;
        let mut output = OutputCollector::new(limits.max_output_bytes, live);
        let text = String::from_utf8_lossy(program);
        let mut status = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let wrote = match parse(line) {
                Step::Write(kind, s) => output.push(kind, format!("{s}\n").as_bytes()),
                Step::Stdin => output.push(StreamKind::Stdout, job.map_or(&[][..], |j| &j.stdin)),
                Step::Args => {
                    let args = job.map_or(String::new(), |j| j.argv.join(" ") + "\n");
                    output.push(StreamKind::Stdout, args.as_bytes())
                }
                Step::Sleep(d) => {
                    if tokio::time::Instant::now() + d > deadline {
                        tokio::time::sleep_until(deadline).await;
                        let output = output.into_chunks();
                        return Ok(RunOutcome::TimedOut { output });
                    }
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Step::Exit(n) => {
                    status = n;
                    break;
                }
                Step::Oom => {
                    let output = output.into_chunks();
                    return Ok(RunOutcome::OutOfMemory { output });
                }
                Step::Hang => {
                    tokio::time::sleep_until(deadline).await;
                    let output = output.into_chunks();
                    return Ok(RunOutcome::TimedOut { output });
                }
                Step::Fail => {
                    return Err(SandboxError::new(
                        SandboxErrorKind::Start,
                        "the scripted sandbox was told to fail",
                    ));
                }
                Step::Unknown(l) => {
                    let msg = format!("script: unknown step: {l}\n");
                    status = 2;
                    let r = output.push(StreamKind::Stderr, msg.as_bytes());
                    if r.is_ok() {
                        break;
                    }
                    r
                }
            };
            if wrote.is_err() {
                let output = output.into_chunks();
                return Ok(RunOutcome::OutputTooLarge { output });
            }
        }
        Ok(RunOutcome::Exited {
            status,
            output: output.into_chunks(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            timeout: Duration::from_millis(200),
            max_output_bytes: 32,
            ..Limits::default()
        }
    }

    async fn run(script: &str) -> RunOutcome {
        let sb = ScriptedSandbox::new(limits());
        sb.run(Bytes::from(script.to_owned()), None).await.unwrap()
    }

    #[tokio::test]
    async fn steps_do_what_they_say() {
        match run("out a\nerr b\nexit 3").await {
            RunOutcome::Exited { status, output } => {
                assert_eq!(status, 3);
                assert_eq!(output.len(), 2);
                assert_eq!(output[1].kind, StreamKind::Stderr);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(run("out x\nhang").await, RunOutcome::TimedOut { output } if output.len() == 1)
        );
        assert!(matches!(
            run("sleep 5000").await,
            RunOutcome::TimedOut { .. }
        ));
        assert!(matches!(run("oom").await, RunOutcome::OutOfMemory { .. }));
        assert!(matches!(
            run("out 0123456789\nout 0123456789\nout 0123456789").await,
            RunOutcome::OutputTooLarge { output } if output.iter().map(|c| c.data.len()).sum::<usize>() == 32
        ));
        assert!(matches!(
            run("bogus").await,
            RunOutcome::Exited { status: 2, .. }
        ));
        let sb = ScriptedSandbox::new(limits());
        assert!(sb.run(Bytes::from_static(b"fail"), None).await.is_err());
        assert_eq!(sb.runs(), 1);
    }
}
