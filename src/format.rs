//! The answer of /fmt (the Go playground's Format button): `{"Body": formatted, "Error": ""}`, or
//! `{"Body": "", "Error": the formatter's message}`, both with 200. The formatter is a language's
//! format command, run like a program (same sandbox isolation, cache, admission).

use bytes::Bytes;
use serde::Serialize;

use crate::compile::{OUTPUT_TOO_LARGE, error_body};
use crate::hooks::RunResult;
use crate::sandbox::{Chunk, Limits, RunOutcome, SandboxError, StreamKind};

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

/// (status, body, metric result, cacheable), as `compile::render` for runs.
pub fn render(
    result: &Result<RunOutcome, SandboxError>,
    _limits: &Limits,
) -> (u16, Bytes, RunResult, bool) {
    match result {
        Ok(RunOutcome::Exited { status: 0, output }) => (
            200,
            body(&stream(output, StreamKind::Stdout), ""),
            RunResult::Ok,
            true,
        ),
        Ok(RunOutcome::Exited { output, .. }) => {
            let message = stream(output, StreamKind::Stderr);
            let message = if message.trim().is_empty() {
                "The formatter failed without saying why.".to_owned()
            } else {
                message.trim_end().to_owned()
            };
            (200, body("", &message), RunResult::ExitNonzero, true)
        }
        Ok(RunOutcome::OutputTooLarge { .. }) => (
            200,
            body("", OUTPUT_TOO_LARGE),
            RunResult::OutputTooLarge,
            true,
        ),
        Ok(RunOutcome::TimedOut { .. }) => (
            200,
            body("", "The formatter ran out of time."),
            RunResult::Timeout,
            false,
        ),
        Ok(RunOutcome::OutOfMemory { .. }) => (
            200,
            body("", "The formatter ran out of memory."),
            RunResult::Oom,
            false,
        ),
        Err(e) => (
            503,
            error_body(&format!("Sandbox failed: {}", e.message)),
            RunResult::SandboxError,
            false,
        ),
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
        let ok = Ok(RunOutcome::Exited {
            status: 0,
            output: vec![chunk(StreamKind::Stdout, "package main\n")],
        });
        let (status, b, _, cacheable) = render(&ok, &limits);
        assert_eq!((status, cacheable), (200, true));
        assert_eq!(&b[..], br#"{"Body":"package main\n","Error":""}"#);
        let bad = Ok(RunOutcome::Exited {
            status: 2,
            output: vec![chunk(StreamKind::Stderr, "prog.go:2:1: expected\n")],
        });
        let (status, b, r, _) = render(&bad, &limits);
        assert_eq!((status, r), (200, RunResult::ExitNonzero));
        assert_eq!(&b[..], br#"{"Body":"","Error":"prog.go:2:1: expected"}"#);
    }
}
