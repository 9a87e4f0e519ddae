//! Events the request path reports, so that the cache, admission and sandbox code never import
//! prometheus. `metrics::Metrics` implements this; tests and embedders can pass `NoHooks`.

use std::time::Duration;

/// What became of one run, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunResult {
    Ok,
    ExitNonzero,
    Timeout,
    OutputTooLarge,
    Oom,
    SandboxError,
}

impl RunResult {
    pub const ALL: [RunResult; 6] = [
        RunResult::Ok,
        RunResult::ExitNonzero,
        RunResult::Timeout,
        RunResult::OutputTooLarge,
        RunResult::Oom,
        RunResult::SandboxError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::ExitNonzero => "exit_nonzero",
            RunResult::Timeout => "timeout",
            RunResult::OutputTooLarge => "output_too_large",
            RunResult::Oom => "oom",
            RunResult::SandboxError => "sandbox_error",
        }
    }
}

/// What one operation on the shared cache tier came to, as a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SharedOutcome {
    /// A lookup found a valid value.
    Hit,
    /// A lookup found nothing.
    Miss,
    /// A write was stored.
    Stored,
    /// Not attempted: the tier is marked down (or, for writes, the answer is too large).
    Skipped,
    /// A write did not fit in the bounded queue of writes.
    Dropped,
    /// No answer within the time budget.
    Timeout,
    /// Redis answered with an error, or the connection failed.
    Error,
    /// A value was found but failed validation (size, format); it is ignored.
    Invalid,
}

impl SharedOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SharedOutcome::Hit => "hit",
            SharedOutcome::Miss => "miss",
            SharedOutcome::Stored => "stored",
            SharedOutcome::Skipped => "skipped",
            SharedOutcome::Dropped => "dropped",
            SharedOutcome::Timeout => "timeout",
            SharedOutcome::Error => "error",
            SharedOutcome::Invalid => "invalid",
        }
    }

    /// Whether Redis did its part (a miss and a refused value are Redis answering).
    pub fn answered(self) -> bool {
        matches!(
            self,
            SharedOutcome::Hit
                | SharedOutcome::Miss
                | SharedOutcome::Stored
                | SharedOutcome::Invalid
        )
    }
}

/// Every method has a no-op default so that an implementor only writes what it needs.
pub trait Hooks: Send + Sync + 'static {
    fn cache_lookup(&self, _hit: bool) {}
    fn cache_evicted(&self, _entries: u64) {}
    fn cache_size(&self, _entries: usize, _bytes: usize) {}
    fn program_too_large(&self) {}
    /// A request refused because its `Origin` is not on the `--allow-origin` list.
    fn origin_refused(&self) {}
    fn overload_rejected(&self) {}
    fn runs_in_flight(&self, _n: usize) {}
    fn runs_queued(&self, _n: usize) {}
    /// `language` is a configured language's name (a bounded label).
    fn run_finished(&self, _language: &str, _result: RunResult, _duration: Duration) {}
    /// `kind` is one of `SandboxErrorKind::as_str`'s values.
    fn sandbox_error(&self, _kind: &'static str) {}
    fn request_finished(&self, _handler: &'static str, _code: u16, _duration: Duration) {}
    fn lameduck(&self, _on: bool) {}
    /// When the self-halt is due, as seconds since the Unix epoch; `None`: no halt is scheduled.
    fn halt_scheduled(&self, _at_unix_seconds: Option<u64>) {}
    /// Pre-started containers ready to take a program.
    fn pool_ready(&self, _n: usize) {}
    /// Of those, the ones armed for the fastest hand-over (an exec already waiting).
    fn pool_armed(&self, _n: usize) {}
    /// A run found no pre-started container and had to start one itself.
    fn pool_empty(&self) {}
    /// How long it took to create and start one pool container.
    fn pool_refill(&self, _latency: Duration) {}
    /// A run's program is about to go to its container; the run's deadline counts from here, not
    /// from a cold container's start before it. No metric reads it (`pool_empty` counts the cold
    /// starts); an observer can time a run apart from its container's start.
    fn run_handed_over(&self) {}
    /// A client connection was accepted (and counts against `--max-connections`) ...
    fn connection_opened(&self) {}
    /// ... and closed.
    fn connection_closed(&self) {}
    /// A connection refused because `--max-connections` were open.
    fn connection_refused(&self) {}
    /// A shared cache tier is configured.
    fn shared_cache_enabled(&self) {}
    /// The shared tier was marked up or down.
    fn shared_cache_up(&self, _up: bool) {}
    /// One lookup (`write == false`) or write; `latency` is None when Redis was not asked.
    fn shared_cache_op(&self, _write: bool, _outcome: SharedOutcome, _latency: Option<Duration>) {}
    /// The Judge0 queue: submissions queued or running, and how long the oldest has waited.
    fn judge0_queue(&self, _length: usize, _oldest: Duration) {}
    /// A Judge0 submission taken over from a daemon that stopped renewing its claim.
    fn judge0_taken_over(&self) {}
    /// A Judge0 submission judged, by its status's description (`Accepted`, ...).
    fn judge0_verdict(&self, _status: &'static str) {}
}

/// Hooks that record nothing.
pub struct NoHooks;
impl Hooks for NoHooks {}
