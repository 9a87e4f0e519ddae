//! The /compile service: local cache → single flight → shared cache → admission → sandbox →
//! rendered answer. It knows nothing of HTTP beyond status codes; answers leave here already
//! serialized, so the cache can hand out the same bytes again. A run is rendered once per dialect
//! (`answer`), so whichever request forms ask for a program, it runs once and each gets the
//! answer its client reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::Notify;

use crate::admission::Admission;
use crate::answer::{self, Outcome, Row};
use crate::cache::{self, Cache, Key, SharedCache, Stored};
use crate::hooks::{Hooks, RunResult};
use crate::sandbox::{Chunk, Limits, LiveOutput, RunOutcome, Sandbox, SandboxError, StreamKind};

pub use crate::answer::{
    Dialect, OUTPUT_TOO_LARGE, OVERLOADED, PROCESS_TOOK_TOO_LONG, PROGRAM_TOO_LARGE,
    TIMEOUT_NOTICE, error_body,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    /// Found in the shared tier (another daemon ran it).
    SharedHit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::SharedHit => "SHARED-HIT",
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

/// One run's answer in both dialects: the run is shared by every request for the program,
/// whatever its form, and each gets its own dialect's answer.
#[derive(Clone, Debug)]
struct Answers {
    raw: Answer,
    playground: Answer,
}

impl Answers {
    fn pick(self, dialect: Dialect) -> Answer {
        match dialect {
            Dialect::Raw => self.raw,
            Dialect::Playground => self.playground,
        }
    }

    fn both(answer: Answer) -> Answers {
        Answers {
            raw: answer.clone(),
            playground: answer,
        }
    }
}

type Flight = Shared<BoxFuture<'static, Answers>>;

/// Takes a finished flight off the in-flight map when dropped.
struct Landing<'a>(&'a CompileService, Key);

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.0.land(&self.1);
    }
}

/// How a service's runs become answers: `answer::answer` for programs; a formatter's own table
/// for `/fmt`.
pub type Render = fn(&Outcome<'_>, Dialect, &Limits) -> Row;

pub struct CompileService {
    sandbox: Arc<dyn Sandbox>,
    cache: Arc<Cache>,
    admission: Arc<Admission>,
    /// The language, a bounded label of the run metrics.
    language: String,
    render: Render,
    hooks: Arc<dyn Hooks>,
    limits: Limits,
    max_program_bytes: usize,
    fingerprint: String,
    inflight: Mutex<HashMap<Key, Flight>>,
    idle: Notify,
}

#[derive(Clone)]
pub struct Options {
    pub limits: Limits,
    pub max_program_bytes: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub max_concurrent_runs: usize,
    pub max_queued: usize,
}

/// What every language's service shares: one cache and one admission, so that the daemon's
/// memory and its run slots are bounded once, whatever the number of languages.
#[derive(Clone)]
pub struct SharedState {
    pub cache: Arc<Cache>,
    pub admission: Arc<Admission>,
}

impl SharedState {
    /// `shared_cache`: the fleet's tier behind the local one, if configured.
    pub fn new(
        opts: &Options,
        shared_cache: Option<SharedCache>,
        hooks: &Arc<dyn Hooks>,
    ) -> SharedState {
        SharedState {
            cache: Arc::new(Cache::new(
                opts.cache_entries,
                opts.cache_bytes,
                shared_cache,
                hooks.clone(),
            )),
            admission: Admission::new(opts.max_concurrent_runs, opts.max_queued, hooks.clone()),
        }
    }
}

impl CompileService {
    pub fn new(sandbox: Arc<dyn Sandbox>, opts: Options, hooks: Arc<dyn Hooks>) -> Arc<Self> {
        let shared = SharedState::new(&opts, None, &hooks);
        Self::with_shared(sandbox, opts, &shared, "default", answer::answer, hooks)
    }

    /// A service for one language (`language` is in its cache keys and metric labels) whose
    /// answers `render` writes, on the cache and admission of `shared`.
    pub fn with_shared(
        sandbox: Arc<dyn Sandbox>,
        opts: Options,
        shared: &SharedState,
        language: &str,
        render: Render,
        hooks: Arc<dyn Hooks>,
    ) -> Arc<Self> {
        let fingerprint = format!(
            "lang={language}|{}|{}",
            sandbox.name(),
            sandbox.fingerprint()
        );
        Arc::new(CompileService {
            cache: shared.cache.clone(),
            admission: shared.admission.clone(),
            language: language.to_owned(),
            render,
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

    pub fn limits(&self) -> &Limits {
        &self.limits
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
    pub fn program_too_large(&self, dialect: Dialect) -> Answer {
        self.hooks.program_too_large();
        self.refusal(&Outcome::ProgramTooLarge, dialect)
    }

    /// The table's answer to a request that never reaches a run.
    pub fn refusal(&self, outcome: &Outcome<'_>, dialect: Dialect) -> Answer {
        let row = (self.render)(outcome, dialect, &self.limits);
        self.answer_of(row, None)
    }

    fn answer_of(&self, row: Row, cache: Option<CacheStatus>) -> Answer {
        Answer {
            status: row.status,
            body: row.body,
            cache,
            retry_after: row.retry_after.then(|| self.retry_after_secs()),
            result: row.metric,
            key: None,
        }
    }

    /// A client turned away for overload retries after about one run's deadline.
    fn retry_after_secs(&self) -> u64 {
        self.limits.timeout.as_secs_f64().ceil().max(1.0) as u64
    }

    pub fn key(&self, program: &[u8]) -> Key {
        cache::key(&self.fingerprint, program)
    }

    /// A raw-body request's answer: `compile_as(program, Dialect::Raw)`.
    pub async fn compile(self: &Arc<Self>, program: Bytes) -> Answer {
        self.compile_as(program, Dialect::Raw).await
    }

    /// Answers `program` in `dialect`: from the cache, or from the run of the same program that is
    /// in flight (whatever dialect asked for it), or from a new run.
    pub async fn compile_as(self: &Arc<Self>, program: Bytes, dialect: Dialect) -> Answer {
        if program.len() > self.max_program_bytes {
            return self.program_too_large(dialect);
        }
        let key = self.key(&program);
        if let Some(stored) = self.cache.get(&key) {
            let (status, body) = match dialect {
                Dialect::Raw => (stored.status, stored.body),
                Dialect::Playground => (answer::CACHED_PLAYGROUND_STATUS, stored.playground),
            };
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
                            Answers::both(Answer::error(
                                500,
                                "Internal error while running the program.",
                            ))
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
            ..flight.await.pick(dialect)
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

    /// The shared tier first: one lookup for all the requests that wait on this flight.
    async fn run_uncached(&self, key: Key, program: Bytes) -> Answers {
        if let Some(stored) = self.cache.get_shared(&key).await {
            let hit = |status, body| Answer {
                status,
                body,
                cache: Some(CacheStatus::SharedHit),
                retry_after: None,
                result: None,
                key: None,
            };
            return Answers {
                raw: hit(stored.status, stored.body),
                playground: hit(answer::CACHED_PLAYGROUND_STATUS, stored.playground),
            };
        }
        let _slot = match self.admission.acquire().await {
            Ok(slot) => slot,
            Err(_) => {
                self.hooks.overload_rejected();
                return Answers {
                    raw: self.refusal(&Outcome::Overloaded, Dialect::Raw),
                    playground: self.refusal(&Outcome::Overloaded, Dialect::Playground),
                };
            }
        };
        let started = Instant::now();
        let result = self.sandbox.run(program, None).await;
        self.finish_run(key, &result, started.elapsed())
    }

    /// After a run: its answers in both dialects, the metrics, and the cache when the outcome is
    /// deterministic.
    fn finish_run(
        &self,
        key: Key,
        result: &Result<RunOutcome, SandboxError>,
        elapsed: Duration,
    ) -> Answers {
        let outcome = match result {
            Ok(ran) => Outcome::Ran(ran),
            Err(e) => {
                self.hooks.sandbox_error(e.kind.as_str());
                tracing::error!(kind = e.kind.as_str(), error = %e.message, "sandbox failed");
                Outcome::SandboxFailed(e)
            }
        };
        let raw = (self.render)(&outcome, Dialect::Raw, &self.limits);
        let playground = (self.render)(&outcome, Dialect::Playground, &self.limits);
        let run_result = raw.metric.unwrap_or(RunResult::SandboxError);
        self.hooks.run_finished(&self.language, run_result, elapsed);
        if raw.cacheable {
            debug_assert_eq!(playground.status, answer::CACHED_PLAYGROUND_STATUS);
            self.cache.insert(
                key,
                Stored {
                    status: raw.status,
                    body: raw.body.clone(),
                    playground: playground.body.clone(),
                },
            );
        }
        Answers {
            raw: self.answer_of(raw, Some(CacheStatus::Miss)),
            playground: self.answer_of(playground, Some(CacheStatus::Miss)),
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
        Err(e) => format!("Sandbox failed: {}.", e.kind.public_text()),
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

/// Sends a cached answer (the playground dialect's) to `live` at once; returns its end message.
/// The daemon's own notices (`system` events, e.g. an output flood's) are how the run ended.
fn replay(body: &[u8], live: &LiveOutput) -> String {
    let Ok(cached) = serde_json::from_slice::<CachedAnswer>(body) else {
        return "Internal error: a cached answer could not be read.".into();
    };
    let mut notice = None;
    for e in cached.events.unwrap_or_default() {
        let kind = match e.kind.as_str() {
            "stdout" => StreamKind::Stdout,
            "stderr" => StreamKind::Stderr,
            _ => {
                notice = Some(e.message);
                continue;
            }
        };
        let _ = live.send(Chunk {
            kind,
            data: e.message.into_bytes(),
            at: Duration::ZERO,
        });
    }
    if !cached.errors.is_empty() {
        cached.errors
    } else if let Some(notice) = notice {
        notice
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
        if let Some(Stored { playground, .. }) = self.cache.get(&key) {
            return replay(&playground, &live);
        }
        let Ok(_slot) = self.admission.acquire().await else {
            self.hooks.overload_rejected();
            return OVERLOADED.into();
        };
        let started = Instant::now();
        let result = self.sandbox.run(program, Some(live)).await;
        self.finish_run(key, &result, started.elapsed());
        end_message(&result, &self.limits)
    }
}

/// A dialect's rendering of a run request's result (`run`).
pub type RunRenderFn =
    Arc<dyn Fn(&Result<crate::run::RunResult, SandboxError>) -> Row + Send + Sync>;

/// How a dialect of run requests (Piston's) renders a run, and what it answers when no run slot
/// is free.
#[derive(Clone)]
pub struct RunRender {
    /// In the cache key: each dialect caches its own bytes.
    pub dialect: &'static str,
    pub render: RunRenderFn,
    pub overloaded: Row,
    /// Which of several runs of one request this is (Judge0's `number_of_runs`), in the key when
    /// not 0: each round is a run of its own, not the cache's answer to the first.
    pub round: u32,
}

impl CompileService {
    /// Answers a run request (`run`): from the cache, or from the same request's run in flight,
    /// or from a new run of its stages under this service's admission, with the same metrics as
    /// `compile`. The key covers the whole request (files, stdin, arguments, the run's own
    /// limits), the language's stages and fingerprint, and the dialect. As with `compile`, the run
    /// lives in its own task: a client that hangs up cancels nothing, and the drain waits for it.
    pub async fn execute(self: &Arc<Self>, job: crate::run::RunJob, how: RunRender) -> Answer {
        let mut keyed = Vec::with_capacity(128);
        keyed.extend_from_slice(how.dialect.as_bytes());
        keyed.push(0);
        keyed.extend_from_slice(format!("{:?}", job.stages).as_bytes());
        keyed.push(0);
        keyed.extend_from_slice(&job.req.digest());
        if how.round > 0 {
            keyed.extend_from_slice(format!("\0round {}", how.round).as_bytes());
        }
        let key = self.key(&keyed);
        if let Some(stored) = self.cache.get(&key) {
            return Answer {
                status: stored.status,
                body: stored.body,
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
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        // Lands even if the run panics, so that the drain never waits on it.
                        let _landing = Landing(&this, key);
                        Answers::both(this.run_job(key, job, how).await)
                    });
                    let flight = async move {
                        task.await.unwrap_or_else(|e| {
                            tracing::error!(error = %e, "run task failed");
                            Answers::both(Answer::error(
                                500,
                                "Internal error while running the program.",
                            ))
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
            ..flight.await.raw
        }
    }

    /// A run slot for a live run of a run request (Piston's WebSocket), which does not go through
    /// the cache; `None` when the queue is full (counted as an overload).
    pub async fn admit(&self) -> Option<crate::admission::Slot> {
        let slot = self.admission.acquire().await.ok();
        if slot.is_none() {
            self.hooks.overload_rejected();
        }
        slot
    }

    /// Counts a live run in the run metrics.
    pub fn record_run(&self, result: RunResult, elapsed: Duration) {
        self.hooks.run_finished(&self.language, result, elapsed);
    }

    async fn run_job(&self, key: Key, job: crate::run::RunJob, how: RunRender) -> Answer {
        let Ok(_slot) = self.admission.acquire().await else {
            self.hooks.overload_rejected();
            return self.answer_of(how.overloaded, None);
        };
        let started = Instant::now();
        let result = crate::run::execute(self.sandbox.as_ref(), &job, None, None).await;
        if let Err(e) = &result {
            self.hooks.sandbox_error(e.kind.as_str());
            tracing::error!(kind = e.kind.as_str(), error = %e.message, "sandbox failed");
        }
        let row = (how.render)(&result);
        self.hooks.run_finished(
            &self.language,
            row.metric.unwrap_or(RunResult::SandboxError),
            started.elapsed(),
        );
        if row.cacheable {
            self.cache.insert(
                key,
                Stored {
                    status: row.status,
                    body: row.body.clone(),
                    playground: row.body.clone(),
                },
            );
        }
        self.answer_of(row, Some(CacheStatus::Miss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::NoHooks;
    use crate::sandbox::scripted::ScriptedSandbox;

    fn service(sandbox: Arc<ScriptedSandbox>) -> Arc<CompileService> {
        let limits = Limits::default();
        CompileService::new(
            sandbox,
            Options {
                limits,
                max_program_bytes: 100,
                cache_entries: 100,
                cache_bytes: 1 << 20,
                max_concurrent_runs: 2,
                max_queued: 2,
            },
            Arc::new(NoHooks),
        )
    }

    fn text(a: &Answer) -> &str {
        std::str::from_utf8(&a.body).unwrap()
    }

    #[tokio::test]
    async fn one_run_answers_each_dialect_and_the_cache_keeps_both() {
        let sandbox = Arc::new(ScriptedSandbox::new(Limits::default()));
        let svc = service(sandbox.clone());
        let program = Bytes::from_static(b"sleep 50\nout hi\nexit 3");
        // Both ask while the run is in flight: one run.
        let (raw, pg) = tokio::join!(
            svc.compile_as(program.clone(), Dialect::Raw),
            svc.compile_as(program.clone(), Dialect::Playground)
        );
        assert_eq!(sandbox.runs(), 1);
        assert_eq!(
            text(&raw),
            r#"{"Errors":"","Events":[{"Message":"hi\n","Kind":"stdout","Delay":0}],"Status":3}"#
        );
        assert!(
            text(&pg).contains(r#""Kind":"stdout","Delay":"#),
            "{}",
            text(&pg)
        );
        assert!(!text(&pg).contains(r#""Delay":0"#), "{}", text(&pg));
        assert_eq!((raw.status, pg.status), (200, 200));
        // Then both from the cache, each its own dialect's bytes.
        let raw_hit = svc.compile_as(program.clone(), Dialect::Raw).await;
        let pg_hit = svc.compile_as(program, Dialect::Playground).await;
        assert_eq!(sandbox.runs(), 1);
        assert_eq!(
            (raw_hit.cache, pg_hit.cache),
            (Some(CacheStatus::Hit), Some(CacheStatus::Hit))
        );
        assert_eq!((raw_hit.body, pg_hit.body), (raw.body, pg.body));
    }

    #[tokio::test]
    async fn a_flood_is_cached_with_each_dialects_status() {
        let limits = Limits {
            max_output_bytes: 8,
            ..Limits::default()
        };
        let sandbox = Arc::new(ScriptedSandbox::new(limits));
        let svc = service(sandbox.clone());
        let program = Bytes::from_static(b"out 0123456789");
        let pg = svc.compile_as(program.clone(), Dialect::Playground).await;
        assert_eq!(pg.status, 200);
        assert!(text(&pg).contains("Program output too large."));
        let raw = svc.compile_as(program, Dialect::Raw).await;
        assert_eq!((raw.status, raw.cache), (400, Some(CacheStatus::Hit)));
        assert_eq!(sandbox.runs(), 1);
    }

    #[tokio::test]
    async fn too_large_programs_are_answered_in_their_dialect() {
        let sandbox = Arc::new(ScriptedSandbox::new(Limits::default()));
        let svc = service(sandbox.clone());
        let big = Bytes::from(vec![b'#'; 101]);
        assert_eq!(svc.compile_as(big.clone(), Dialect::Raw).await.status, 400);
        let pg = svc.compile_as(big, Dialect::Playground).await;
        assert_eq!(
            (pg.status, text(&pg)),
            (
                200,
                r#"{"Errors":"Program too large.","Events":null,"Status":0}"#
            )
        );
        assert_eq!(sandbox.runs(), 0);
    }
}
