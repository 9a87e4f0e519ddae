//! The one answer table of /compile: for every outcome of a request and each answer dialect, the
//! HTTP status, the JSON body, whether it is cached and what the metrics count. README's table is
//! this one; `answer` is the only place that decides any of it.
//!
//! Two dialects, picked by the request's form (`http::request`): `Raw`, the answers of the Go
//! compile server we replace (its clients keep working byte for byte), and `Playground`, what the
//! Go playground's frontend can render: HTTP 200 for anything about the program (any other status
//! shows "Error communicating with remote server."), real `Delay`s so that it replays output at the
//! pace it was written, and `Errors: "process took too long"` on a deadline, the one error text
//! after which it still replays the output.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;

use crate::hooks::RunResult;
use crate::sandbox::{Chunk, Limits, RunOutcome, SandboxError, StreamKind};

/// The Go server's notice after a killed run; raw clients show it.
pub const TIMEOUT_NOTICE: &str = "\nTime exceeded, killing...\n";
/// The one `Errors` text after which the Go playground's frontend replays the events and shows
/// "Program exited: process took too long.".
pub const PROCESS_TOOK_TOO_LONG: &str = "process took too long";
pub const PROGRAM_TOO_LARGE: &str = "Program too large.";
pub const OUTPUT_TOO_LARGE: &str = "Program output too large.";
pub const OVERLOADED: &str = "Server busy: too many programs are running. Retry shortly.";
pub const ORIGIN_REFUSED: &str =
    "Origin not allowed: this server does not accept programs from pages of this origin.";
pub const BODY_TIMEOUT: &str = "Request body was not received in time.";
pub const BODY_BROKEN: &str = "Request body could not be read.";
/// The status of every cacheable answer in the playground dialect (the cache keeps one status).
pub const CACHED_PLAYGROUND_STATUS: u16 = 200;
/// `Kind` of the events the daemon adds (notices): the frontend styles them apart from output.
pub const SYSTEM_KIND: &str = "system";

/// How an answer is written; the request's form picks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// The answers of the Go compile server we replace: raw-body requests (curl, its clients).
    Raw,
    /// What the Go playground's frontend renders: form-encoded and JSON requests.
    Playground,
}

/// Everything a /compile request can come to.
#[derive(Debug)]
pub enum Outcome<'a> {
    Ran(&'a RunOutcome),
    SandboxFailed(&'a SandboxError),
    /// Every run slot busy and the queue full; never run.
    Overloaded,
    /// The program, once decoded, is over `--max-program-bytes`; never run.
    ProgramTooLarge,
    /// A form or JSON request that cannot be decoded; never run. The text says what is wrong.
    Malformed(&'a str),
    /// An `Origin` not on the `--allow-origin` list; refused before the body is read.
    OriginRefused,
    /// The body did not arrive within `--read-timeout`.
    BodyTimeout,
    /// The client went away or sent a broken body.
    BodyBroken,
}

/// One cell of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub status: u16,
    /// JSON, ready to send.
    pub body: Bytes,
    /// Whether the cache keeps it (deterministic outcomes only).
    pub cacheable: bool,
    /// What `compilerd_runs_total` counts it as, when a run was attempted.
    pub metric: Option<RunResult>,
    /// Whether the answer carries `Retry-After`.
    pub retry_after: bool,
}

impl Row {
    fn refusal(status: u16, message: &str) -> Row {
        Row {
            status,
            body: error_body(message),
            cacheable: false,
            metric: None,
            retry_after: false,
        }
    }
}

/// The table.
pub fn answer(outcome: &Outcome<'_>, dialect: Dialect, limits: &Limits) -> Row {
    use Dialect::{Playground, Raw};
    let ran = |status, body, cacheable, metric| Row {
        status,
        body,
        cacheable,
        metric: Some(metric),
        retry_after: false,
    };
    match (outcome, dialect) {
        (Outcome::Ran(RunOutcome::Exited { status, output }), _) => {
            let metric = if *status == 0 {
                RunResult::Ok
            } else {
                RunResult::ExitNonzero
            };
            let events = events(output, dialect, None);
            ran(200, run_body("", Some(events), Some(*status)), true, metric)
        }
        (Outcome::Ran(RunOutcome::OutputTooLarge { .. }), Raw) => ran(
            400,
            error_body(OUTPUT_TOO_LARGE),
            true,
            RunResult::OutputTooLarge,
        ),
        (Outcome::Ran(r @ RunOutcome::OutputTooLarge { output }), Playground) => {
            let events = events(output, dialect, limit_notice(r, limits));
            let body = run_body("", Some(events), Some(0));
            ran(200, body, true, RunResult::OutputTooLarge)
        }
        (Outcome::Ran(RunOutcome::TimedOut { output }), Raw) => {
            let events = events(output, dialect, Some(TIMEOUT_NOTICE.into()));
            ran(
                200,
                run_body("", Some(events), None),
                false,
                RunResult::Timeout,
            )
        }
        (Outcome::Ran(RunOutcome::TimedOut { output }), Playground) => {
            let events = events(output, dialect, None);
            let body = run_body(PROCESS_TOOK_TOO_LONG, Some(events), Some(0));
            ran(200, body, false, RunResult::Timeout)
        }
        (Outcome::Ran(RunOutcome::OutOfMemory { output }), Raw) => {
            let notice = format!("\n{}\n", oom_text(limits));
            let events = events(output, dialect, Some(notice.into()));
            ran(200, run_body("", Some(events), None), false, RunResult::Oom)
        }
        (Outcome::Ran(r @ RunOutcome::OutOfMemory { output }), Playground) => {
            let events = events(output, dialect, limit_notice(r, limits));
            let body = run_body("", Some(events), Some(0));
            ran(200, body, false, RunResult::Oom)
        }
        (Outcome::SandboxFailed(e), _) => Row {
            metric: Some(RunResult::SandboxError),
            ..Row::refusal(503, &format!("Sandbox failed: {}.", e.kind.public_text()))
        },
        (Outcome::Overloaded, _) => Row {
            retry_after: true,
            ..Row::refusal(503, OVERLOADED)
        },
        (Outcome::ProgramTooLarge, Raw) => Row::refusal(400, PROGRAM_TOO_LARGE),
        (Outcome::ProgramTooLarge, Playground) => Row {
            body: run_body(PROGRAM_TOO_LARGE, None, Some(0)),
            ..Row::refusal(200, PROGRAM_TOO_LARGE)
        },
        (Outcome::Malformed(why), _) => Row::refusal(400, why),
        (Outcome::OriginRefused, _) => Row::refusal(403, ORIGIN_REFUSED),
        (Outcome::BodyTimeout, _) => Row::refusal(408, BODY_TIMEOUT),
        (Outcome::BodyBroken, _) => Row::refusal(400, BODY_BROKEN),
    }
}

fn oom_text(limits: &Limits) -> String {
    format!(
        "Out of memory: the program used more than its {} MiB and was killed.",
        limits.memory_bytes >> 20
    )
}

/// The daemon's notice for a run it stopped at one of its own limits (the output cap, the memory
/// limit), on a line of its own after the run's output; `None` for any other end.
pub fn limit_notice(ran: &RunOutcome, limits: &Limits) -> Option<Cow<'static, str>> {
    match ran {
        RunOutcome::OutputTooLarge { output } => Some(notice(output, OUTPUT_TOO_LARGE)),
        RunOutcome::OutOfMemory { output } => Some(notice(output, &oom_text(limits))),
        RunOutcome::Exited { .. } | RunOutcome::TimedOut { .. } => None,
    }
}

/// A notice on a line of its own after the output, whether or not the output ended its line.
fn notice(output: &[Chunk], text: &str) -> Cow<'static, str> {
    let ended = output.last().is_none_or(|c| c.data.ends_with(b"\n"));
    let sep = if ended { "" } else { "\n" };
    format!("{sep}{text}").into()
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "Errors")]
    errors: &'a str,
    #[serde(rename = "Events")]
    events: Option<Vec<Event<'a>>>,
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    status: Option<i64>,
}

#[derive(Serialize, Debug, PartialEq)]
struct Event<'a> {
    #[serde(rename = "Message")]
    message: Cow<'a, str>,
    #[serde(rename = "Kind")]
    kind: &'static str,
    /// Nanoseconds since the previous event (the first: since the program's hand-over).
    #[serde(rename = "Delay")]
    delay: u64,
}

fn run_body(errors: &str, events: Option<Vec<Event<'_>>>, status: Option<i64>) -> Bytes {
    json(&Body {
        errors,
        events,
        status,
    })
}

fn json(body: &Body<'_>) -> Bytes {
    Bytes::from(serde_json::to_vec(body).expect("answer serializes"))
}

/// `{"Errors": message, "Events": null}`
pub fn error_body(message: &str) -> Bytes {
    run_body(message, None, None)
}

/// Each output chunk as an event, then the notice if any. Raw answers keep the Go compile
/// server's `Delay: 0` (its clients never saw another value); Playground answers carry the time
/// since the previous event, from the write stamps, so a cached answer replays at the same pace.
/// A notice follows the last write at once: it has no time of its own, and the one it has
/// (deadline, kill) comes right after that write or is told by the text.
fn events<'a>(
    output: &'a [Chunk],
    dialect: Dialect,
    notice: Option<Cow<'static, str>>,
) -> Vec<Event<'a>> {
    let delays = delays(output);
    let mut events: Vec<Event<'a>> = output
        .iter()
        .zip(delays)
        .map(|(c, delay)| Event {
            message: String::from_utf8_lossy(&c.data),
            kind: c.kind.as_str(),
            delay: if dialect == Dialect::Raw { 0 } else { delay },
        })
        .collect();
    if let Some(message) = notice {
        events.push(Event {
            message,
            kind: match dialect {
                Dialect::Raw => StreamKind::Stderr.as_str(),
                Dialect::Playground => SYSTEM_KIND,
            },
            delay: 0,
        });
    }
    events
}

/// Nanoseconds from each chunk's stamp to the one before it (the first: to the hand-over).
pub fn delays(output: &[Chunk]) -> impl Iterator<Item = u64> + '_ {
    let mut previous = std::time::Duration::ZERO;
    output.iter().map(move |c| {
        let d = c.at.saturating_sub(previous);
        previous = previous.max(c.at);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sandbox::SandboxErrorKind;

    fn chunk(kind: StreamKind, s: &[u8], at_ms: u64) -> Chunk {
        Chunk {
            kind,
            data: s.to_vec(),
            at: Duration::from_millis(at_ms),
        }
    }

    fn text(row: &Row) -> &str {
        std::str::from_utf8(&row.body).unwrap()
    }

    fn output() -> Vec<Chunk> {
        vec![
            chunk(StreamKind::Stdout, b"hi\n", 2),
            chunk(StreamKind::Stderr, b"\xffx", 252),
        ]
    }

    #[test]
    fn delays_are_nanoseconds_since_the_previous_write() {
        let out = vec![
            chunk(StreamKind::Stdout, b"a", 3),
            chunk(StreamKind::Stderr, b"b", 3),
            chunk(StreamKind::Stdout, b"c", 1003),
        ];
        assert_eq!(
            delays(&out).collect::<Vec<_>>(),
            [3_000_000, 0, 1_000_000_000]
        );
        // Stamps never run backwards, but if they did, a delay would be 0, not a wrap.
        let out = vec![
            chunk(StreamKind::Stdout, b"a", 10),
            chunk(StreamKind::Stdout, b"b", 5),
            chunk(StreamKind::Stdout, b"c", 12),
        ];
        assert_eq!(delays(&out).collect::<Vec<_>>(), [10_000_000, 0, 2_000_000]);
    }

    #[test]
    fn exited_raw_is_the_seed_contract() {
        let out = RunOutcome::Exited {
            status: 3,
            output: output(),
        };
        let row = answer(&Outcome::Ran(&out), Dialect::Raw, &Limits::default());
        assert_eq!(
            (row.status, row.cacheable, row.metric),
            (200, true, Some(RunResult::ExitNonzero))
        );
        assert_eq!(
            text(&row),
            r#"{"Errors":"","Events":[{"Message":"hi\n","Kind":"stdout","Delay":0},{"Message":"�x","Kind":"stderr","Delay":0}],"Status":3}"#
        );
    }

    #[test]
    fn exited_playground_carries_real_delays() {
        let out = RunOutcome::Exited {
            status: 0,
            output: output(),
        };
        let row = answer(&Outcome::Ran(&out), Dialect::Playground, &Limits::default());
        assert_eq!(
            (row.status, row.cacheable, row.metric),
            (200, true, Some(RunResult::Ok))
        );
        assert_eq!(
            text(&row),
            r#"{"Errors":"","Events":[{"Message":"hi\n","Kind":"stdout","Delay":2000000},{"Message":"�x","Kind":"stderr","Delay":250000000}],"Status":0}"#
        );
        let silent = RunOutcome::Exited {
            status: 0,
            output: vec![],
        };
        let row = answer(
            &Outcome::Ran(&silent),
            Dialect::Playground,
            &Limits::default(),
        );
        assert_eq!(text(&row), r#"{"Errors":"","Events":[],"Status":0}"#);
    }

    #[test]
    fn output_flood() {
        let out = RunOutcome::OutputTooLarge {
            output: vec![chunk(StreamKind::Stdout, b"yyyy", 1)],
        };
        let raw = answer(&Outcome::Ran(&out), Dialect::Raw, &Limits::default());
        assert_eq!((raw.status, raw.cacheable), (400, true));
        assert_eq!(
            text(&raw),
            r#"{"Errors":"Program output too large.","Events":null}"#
        );
        let pg = answer(&Outcome::Ran(&out), Dialect::Playground, &Limits::default());
        assert_eq!(
            (pg.status, pg.cacheable, pg.metric),
            (200, true, Some(RunResult::OutputTooLarge))
        );
        assert_eq!(
            text(&pg),
            r#"{"Errors":"","Events":[{"Message":"yyyy","Kind":"stdout","Delay":1000000},{"Message":"\nProgram output too large.","Kind":"system","Delay":0}],"Status":0}"#
        );
    }

    #[test]
    fn deadline() {
        let out = RunOutcome::TimedOut {
            output: vec![chunk(StreamKind::Stdout, b"before\n", 1)],
        };
        let raw = answer(&Outcome::Ran(&out), Dialect::Raw, &Limits::default());
        assert_eq!(
            (raw.status, raw.cacheable, raw.metric),
            (200, false, Some(RunResult::Timeout))
        );
        assert_eq!(
            text(&raw),
            r#"{"Errors":"","Events":[{"Message":"before\n","Kind":"stdout","Delay":0},{"Message":"\nTime exceeded, killing...\n","Kind":"stderr","Delay":0}]}"#
        );
        let pg = answer(&Outcome::Ran(&out), Dialect::Playground, &Limits::default());
        assert_eq!((pg.status, pg.cacheable), (200, false));
        assert_eq!(
            text(&pg),
            r#"{"Errors":"process took too long","Events":[{"Message":"before\n","Kind":"stdout","Delay":1000000}],"Status":0}"#
        );
    }

    #[test]
    fn memory_kill() {
        let limits = Limits {
            memory_bytes: 64 << 20,
            ..Limits::default()
        };
        let out = RunOutcome::OutOfMemory {
            output: vec![chunk(StreamKind::Stdout, b"start\n", 1)],
        };
        let raw = answer(&Outcome::Ran(&out), Dialect::Raw, &limits);
        assert_eq!((raw.status, raw.cacheable), (200, false));
        assert!(text(&raw).ends_with(r#"{"Message":"\nOut of memory: the program used more than its 64 MiB and was killed.\n","Kind":"stderr","Delay":0}]}"#), "{}", text(&raw));
        let pg = answer(&Outcome::Ran(&out), Dialect::Playground, &limits);
        assert_eq!(
            (pg.status, pg.cacheable, pg.metric),
            (200, false, Some(RunResult::Oom))
        );
        assert_eq!(
            text(&pg),
            r#"{"Errors":"","Events":[{"Message":"start\n","Kind":"stdout","Delay":1000000},{"Message":"Out of memory: the program used more than its 64 MiB and was killed.","Kind":"system","Delay":0}],"Status":0}"#
        );
    }

    #[test]
    fn refusals() {
        let limits = Limits::default();
        let failed = SandboxError::new(
            SandboxErrorKind::Unavailable,
            "the engine at unix:///run/docker.sock is not reachable; start it (systemctl start docker)",
        );
        for d in [Dialect::Raw, Dialect::Playground] {
            let row = answer(&Outcome::SandboxFailed(&failed), d, &limits);
            assert_eq!(
                (row.status, row.cacheable, row.metric, row.retry_after),
                (503, false, Some(RunResult::SandboxError), false)
            );
            assert_eq!(
                text(&row),
                r#"{"Errors":"Sandbox failed: the sandbox engine is not available.","Events":null}"#
            );
            let row = answer(&Outcome::Overloaded, d, &limits);
            assert_eq!((row.status, row.retry_after, row.metric), (503, true, None));
            let row = answer(&Outcome::OriginRefused, d, &limits);
            assert_eq!(row.status, 403);
            assert!(text(&row).starts_with(r#"{"Errors":"Origin not allowed"#));
            let row = answer(&Outcome::Malformed("Malformed JSON request: x"), d, &limits);
            assert_eq!(
                (row.status, text(&row)),
                (
                    400,
                    r#"{"Errors":"Malformed JSON request: x","Events":null}"#
                )
            );
        }
        let raw = answer(&Outcome::ProgramTooLarge, Dialect::Raw, &limits);
        assert_eq!(
            (raw.status, text(&raw)),
            (400, r#"{"Errors":"Program too large.","Events":null}"#)
        );
        let pg = answer(&Outcome::ProgramTooLarge, Dialect::Playground, &limits);
        assert_eq!(
            (pg.status, pg.cacheable, text(&pg)),
            (
                200,
                false,
                r#"{"Errors":"Program too large.","Events":null,"Status":0}"#
            )
        );
    }

    /// The cache keeps one status for both dialects' bodies (`cache::Stored`): every cacheable
    /// outcome is answered 200 to playground requests.
    #[test]
    fn cacheable_playground_answers_are_200() {
        let limits = Limits::default();
        for out in [
            RunOutcome::Exited {
                status: 1,
                output: output(),
            },
            RunOutcome::OutputTooLarge { output: output() },
            RunOutcome::TimedOut { output: output() },
            RunOutcome::OutOfMemory { output: output() },
        ] {
            let pg = answer(&Outcome::Ran(&out), Dialect::Playground, &limits);
            let raw = answer(&Outcome::Ran(&out), Dialect::Raw, &limits);
            assert_eq!(pg.cacheable, raw.cacheable);
            assert_eq!(pg.metric, raw.metric);
            if pg.cacheable {
                assert_eq!(pg.status, CACHED_PLAYGROUND_STATUS);
            }
        }
    }
}
