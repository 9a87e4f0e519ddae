//! The /compile service: cache → single flight → admission → sandbox → rendered answer. It knows
//! nothing of HTTP beyond status codes; answers leave here already serialized, so the cache can
//! hand out the same bytes again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde::Serialize;
use tokio::sync::Notify;

use crate::admission::Admission;
use crate::cache::{self, Cache, Key, Stored};
use crate::hooks::{Hooks, RunResult};
use crate::sandbox::{Chunk, Limits, LiveOutput, RunOutcome, Sandbox, SandboxError, StreamKind};

/// The Go server's notice after a killed run; existing frontends show it.
pub const TIMEOUT_NOTICE: &str = "\nTime exceeded, killing...\n";
pub const PROGRAM_TOO_LARGE: &str = "Program too large.";
pub const OUTPUT_TOO_LARGE: &str = "Program output too large.";
/// The Go server's `Errors` for a run past its deadline; its clients recognise it.
pub const PROCESS_TOOK_TOO_LONG: &str = "process took too long";
/// Said to live clients when every run slot is busy and the queue is full (/compile says the
/// same with a 503).
pub const SERVER_BUSY: &str = "Server busy: too many programs are running. Retry shortly.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// JSON, ready to send.
    pub body: Bytes,
    pub cache: Option<CacheStatus>,
    /// Seconds, for 503s that are worth retrying.
    pub retry_after: Option<u64>,
    /// What became of the run, when one was attempted; for logs.
    pub result: Option<RunResult>,
    /// The program's cache key, when it got that far; for logs.
    pub key: Option<Key>,
}

impl Answer {
    /// An answer that is not a run's: `{"Errors": message, "Events": null}`, never cached.
    fn error(status: u16, message: &str) -> Answer {
        Answer {
            status,
            body: error_body(message),
            cache: None,
            retry_after: None,
            result: None,
            key: None,
        }
    }
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

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "Message")]
    message: std::borrow::Cow<'a, str>,
    #[serde(rename = "Kind")]
    kind: &'static str,
    #[serde(rename = "Delay")]
    delay: u64,
}

fn json(body: &Body<'_>) -> Bytes {
    Bytes::from(serde_json::to_vec(body).expect("answer serializes"))
}

/// `{"Errors": message, "Events": null}`
pub fn error_body(message: &str) -> Bytes {
    json(&Body {
        errors: message,
        events: None,
        status: None,
    })
}

fn events<'a>(output: &'a [Chunk], notice: Option<String>) -> Vec<Event<'a>> {
    let mut events: Vec<Event<'a>> = output
        .iter()
        .map(|c| Event {
            message: String::from_utf8_lossy(&c.data),
            kind: c.kind.as_str(),
            delay: 0,
        })
        .collect();
    if let Some(n) = notice {
        events.push(Event {
            message: n.into(),
            kind: StreamKind::Stderr.as_str(),
            delay: 0,
        });
    }
    events
}

/// One row of the outcome table in `shared/design.md`: (status, body, metric result, cacheable).
fn render(
    result: &Result<RunOutcome, SandboxError>,
    limits: &Limits,
) -> (u16, Bytes, RunResult, bool) {
    match result {
        Ok(RunOutcome::Exited { status, output }) => {
            let body = json(&Body {
                errors: "",
                events: Some(events(output, None)),
                status: Some(*status),
            });
            let r = if *status == 0 {
                RunResult::Ok
            } else {
                RunResult::ExitNonzero
            };
            (200, body, r, true)
        }
        Ok(RunOutcome::OutputTooLarge { .. }) => (
            400,
            error_body(OUTPUT_TOO_LARGE),
            RunResult::OutputTooLarge,
            true,
        ),
        Ok(RunOutcome::TimedOut { output }) => {
            let body = json(&Body {
                errors: "",
                events: Some(events(output, Some(TIMEOUT_NOTICE.into()))),
                status: None,
            });
            (200, body, RunResult::Timeout, false)
        }
        Ok(RunOutcome::OutOfMemory { output }) => {
            let notice = format!(
                "\nOut of memory: the program used more than its {} MiB and was killed.\n",
                limits.memory_bytes >> 20
            );
            let body = json(&Body {
                errors: "",
                events: Some(events(output, Some(notice))),
                status: None,
            });
            (200, body, RunResult::Oom, false)
        }
        Err(e) => {
            let body = error_body(&format!("Sandbox failed: {}", e.message));
            (503, body, RunResult::SandboxError, false)
        }
    }
}

type Flight = Shared<BoxFuture<'static, Answer>>;

/// Takes a finished flight off the in-flight map when dropped.
struct Landing<'a>(&'a CompileService, Key);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.0.land(&self.1);
    }
}

pub struct CompileService {
    sandbox: Arc<dyn Sandbox>,
    cache: Cache,
    admission: Arc<Admission>,
    hooks: Arc<dyn Hooks>,
    limits: Limits,
    max_program_bytes: usize,
    fingerprint: String,
    inflight: Mutex<HashMap<Key, Flight>>,
    idle: Notify,
}

pub struct Options {
    pub limits: Limits,
    pub max_program_bytes: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub max_concurrent_runs: usize,
    pub max_queued: usize,
}

impl CompileService {
    pub fn new(sandbox: Arc<dyn Sandbox>, opts: Options, hooks: Arc<dyn Hooks>) -> Arc<Self> {
        let fingerprint = format!("{}|{}", sandbox.name(), sandbox.fingerprint());
        Arc::new(CompileService {
            cache: Cache::new(opts.cache_entries, opts.cache_bytes, hooks.clone()),
            admission: Admission::new(opts.max_concurrent_runs, opts.max_queued, hooks.clone()),
            sandbox,
            hooks,
            limits: opts.limits,
            max_program_bytes: opts.max_program_bytes,
            fingerprint,
            inflight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
        })
    }

    pub fn max_program_bytes(&self) -> usize {
        self.max_program_bytes
    }

    pub fn sandbox(&self) -> &Arc<dyn Sandbox> {
        &self.sandbox
    }

    /// (running, queued, cache entries) for status lines.
    pub fn load(&self) -> (usize, usize, usize) {
        (
            self.admission.running(),
            self.admission.queued(),
            self.cache.size().0,
        )
    }

    /// The answer to a program that is over the size limit; never run, never cached.
    pub fn program_too_large(&self) -> Answer {
        self.hooks.program_too_large();
        Answer::error(400, PROGRAM_TOO_LARGE)
    }

    pub fn key(&self, program: &[u8]) -> Key {
        cache::key(&self.fingerprint, program)
    }

    pub async fn compile(self: &Arc<Self>, program: Bytes) -> Answer {
        if program.len() > self.max_program_bytes {
            return self.program_too_large();
        }
        let key = self.key(&program);
        if let Some(Stored { status, body }) = self.cache.get(&key) {
            return Answer {
                status,
                body,
                cache: Some(CacheStatus::Hit),
                retry_after: None,
                result: None,
                key: Some(key),
            };
        }
        let flight = {
            let mut inflight = self.inflight.lock().unwrap();
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    // The program may be a view into the connection's read buffer (http::body);
                    // a run holds it for seconds, so it gets its own copy rather than pin that.
                    let program = Bytes::copy_from_slice(&program);
                    // The run lives in its own task: a client that hangs up must not cancel a run
                    // that others wait on, nor skip its sandbox's cleanup.
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        // Lands even if the run panics, so that the drain never waits on it.
                        let _landing = Landing(&this, key);
                        this.run_uncached(key, program).await
                    });
                    let flight = async move {
                        task.await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "run task failed");
                            Answer::error(500, "Internal error while running the program.")
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, flight.clone());
                    flight
                }
            }
        };
        Answer {
            key: Some(key),
            ..flight.await
        }
    }

    fn land(&self, key: &Key) {
        let mut inflight = self.inflight.lock().unwrap();
        inflight.remove(key);
        if inflight.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Resolves once no run is in flight, for the drain.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight.lock().unwrap().is_empty() {
                return;
            }
            notified.await;
        }
    }

    async fn run_uncached(&self, key: Key, program: Bytes) -> Answer {
        let _slot = match self.admission.acquire().await {
            Ok(slot) => slot,
            Err(_) => {
                self.hooks.overload_rejected();
                let retry = self.limits.timeout.as_secs_f64().ceil().max(1.0) as u64;
                return Answer {
                    retry_after: Some(retry),
                    ..Answer::error(
                        503,
                        "Server busy: too many programs are running. Retry shortly.",
                    )
                };
            }
        };
        let started = Instant::now();
        let result = self.sandbox.run(program, None).await;
        let elapsed: Duration = started.elapsed();
        if let Err(e) = &result {
            self.hooks.sandbox_error(e.kind.as_str());
            tracing::error!(kind = e.kind.as_str(), error = %e.message, "sandbox failed");
        }
        let (status, body, run_result, cacheable) = render(&result, &self.limits);
        self.hooks.run_finished(run_result, elapsed);
        if cacheable {
            self.cache.insert(
                key,
                Stored {
                    status,
                    body: body.clone(),
                },
            );
        }
        Answer {
            status,
            body,
            cache: Some(CacheStatus::Miss),
            retry_after: None,
            result: Some(run_result),
            key: None,
        }
    }
}

/// The end of a live run, as the socket transport reports it: empty when the program exited 0,
/// else what went wrong in the words the Go playground's clients show after "Program exited: ".
fn end_message(result: &Result<RunOutcome, SandboxError>, limits: &Limits) -> String {
    match result {
        Ok(RunOutcome::Exited { status: 0, .. }) => String::new(),
        Ok(RunOutcome::Exited { status, .. }) => format!("exit status {status}"),
        Ok(RunOutcome::TimedOut { .. }) => PROCESS_TOOK_TOO_LONG.into(),
        Ok(RunOutcome::OutputTooLarge { .. }) => OUTPUT_TOO_LARGE.into(),
        Ok(RunOutcome::OutOfMemory { .. }) => format!(
            "out of memory: the program used more than its {} MiB",
            limits.memory_bytes >> 20
        ),
        Err(e) => format!("Sandbox failed: {}", e.message),
    }
}

/// What a live run needs of a cached answer, whatever form it was rendered in: its events and
/// how it ended.
#[derive(serde::Deserialize)]
struct CachedAnswer {
    #[serde(rename = "Errors", default)]
    errors: String,
    #[serde(rename = "Events", default)]
    events: Option<Vec<CachedEvent>>,
    #[serde(rename = "Status", default)]
    status: i64,
}

#[derive(serde::Deserialize)]
struct CachedEvent {
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Kind")]
    kind: String,
}

/// Sends a cached answer's output to `live` at once; returns its end message.
fn replay(body: &[u8], live: &LiveOutput) -> String {
    let Ok(cached) = serde_json::from_slice::<CachedAnswer>(body) else {
        return "Internal error: a cached answer could not be read.".into();
    };
    for e in cached.events.unwrap_or_default() {
        let kind = match e.kind.as_str() {
            "stderr" => StreamKind::Stderr,
            _ => StreamKind::Stdout,
        };
        let _ = live.send(Chunk {
            kind,
            data: e.message.into_bytes(),
            at: Duration::ZERO,
        });
    }
    if !cached.errors.is_empty() {
        cached.errors
    } else if cached.status != 0 {
        format!("exit status {}", cached.status)
    } else {
        String::new()
    }
}

impl CompileService {
    /// Runs a program for a live transport: its output goes to `live` as it is written and the
    /// end message is returned. Same size limit, admission, deadline, cap and metrics as
    /// `compile`; a cached answer is replayed at once, and a completed run's answer is cached.
    /// Not shared with identical runs in flight: each live client sees its own run's output.
    /// Dropping the future (a killed run, a client gone) drops the sandbox run, which removes its
    /// sandbox on the spot.
    pub async fn run_live(&self, program: Bytes, live: LiveOutput) -> String {
        if program.len() > self.max_program_bytes {
            self.hooks.program_too_large();
            return PROGRAM_TOO_LARGE.into();
        }
        let key = self.key(&program);
        if let Some(Stored { body, .. }) = self.cache.get(&key) {
            return replay(&body, &live);
        }
        let Ok(_slot) = self.admission.acquire().await else {
            self.hooks.overload_rejected();
            return SERVER_BUSY.into();
        };
        let started = Instant::now();
        let result = self.sandbox.run(program, Some(live)).await;
        let elapsed = started.elapsed();
        if let Err(e) = &result {
            self.hooks.sandbox_error(e.kind.as_str());
            tracing::error!(kind = e.kind.as_str(), error = %e.message, "sandbox failed");
        }
        let (status, body, run_result, cacheable) = render(&result, &self.limits);
        self.hooks.run_finished(run_result, elapsed);
        if cacheable {
            self.cache.insert(key, Stored { status, body });
        }
        end_message(&result, &self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: StreamKind, s: &[u8]) -> Chunk {
        Chunk {
            kind,
            data: s.to_vec(),
            at: Duration::ZERO,
        }
    }

    #[test]
    fn renders_the_wire_contract() {
        let limits = Limits::default();
        let out = Ok(RunOutcome::Exited {
            status: 3,
            output: vec![
                chunk(StreamKind::Stdout, b"hi\n"),
                chunk(StreamKind::Stderr, b"\xffx"),
            ],
        });
        let (status, body, r, cacheable) = render(&out, &limits);
        assert_eq!((status, r, cacheable), (200, RunResult::ExitNonzero, true));
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"Errors":"","Events":[{"Message":"hi\n","Kind":"stdout","Delay":0},{"Message":"�x","Kind":"stderr","Delay":0}],"Status":3}"#
        );
        let (status, body, _, cacheable) =
            render(&Ok(RunOutcome::OutputTooLarge { output: vec![] }), &limits);
        assert_eq!((status, cacheable), (400, true));
        assert_eq!(
            &body[..],
            br#"{"Errors":"Program output too large.","Events":null}"#
        );
        let (_, body, r, cacheable) = render(&Ok(RunOutcome::TimedOut { output: vec![] }), &limits);
        assert_eq!((r, cacheable), (RunResult::Timeout, false));
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains(r#"Time exceeded, killing...\n"#)
        );
    }
}
