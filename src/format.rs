//! The answer of /fmt (the Go playground's Format button): `{"Body": formatted, "Error": ""}`, or
//! `{"Body": "", "Error": the formatter's message}`, both with 200. The formatter is a language's
//! format command, run like a program (same sandbox isolation, cache, admission).

use bytes::Bytes;
use serde::Serialize;

use crate::answer::{self, Dialect, OUTPUT_TOO_LARGE, Outcome, Row};
use crate::hooks::RunResult;
use crate::sandbox::{Chunk, Limits, RunOutcome, StreamKind};

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "Body")]
    body: &'a str,
    #[serde(rename = "Error")]
    error: &'a str,
}

pub fn body(formatted: &str, error: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&Body {
            body: formatted,
            error,
        })
        .expect("answer serializes"),
    )
}

fn stream(output: &[Chunk], kind: StreamKind) -> String {
    let bytes: Vec<u8> = output
        .iter()
        .filter(|c| c.kind == kind)
        .flat_map(|c| c.data.iter().copied())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The formatter's cell of the answer table, the same in both dialects: the formatter's own
/// outcomes become `{"Body","Error"}` answers; refusals before a run are the table's raw ones.
pub fn render(outcome: &Outcome<'_>, _dialect: Dialect, limits: &Limits) -> Row {
    let ran = |body: Bytes, metric: RunResult, cacheable: bool| Row {
        status: 200,
        body,
        cacheable,
        metric: Some(metric),
        retry_after: false,
    };
    match outcome {
        Outcome::Ran(RunOutcome::Exited { status: 0, output }) => ran(
            body(&stream(output, StreamKind::Stdout), ""),
            RunResult::Ok,
            true,
        ),
        Outcome::Ran(RunOutcome::Exited { output, .. }) => {
            let message = stream(output, StreamKind::Stderr);
            let message = if message.trim().is_empty() {
                "The formatter failed without saying why.".to_owned()
            } else {
                message.trim_end().to_owned()
            };
            ran(body("", &message), RunResult::ExitNonzero, true)
        }
        Outcome::Ran(RunOutcome::OutputTooLarge { .. }) => {
            ran(body("", OUTPUT_TOO_LARGE), RunResult::OutputTooLarge, true)
        }
        Outcome::Ran(RunOutcome::TimedOut { .. }) => ran(
            body("", "The formatter ran out of time."),
            RunResult::Timeout,
            false,
        ),
        Outcome::Ran(RunOutcome::OutOfMemory { .. }) => ran(
            body("", "The formatter ran out of memory."),
            RunResult::Oom,
            false,
        ),
        other => answer::answer(other, Dialect::Raw, limits),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn chunk(kind: StreamKind, s: &str) -> Chunk {
        Chunk {
            kind,
            data: s.as_bytes().to_vec(),
            at: Duration::ZERO,
        }
    }

    #[test]
    fn formatted_or_the_formatters_message() {
        let limits = Limits::default();
        let ok = RunOutcome::Exited {
            status: 0,
            output: vec![chunk(StreamKind::Stdout, "package main\n")],
        };
        let row = render(&Outcome::Ran(&ok), Dialect::Playground, &limits);
        assert_eq!((row.status, row.cacheable), (200, true));
        assert_eq!(&row.body[..], br#"{"Body":"package main\n","Error":""}"#);
        let bad = RunOutcome::Exited {
            status: 2,
            output: vec![chunk(StreamKind::Stderr, "prog.go:2:1: expected\n")],
        };
        let row = render(&Outcome::Ran(&bad), Dialect::Raw, &limits);
        assert_eq!(
            (row.status, row.metric),
            (200, Some(RunResult::ExitNonzero))
        );
        assert_eq!(
            &row.body[..],
            br#"{"Body":"","Error":"prog.go:2:1: expected"}"#
        );
    }
}
