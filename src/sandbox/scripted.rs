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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::output::OutputCollector;
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
        self.runs.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let mut output = OutputCollector::new(self.limits.max_output_bytes, live);
        let text = String::from_utf8_lossy(&program);
        let mut status = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let wrote = match parse(line) {
                Step::Write(kind, s) => output.push(kind, format!("{s}\n").as_bytes()),
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
