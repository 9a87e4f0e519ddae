//! The fast tier: everything above the sandbox — cache, single flight, admission and its 503,
//! the answer table, drain, metrics — through the real HTTP server, on the scripted in-memory
//! backend. No root, no Docker, no bubblewrap; seconds. The real backends' suites prove the same
//! contract against real sandboxes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestDaemon, config};
use compilerd::config::{Backend, Config};
use compilerd::metrics::Metrics;
use compilerd::sandbox::Sandbox;
use compilerd::sandbox::scripted::ScriptedSandbox;

struct Fast {
    d: TestDaemon,
    sb: Arc<ScriptedSandbox>,
}

fn fast_config() -> Config {
    let mut c = config(Backend::Bwrap);
    c.limits.timeout = Duration::from_millis(300);
    c.limits.max_output_bytes = 64;
    c
}

async fn start(c: Config) -> Fast {
    let sb = Arc::new(ScriptedSandbox::new(c.limits.clone()));
    let dyn_sb: Arc<dyn Sandbox> = sb.clone();
    let d = TestDaemon::start_with(c, dyn_sb, Arc::new(Metrics::new())).await;
    Fast { d, sb }
}

#[tokio::test]
async fn a_second_identical_program_is_a_hit_and_never_runs() {
    let f = start(fast_config()).await;
    let a = f.d.compile("out hi\nexit 3").await;
    assert_eq!(
        (a.status, a.header("x-cache")),
        (200, Some("MISS")),
        "{}",
        a.text
    );
    assert_eq!(a.json["Status"], 3);
    assert_eq!(a.output(), "hi\n");
    let b = f.d.compile("out hi\nexit 3").await;
    assert_eq!(b.header("x-cache"), Some("HIT"));
    assert_eq!(b.text, a.text);
    assert_eq!(f.sb.runs(), 1);
    assert_eq!(
        f.d.metric("compilerd_runs_total{language=\"default\",outcome=\"exit_nonzero\"}"),
        1.0
    );
    f.d.stop().await;
}

#[tokio::test]
async fn identical_programs_in_flight_share_one_run() {
    let f = start(fast_config()).await;
    let replies: Vec<_> = (0..5)
        .map(|_| f.d.spawn_compile("out shared\nsleep 100"))
        .collect();
    let mut bodies = Vec::new();
    for r in replies {
        bodies.push(r.await.unwrap().text);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(f.sb.runs(), 1);
    f.d.stop().await;
}

#[tokio::test]
async fn a_full_queue_is_refused_with_retry_after_and_nothing_runs() {
    let mut c = fast_config();
    c.max_concurrent_runs = 1;
    c.max_queued = 1;
    let f = start(c).await;
    let running = f.d.spawn_compile("hang\nout 1");
    f.d.wait_metric("compilerd_runs_in_flight", |n| n == 1.0)
        .await;
    let queued = f.d.spawn_compile("hang\nout 2");
    f.d.wait_metric("compilerd_runs_queued", |n| n == 1.0).await;
    let refused = f.d.compile("hang\nout 3").await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.errors().contains("busy"), "{}", refused.text);
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200);
    assert_eq!(f.sb.runs(), 2);
    f.d.stop().await;
}

#[tokio::test]
async fn each_outcome_gets_its_row_of_the_table() {
    let f = start(fast_config()).await;
    let timeout = f.d.compile("out before\nhang").await;
    assert_eq!(timeout.status, 200);
    assert!(timeout.output().starts_with("before\n"), "{}", timeout.text);
    let oom = f.d.compile("oom").await;
    assert_eq!(oom.status, 200);
    assert!(oom.output().contains("memory"), "{}", oom.text);
    let flood = f.d.compile("out 0123456789012345678901234567890123456789\nout 0123456789012345678901234567890123456789").await;
    assert_eq!(
        flood.errors(),
        "Program output too large.",
        "{}",
        flood.text
    );
    let failed = f.d.compile("fail").await;
    assert_eq!(failed.status, 503, "{}", failed.text);
    assert!(
        failed.errors().starts_with("Sandbox failed"),
        "{}",
        failed.text
    );
    // Only the flood's answer is deterministic enough to keep.
    for program in ["out before\nhang", "oom", "fail"] {
        assert_eq!(f.d.compile(program).await.header("x-cache"), Some("MISS"));
    }
    assert_eq!(f.sb.runs(), 7);
    for outcome in ["timeout", "oom", "output_too_large", "sandbox_error"] {
        let series = format!("compilerd_runs_total{{language=\"default\",outcome=\"{outcome}\"}}");
        assert!(f.d.metric(&series) >= 1.0, "{series}");
    }
    f.d.stop().await;
}

#[tokio::test]
async fn the_drain_answers_the_run_in_flight() {
    let f = start(fast_config()).await;
    let slow = f.d.spawn_compile("sleep 150\nout late");
    f.d.wait_metric("compilerd_runs_in_flight", |n| n == 1.0)
        .await;
    f.d.stops.request();
    let r = slow.await.unwrap();
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "late\n"),
        "{}",
        r.text
    );
    f.d.stop().await;
}

#[tokio::test]
async fn healthz_fails_first_in_lameduck() {
    let mut c = fast_config();
    c.drain = Duration::from_secs(30);
    let f = start(c).await;
    let url = f.d.url("/healthz");
    assert_eq!(f.d.client.get(&url).send().await.unwrap().status(), 200);
    f.d.stops.request();
    f.d.wait_metric("compilerd_lameduck", |v| v == 1.0).await;
    assert_eq!(f.d.client.get(&url).send().await.unwrap().status(), 503);
    // Still served during the drain.
    assert_eq!(f.d.compile("out still").await.output(), "still\n");
    f.d.stop().await;
}
