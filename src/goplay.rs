//! Answers for a Go language whose image runs programs as the Go playground does
//! (`faketime::GO_PLAYGROUND`): the runner's record says how the build went, the output is in fake
//! time. The playground dialect then answers as the Go playground's server does, field for field
//! and in its order (`Errors`, `Events`, `Status`, `IsTest`, `TestsFailed`); the raw dialect keeps
//! the seed server's answers (a build failure is its messages on stderr, status 2).
//!
//! The decoded output's first chunk is always the record (`faketime`), empty when the run ended
//! before the runner wrote it, that is during the build.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::answer::{self, Dialect, Outcome, Row};
use crate::compile::Render;
use crate::faketime::GO_PLAYGROUND;
use crate::hooks::RunResult;
use crate::sandbox::{Chunk, Limits, RunOutcome, Sandbox, StreamKind};

/// The Go playground's `Errors` for a build stopped by the deadline.
pub const BUILD_TIMEOUT: &str = "timeout running go build";
/// What the Go playground's sandbox writes on stderr after it killed a program at its deadline.
pub const RUN_TIMEOUT: &str = "timeout running program\n";

/// What the runner says of the build (images/go/runner/main.go writes it).
#[derive(Deserialize, Debug, Default, PartialEq)]
pub struct Record {
    /// Not empty: the build failed with these messages, and nothing ran.
    #[serde(rename = "Errors", default)]
    pub errors: String,
    #[serde(rename = "IsTest", default)]
    pub is_test: bool,
    /// Vet ran (the request asked for it); what it found, empty when nothing.
    #[serde(rename = "Vetted", default)]
    pub vetted: bool,
    #[serde(rename = "VetErrors", default)]
    pub vet_errors: String,
}

/// Leads the program when the request asks for vet; the runner takes it off. Being part of the
/// program, it is part of the cache key. A NUL byte cannot be in Go source, so no program starts
/// so by itself.
pub const VET_MARKER: &[u8] = b"\0vet\n";

/// The program as the language's sandbox gets it: with the vet marker when vet is asked for
/// and the language is a Go playground image; other languages ignore the flag.
pub fn with_vet(run: &Arc<dyn Sandbox>, program: Bytes, vet: bool) -> Bytes {
    if !vet || run.output_framing() != Some(GO_PLAYGROUND) {
        return program;
    }
    let mut marked = Vec::with_capacity(VET_MARKER.len() + program.len());
    marked.extend_from_slice(VET_MARKER);
    marked.extend_from_slice(&program);
    Bytes::from(marked)
}

impl Record {
    pub fn parse(data: &[u8]) -> Option<Record> {
        serde_json::from_slice(data).ok()
    }
}

/// The answer table of a language's runs: this one for a Go playground image, else the common one.
pub fn render_for(run: &dyn Sandbox) -> Render {
    match run.output_framing() {
        Some(GO_PLAYGROUND) => render,
        _ => answer::answer,
    }
}

/// The Go playground's answer body.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "Errors")]
    errors: &'a str,
    #[serde(rename = "Events")]
    events: Option<Vec<Event>>,
    #[serde(rename = "Status")]
    status: i64,
    #[serde(rename = "IsTest")]
    is_test: bool,
    #[serde(rename = "TestsFailed")]
    tests_failed: usize,
    #[serde(rename = "VetErrors", skip_serializing_if = "str::is_empty")]
    vet_errors: &'a str,
    #[serde(rename = "VetOK", skip_serializing_if = "std::ops::Not::not")]
    vet_ok: bool,
}

#[derive(Serialize)]
struct Event {
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Kind")]
    kind: &'static str,
    #[serde(rename = "Delay")]
    delay: u64,
}

pub fn render(outcome: &Outcome<'_>, dialect: Dialect, limits: &Limits) -> Row {
    let Outcome::Ran(ran) = outcome else {
        return answer::answer(outcome, dialect, limits);
    };
    let (record, output) = split(ran);
    match dialect {
        Dialect::Raw => raw(ran, record, output, limits),
        Dialect::Playground => playground(ran, record, output, limits),
    }
}

/// The record and the program's output.
fn split(ran: &RunOutcome) -> (Option<Record>, &[Chunk]) {
    let output = match ran {
        RunOutcome::Exited { output, .. }
        | RunOutcome::OutputTooLarge { output }
        | RunOutcome::TimedOut { output }
        | RunOutcome::OutOfMemory { output } => output.as_slice(),
    };
    match output.split_first() {
        Some((first, rest)) => (Record::parse(&first.data), rest),
        None => (None, output),
    }
}

fn with_output(ran: &RunOutcome, output: Vec<Chunk>) -> RunOutcome {
    match ran {
        RunOutcome::Exited { status, .. } => RunOutcome::Exited {
            status: *status,
            output,
        },
        RunOutcome::OutputTooLarge { .. } => RunOutcome::OutputTooLarge { output },
        RunOutcome::TimedOut { .. } => RunOutcome::TimedOut { output },
        RunOutcome::OutOfMemory { .. } => RunOutcome::OutOfMemory { output },
    }
}

/// The seed server's answers: a failed build is its messages on stderr.
fn raw(ran: &RunOutcome, record: Option<Record>, output: &[Chunk], limits: &Limits) -> Row {
    let output = match record {
        Some(r) if !r.errors.is_empty() => vec![Chunk {
            kind: StreamKind::Stderr,
            data: r.errors.into_bytes(),
            at: std::time::Duration::ZERO,
        }],
        _ => output.to_vec(),
    };
    answer::answer(
        &Outcome::Ran(&with_output(ran, output)),
        Dialect::Raw,
        limits,
    )
}

fn playground(ran: &RunOutcome, record: Option<Record>, output: &[Chunk], limits: &Limits) -> Row {
    let row = |body: &Body<'_>, cacheable, metric| Row {
        status: 200,
        body: Bytes::from(serde_json::to_vec(body).expect("answer serializes")),
        cacheable,
        metric: Some(metric),
        retry_after: false,
    };
    let metric_of = |status: i64| match status {
        0 => RunResult::Ok,
        _ => RunResult::ExitNonzero,
    };
    let build_failed = |errors: &str, cacheable, metric| {
        let body = Body {
            errors,
            events: None,
            status: 0,
            is_test: false,
            tests_failed: 0,
            vet_errors: "",
            vet_ok: false,
        };
        row(&body, cacheable, metric)
    };
    match (ran, record) {
        (RunOutcome::TimedOut { .. }, None) => {
            build_failed(BUILD_TIMEOUT, false, RunResult::Timeout)
        }
        (RunOutcome::Exited { status, .. }, Some(r)) if !r.errors.is_empty() => {
            build_failed(&r.errors, true, metric_of(*status))
        }
        (RunOutcome::Exited { status, .. }, record) => {
            let record = record.unwrap_or_default();
            row(
                &run_body(output, *status, &record),
                true,
                metric_of(*status),
            )
        }
        (RunOutcome::TimedOut { .. }, Some(r)) => {
            // Killed at the deadline: the Go playground's sandbox then writes its notice,
            // unframed, so it lands at the last stderr write's time (and joins it).
            let mut output = output.to_vec();
            match output
                .iter_mut()
                .rev()
                .find(|c| c.kind == StreamKind::Stderr)
            {
                Some(last) => last.data.extend_from_slice(RUN_TIMEOUT.as_bytes()),
                None => output.insert(
                    0,
                    Chunk {
                        kind: StreamKind::Stderr,
                        data: RUN_TIMEOUT.as_bytes().to_vec(),
                        at: std::time::Duration::ZERO,
                    },
                ),
            }
            row(&run_body(&output, 1, &r), false, RunResult::Timeout)
        }
        // Stopped at the output cap or the memory limit after the build: the daemon's notice, as
        // for every language, in an answer that keeps the Go playground's fields.
        (RunOutcome::OutputTooLarge { .. } | RunOutcome::OutOfMemory { .. }, Some(record)) => {
            let program = with_output(ran, output.to_vec());
            let mut body = run_body(output, 0, &record);
            body.events.get_or_insert_with(Vec::new).extend(
                answer::limit_notice(&program, limits).map(|n| Event {
                    message: n.into_owned(),
                    kind: answer::SYSTEM_KIND,
                    delay: 0,
                }),
            );
            match ran {
                RunOutcome::OutOfMemory { .. } => row(&body, false, RunResult::Oom),
                _ => row(&body, true, RunResult::OutputTooLarge),
            }
        }
        // Stopped during the build: the daemon's notice in the common answer.
        (ran, _) => answer::answer(
            &Outcome::Ran(&with_output(ran, output.to_vec())),
            Dialect::Playground,
            limits,
        ),
    }
}

fn run_body<'a>(output: &[Chunk], status: i64, record: &'a Record) -> Body<'a> {
    let events: Vec<Event> = output
        .iter()
        .zip(answer::delays(output))
        .map(|(c, delay)| Event {
            message: String::from_utf8_lossy(&c.data).into_owned(),
            kind: c.kind.as_str(),
            delay,
        })
        .collect();
    let tests_failed = events
        .iter()
        .map(|e| e.message.matches("--- FAIL").count())
        .sum();
    Body {
        errors: "",
        events: (!events.is_empty()).then_some(events),
        status,
        is_test: record.is_test,
        tests_failed,
        vet_errors: &record.vet_errors,
        vet_ok: record.vetted && record.vet_errors.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn chunk(kind: StreamKind, data: &str, ms: u64) -> Chunk {
        Chunk {
            kind,
            data: data.as_bytes().to_vec(),
            at: Duration::from_millis(ms),
        }
    }

    fn record(json: &str) -> Chunk {
        chunk(StreamKind::Stdout, json, 0)
    }

    fn text(row: &Row) -> &str {
        std::str::from_utf8(&row.body).unwrap()
    }

    fn both(out: &RunOutcome) -> (Row, Row) {
        let l = Limits::default();
        (
            render(&Outcome::Ran(out), Dialect::Raw, &l),
            render(&Outcome::Ran(out), Dialect::Playground, &l),
        )
    }

    #[test]
    fn a_build_failure_is_errors_only() {
        let out = RunOutcome::Exited {
            status: 2,
            output: vec![record(
                r#"{"Errors":"./prog.go:4:2: x declared but not used\n","IsTest":false}"#,
            )],
        };
        let (raw, pg) = both(&out);
        assert_eq!(
            text(&pg),
            r#"{"Errors":"./prog.go:4:2: x declared but not used\n","Events":null,"Status":0,"IsTest":false,"TestsFailed":0}"#
        );
        assert!(pg.cacheable);
        assert_eq!(
            text(&raw),
            r#"{"Errors":"","Events":[{"Message":"./prog.go:4:2: x declared but not used\n","Kind":"stderr","Delay":0}],"Status":2}"#
        );
    }

    #[test]
    fn a_memory_kill_after_the_build_keeps_the_fields() {
        let out = RunOutcome::OutOfMemory {
            output: vec![
                record(r#"{"Errors":"","IsTest":true}"#),
                chunk(
                    StreamKind::Stdout,
                    "=== RUN   TestHog\n--- FAIL: TestX (0.00s)\nhalf",
                    1,
                ),
            ],
        };
        let (_, pg) = both(&out);
        assert_eq!(
            text(&pg),
            r#"{"Errors":"","Events":[{"Message":"=== RUN   TestHog\n--- FAIL: TestX (0.00s)\nhalf","Kind":"stdout","Delay":1000000},{"Message":"\nOut of memory: the program used more than its 128 MiB and was killed.","Kind":"system","Delay":0}],"Status":0,"IsTest":true,"TestsFailed":1}"#
        );
        assert!(!pg.cacheable, "a memory kill is not cached");
        assert_eq!(pg.metric, Some(RunResult::Oom));
    }

    #[test]
    fn tests_are_counted() {
        let out = RunOutcome::Exited {
            status: 1,
            output: vec![
                record(r#"{"Errors":"","IsTest":true}"#),
                chunk(
                    StreamKind::Stdout,
                    "=== RUN   TestA\n--- FAIL: TestA (0.00s)\n=== RUN   TestB\n--- FAIL: TestB (0.00s)\nFAIL\n",
                    0,
                ),
            ],
        };
        let (_, pg) = both(&out);
        assert!(
            text(&pg).ends_with(r#""Status":1,"IsTest":true,"TestsFailed":2}"#),
            "{}",
            text(&pg)
        );
        let silent = RunOutcome::Exited {
            status: 0,
            output: vec![record(r#"{"Errors":"","IsTest":false}"#)],
        };
        assert_eq!(
            text(&both(&silent).1),
            r#"{"Errors":"","Events":null,"Status":0,"IsTest":false,"TestsFailed":0}"#
        );
    }

    #[test]
    fn vet_findings() {
        let found = RunOutcome::Exited {
            status: 0,
            output: vec![record(
                r#"{"Errors":"","IsTest":false,"Vetted":true,"VetErrors":"./prog.go:5:2: x\n"}"#,
            )],
        };
        assert_eq!(
            text(&both(&found).1),
            r#"{"Errors":"","Events":null,"Status":0,"IsTest":false,"TestsFailed":0,"VetErrors":"./prog.go:5:2: x\n"}"#
        );
        let clean = RunOutcome::Exited {
            status: 0,
            output: vec![record(
                r#"{"Errors":"","IsTest":false,"Vetted":true,"VetErrors":""}"#,
            )],
        };
        assert!(text(&both(&clean).1).ends_with(r#""TestsFailed":0,"VetOK":true}"#));
    }

    #[test]
    fn timeouts_as_the_go_playground_reports_them() {
        let run = RunOutcome::TimedOut {
            output: vec![
                record(r#"{"Errors":"","IsTest":false}"#),
                chunk(StreamKind::Stdout, "spinning\n", 5),
            ],
        };
        let (raw, pg) = both(&run);
        assert_eq!(
            text(&pg),
            r#"{"Errors":"","Events":[{"Message":"timeout running program\n","Kind":"stderr","Delay":0},{"Message":"spinning\n","Kind":"stdout","Delay":5000000}],"Status":1,"IsTest":false,"TestsFailed":0}"#
        );
        assert_eq!((pg.cacheable, pg.metric), (false, Some(RunResult::Timeout)));
        assert!(
            text(&raw).contains("Time exceeded, killing..."),
            "{}",
            text(&raw)
        );
        let build = RunOutcome::TimedOut {
            output: vec![record("")],
        };
        let (_, pg) = both(&build);
        assert_eq!(
            text(&pg),
            r#"{"Errors":"timeout running go build","Events":null,"Status":0,"IsTest":false,"TestsFailed":0}"#
        );
        assert!(!pg.cacheable);
    }
}
