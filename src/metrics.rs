//! Prometheus metrics on a registry the daemon owns (never the global default one), so tests can
//! build several daemons in one process. Everything is fed through `Hooks`: the cache, admission
//! and sandbox code never see a prometheus type.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::hooks::{Hooks, RunResult};
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
    pool_ready: IntGauge,
    pool_armed: IntGauge,
    pool_empty: IntCounter,
    pool_refill: Histogram,
}

/// The handlers `requests_total` and `request_duration_seconds` are labelled with.
const HANDLERS: [&str; 6] = ["compile", "socket", "ui", "healthz", "metrics", "other"];

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
            memory_limit_kills: reg!(counter(
                "compilerd_memory_limit_kills_total",
                "Runs killed by their memory limit."
            )),
            runs: reg!(
                IntCounterVec::new(
                    Opts::new("compilerd_runs_total", "Finished runs by outcome."),
                    &["outcome"]
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
        for r in RunResult::ALL {
            m.runs.with_label_values(&[r.as_str()]);
        }
        for k in SandboxErrorKind::ALL {
            m.sandbox_errors.with_label_values(&[k.as_str()]);
        }
        for h in HANDLERS {
            m.request_duration.with_label_values(&[h]);
        }
        m
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
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
    fn overload_rejected(&self) {
        self.overload_rejections.inc();
    }
    fn runs_in_flight(&self, n: usize) {
        self.runs_in_flight.set(n as i64);
    }
    fn runs_queued(&self, n: usize) {
        self.runs_queued.set(n as i64);
    }
    fn run_finished(&self, result: RunResult, duration: Duration) {
        self.runs.with_label_values(&[result.as_str()]).inc();
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
        m.run_finished(RunResult::Timeout, Duration::from_millis(3500));
        m.run_finished(RunResult::Oom, Duration::from_millis(10));
        let text = m.render();
        assert!(text.contains("compilerd_run_timeouts_total 1"), "{text}");
        assert!(text.contains("compilerd_memory_limit_kills_total 1"));
        assert!(text.contains("compilerd_runs_total{outcome=\"timeout\"} 1"));
        assert!(text.contains("compilerd_runs_total{outcome=\"ok\"} 0"));
        assert!(text.contains("compilerd_build_info{version="));
    }
}
