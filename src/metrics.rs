//! Prometheus metrics on a registry the daemon owns (never the global default one), so tests can
//! build several daemons in one process. Everything is fed through `Hooks`: the cache, admission
//! and sandbox code never see a prometheus type.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::hooks::{Hooks, RunResult, SharedOutcome};
use crate::sandbox::SandboxErrorKind;

pub struct Metrics {
    registry: Registry,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    run_timeouts: IntCounter,
    output_too_large: IntCounter,
    program_too_large: IntCounter,
    origin_refusals: IntCounter,
    memory_limit_kills: IntCounter,
    runs: IntCounterVec,
    run_duration: Histogram,
    request_duration: HistogramVec,
    requests: IntCounterVec,
    runs_in_flight: IntGauge,
    runs_queued: IntGauge,
    overload_rejections: IntCounter,
    sandbox_errors: IntCounterVec,
    lameduck: IntGauge,
    halt_at: IntGauge,
    pool_ready: IntGauge,
    pool_armed: IntGauge,
    pool_empty: IntCounter,
    pool_refill: Histogram,
    connections_open: IntGauge,
    connections_refused: IntCounter,
    shared_enabled: IntGauge,
    shared_up: IntGauge,
    shared_hits: IntCounter,
    shared_misses: IntCounter,
    shared_writes: IntCounter,
    shared_skipped: IntCounterVec,
    shared_errors: IntCounterVec,
    shared_latency: HistogramVec,
    judge0_queue_length: IntGauge,
    judge0_oldest: Gauge,
    judge0_taken_over: IntCounter,
    judge0_verdicts: IntCounterVec,
}

/// The handlers `requests_total` and `request_duration_seconds` are labelled with.
const HANDLERS: [&str; 8] = [
    "compile",
    "fmt",
    "languages",
    "socket",
    "ui",
    "healthz",
    "metrics",
    "other",
];

/// Sub-millisecond to a second: a healthy Redis answers in the first buckets, the lookup budget
/// (20 ms by default) sits in the middle, a write's limit at the end.
fn shared_buckets() -> Vec<f64> {
    vec![
        0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
    ]
}

/// The `op` label of the shared-cache series.
fn shared_op(write: bool) -> &'static str {
    if write { "set" } else { "get" }
}

fn buckets() -> Vec<f64> {
    // 1 ms to 10 s, roughly ×2.5 a step: a cache hit, a pooled run and a timeout each land in
    // their own bucket.
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");

        let m = Metrics {
            cache_hits: reg!(counter(
                "compilerd_cache_hits_total",
                "Answers served from the cache."
            )),
            cache_misses: reg!(counter(
                "compilerd_cache_misses_total",
                "Cache lookups that found nothing."
            )),
            cache_evictions: reg!(counter(
                "compilerd_cache_evictions_total",
                "Answers dropped from the cache to stay within its entry or byte budget."
            )),
            cache_entries: reg!(gauge("compilerd_cache_entries", "Answers in the cache.")),
            cache_bytes: reg!(gauge(
                "compilerd_cache_bytes",
                "Bytes the cached answers take."
            )),
            run_timeouts: reg!(counter(
                "compilerd_run_timeouts_total",
                "Runs killed at their deadline."
            )),
            output_too_large: reg!(counter(
                "compilerd_output_too_large_total",
                "Runs killed because their output passed the cap."
            )),
            program_too_large: reg!(counter(
                "compilerd_program_too_large_total",
                "Requests whose program was over the size limit (never run)."
            )),
            origin_refusals: reg!(counter(
                "compilerd_origin_refusals_total",
                "Requests refused (403, never run) because their Origin is not on --allow-origin."
            )),
            memory_limit_kills: reg!(counter(
                "compilerd_memory_limit_kills_total",
                "Runs killed by their memory limit."
            )),
            runs: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "compilerd_runs_total",
                        "Finished runs by language and outcome."
                    ),
                    &["language", "outcome"]
                )
                .expect("valid metric")
            ),
            run_duration: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "compilerd_run_duration_seconds",
                        "Time a run held its sandbox."
                    )
                    .buckets(buckets())
                )
                .expect("valid metric")
            ),
            request_duration: reg!(
                HistogramVec::new(
                    HistogramOpts::new(
                        "compilerd_request_duration_seconds",
                        "Time to answer a request."
                    )
                    .buckets(buckets()),
                    &["handler"]
                )
                .expect("valid metric")
            ),
            requests: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "compilerd_requests_total",
                        "Answered requests by handler and status code."
                    ),
                    &["handler", "code"]
                )
                .expect("valid metric")
            ),
            runs_in_flight: reg!(gauge(
                "compilerd_runs_in_flight",
                "Runs holding a run slot now."
            )),
            runs_queued: reg!(gauge(
                "compilerd_runs_queued",
                "Requests waiting for a run slot now."
            )),
            overload_rejections: reg!(counter(
                "compilerd_overload_rejections_total",
                "Requests turned away with 503 because every slot was busy and the queue full."
            )),
            sandbox_errors: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "compilerd_sandbox_errors_total",
                        "Runs the sandbox could not carry out, by kind."
                    ),
                    &["kind"]
                )
                .expect("valid metric")
            ),
            lameduck: reg!(gauge(
                "compilerd_lameduck",
                "1 while draining: /healthz fails."
            )),
            halt_at: reg!(gauge(
                "compilerd_halt_time_seconds",
                "When this machine halts itself (Unix time); 0: no self-halt is scheduled."
            )),
            pool_ready: reg!(gauge(
                "compilerd_pool_ready",
                "Pre-started sandboxes waiting for a program."
            )),
            pool_armed: reg!(gauge(
                "compilerd_pool_armed",
                "Pre-started sandboxes armed for the fastest hand-over (Docker: an exec waiting)."
            )),
            pool_empty: reg!(counter(
                "compilerd_pool_empty_total",
                "Runs that found no pre-started sandbox and started their own."
            )),
            pool_refill: reg!(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "compilerd_pool_refill_seconds",
                        "Time to create and start one pre-started sandbox."
                    )
                    .buckets(buckets())
                )
                .expect("valid metric")
            ),
            connections_open: reg!(gauge(
                "compilerd_connections_open",
                "Client connections open now."
            )),
            connections_refused: reg!(counter(
                "compilerd_connections_refused_total",
                "Connections answered 503 and closed because --max-connections were open."
            )),
            shared_enabled: reg!(gauge(
                "compilerd_shared_cache_enabled",
                "1 when a shared cache (Redis) is configured."
            )),
            shared_up: reg!(gauge(
                "compilerd_shared_cache_up",
                "1 while the shared cache answers; 0 while it is skipped (down, or not yet reached)."
            )),
            shared_hits: reg!(counter(
                "compilerd_shared_cache_hits_total",
                "Lookups the shared cache answered with a valid answer."
            )),
            shared_misses: reg!(counter(
                "compilerd_shared_cache_misses_total",
                "Lookups the shared cache answered with nothing."
            )),
            shared_writes: reg!(counter(
                "compilerd_shared_cache_writes_total",
                "Answers written to the shared cache."
            )),
            shared_skipped: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "compilerd_shared_cache_skipped_total",
                        "Lookups (get) and writes (set) not sent because the shared cache was down, or the answer too large."
                    ),
                    &["op"]
                )
                .expect("valid metric")
            ),
            shared_errors: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "compilerd_shared_cache_errors_total",
                        "Shared cache operations that failed: timeout, error, invalid (a value that failed validation, ignored), dropped (write queue full)."
                    ),
                    &["op", "kind"]
                )
                .expect("valid metric")
            ),
            shared_latency: reg!(
                HistogramVec::new(
                    HistogramOpts::new(
                        "compilerd_shared_cache_latency_seconds",
                        "Time of the shared cache operations sent to Redis, up to their time limit."
                    )
                    .buckets(shared_buckets()),
                    &["op"]
                )
                .expect("valid metric")
            ),
            judge0_queue_length: reg!(gauge(
                "compilerd_judge0_queue_length",
                "Judge0 submissions queued or running (on Redis: the fleet's)."
            )),
            judge0_oldest: reg!(
                Gauge::new(
                    "compilerd_judge0_queue_oldest_seconds",
                    "How long the oldest Judge0 submission still queued or running has been there."
                )
                .expect("valid metric")
            ),
            judge0_taken_over: reg!(counter(
                "compilerd_judge0_claims_taken_over_total",
                "Judge0 submissions this daemon took over from a daemon that stopped renewing its claim."
            )),
            judge0_verdicts: reg!(
                IntCounterVec::new(
                    Opts::new(
                        "compilerd_judge0_verdicts_total",
                        "Judge0 submissions judged by this daemon, by status."
                    ),
                    &["status"]
                )
                .expect("valid metric")
            ),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "compilerd_build_info",
                "Always 1; its label names the running version.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.registry
            .register(Box::new(build_info))
            .expect("metric names are unique");
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("metric names are unique");
        // Every bounded label value exists from the start, so rate() and alerts see a 0, not a gap.
        for k in SandboxErrorKind::ALL {
            m.sandbox_errors.with_label_values(&[k.as_str()]);
        }
        for h in HANDLERS {
            m.request_duration.with_label_values(&[h]);
        }
        for op in ["get", "set"] {
            m.shared_skipped.with_label_values(&[op]);
            m.shared_latency.with_label_values(&[op]);
            for kind in [SharedOutcome::Timeout, SharedOutcome::Error] {
                m.shared_errors.with_label_values(&[op, kind.as_str()]);
            }
        }
        m.shared_errors
            .with_label_values(&["get", SharedOutcome::Invalid.as_str()]);
        m.shared_errors
            .with_label_values(&["set", SharedOutcome::Dropped.as_str()]);
        for id in 3..=14 {
            let status = crate::judge0::status::Status::from_id(id).description();
            m.judge0_verdicts.with_label_values(&[status]);
        }
        m
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    /// Shows every outcome of each language's runs from the start, at 0, so that rates work
    /// before the first run of each.
    pub fn register_languages<S: AsRef<str>>(&self, languages: &[S]) {
        for language in languages {
            for r in RunResult::ALL {
                self.runs
                    .with_label_values(&[language.as_ref(), r.as_str()]);
            }
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Hooks for Metrics {
    fn cache_lookup(&self, hit: bool) {
        if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        }
        .inc();
    }
    fn cache_evicted(&self, entries: u64) {
        self.cache_evictions.inc_by(entries);
    }
    fn cache_size(&self, entries: usize, bytes: usize) {
        self.cache_entries.set(entries as i64);
        self.cache_bytes.set(bytes as i64);
    }
    fn program_too_large(&self) {
        self.program_too_large.inc();
    }
    fn origin_refused(&self) {
        self.origin_refusals.inc();
    }
    fn overload_rejected(&self) {
        self.overload_rejections.inc();
    }
    fn runs_in_flight(&self, n: usize) {
        self.runs_in_flight.set(n as i64);
    }
    fn runs_queued(&self, n: usize) {
        self.runs_queued.set(n as i64);
    }
    fn run_finished(&self, language: &str, result: RunResult, duration: Duration) {
        self.runs
            .with_label_values(&[language, result.as_str()])
            .inc();
        self.run_duration.observe(duration.as_secs_f64());
        match result {
            RunResult::Timeout => self.run_timeouts.inc(),
            RunResult::OutputTooLarge => self.output_too_large.inc(),
            RunResult::Oom => self.memory_limit_kills.inc(),
            _ => {}
        }
    }
    fn sandbox_error(&self, kind: &'static str) {
        self.sandbox_errors.with_label_values(&[kind]).inc();
    }
    fn request_finished(&self, handler: &'static str, code: u16, duration: Duration) {
        let handler = if HANDLERS.contains(&handler) {
            handler
        } else {
            "other"
        };
        // The code's text from http's static table: `code.to_string()` allocated on every request.
        match http::StatusCode::from_u16(code) {
            Ok(c) => self.requests.with_label_values(&[handler, c.as_str()]),
            Err(_) => self
                .requests
                .with_label_values(&[handler, &code.to_string()]),
        }
        .inc();
        self.request_duration
            .with_label_values(&[handler])
            .observe(duration.as_secs_f64());
    }
    fn lameduck(&self, on: bool) {
        self.lameduck.set(on as i64);
    }
    fn halt_scheduled(&self, at_unix_seconds: Option<u64>) {
        self.halt_at.set(at_unix_seconds.unwrap_or(0) as i64);
    }
    fn pool_ready(&self, n: usize) {
        self.pool_ready.set(n as i64);
    }
    fn pool_armed(&self, n: usize) {
        self.pool_armed.set(n as i64);
    }
    fn pool_empty(&self) {
        self.pool_empty.inc();
    }
    fn pool_refill(&self, latency: Duration) {
        self.pool_refill.observe(latency.as_secs_f64());
    }
    fn connection_opened(&self) {
        self.connections_open.inc();
    }
    fn connection_closed(&self) {
        self.connections_open.dec();
    }
    fn connection_refused(&self) {
        self.connections_refused.inc();
    }
    fn shared_cache_enabled(&self) {
        self.shared_enabled.set(1);
    }
    fn shared_cache_up(&self, up: bool) {
        self.shared_up.set(up as i64);
    }
    fn judge0_queue(&self, length: usize, oldest: Duration) {
        self.judge0_queue_length.set(length as i64);
        self.judge0_oldest.set(oldest.as_secs_f64());
    }
    fn judge0_taken_over(&self) {
        self.judge0_taken_over.inc();
    }
    fn judge0_verdict(&self, status: &'static str) {
        self.judge0_verdicts.with_label_values(&[status]).inc();
    }
    fn shared_cache_op(&self, write: bool, outcome: SharedOutcome, latency: Option<Duration>) {
        let op = shared_op(write);
        if let Some(l) = latency {
            self.shared_latency
                .with_label_values(&[op])
                .observe(l.as_secs_f64());
        }
        match outcome {
            SharedOutcome::Hit => self.shared_hits.inc(),
            SharedOutcome::Miss => self.shared_misses.inc(),
            SharedOutcome::Stored => self.shared_writes.inc(),
            SharedOutcome::Skipped => self.shared_skipped.with_label_values(&[op]).inc(),
            SharedOutcome::Dropped
            | SharedOutcome::Timeout
            | SharedOutcome::Error
            | SharedOutcome::Invalid => self
                .shared_errors
                .with_label_values(&[op, outcome.as_str()])
                .inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_daemons_have_separate_registries() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.cache_lookup(true);
        assert!(a.render().contains("compilerd_cache_hits_total 1"));
        assert!(b.render().contains("compilerd_cache_hits_total 0"));
    }

    #[test]
    fn outcomes_feed_their_counters() {
        let m = Metrics::new();
        m.register_languages(&["go"]);
        m.run_finished("go", RunResult::Timeout, Duration::from_millis(3500));
        m.run_finished("go", RunResult::Oom, Duration::from_millis(10));
        let text = m.render();
        assert!(text.contains("compilerd_run_timeouts_total 1"), "{text}");
        assert!(text.contains("compilerd_memory_limit_kills_total 1"));
        assert!(text.contains("compilerd_runs_total{language=\"go\",outcome=\"timeout\"} 1"));
        assert!(text.contains("compilerd_runs_total{language=\"go\",outcome=\"ok\"} 0"));
        assert!(text.contains("compilerd_build_info{version="));
    }
}
