//! /metrics as Prometheus sees it: the exposition passes `promtool check metrics`, each counter
//! moves by exactly what the request that should move it, and a real Prometheus server scrapes
//! the daemon and answers a query with the expected value.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestDaemon, config, find_metric, metric_value};
use compilerd::config::Backend;

async fn scrape(d: &TestDaemon) -> String {
    let r = d.client.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

/// Scrapes before and after `action` and returns the change of each named series.
async fn deltas<F: std::future::Future<Output = ()>>(
    d: &TestDaemon,
    series: &[&str],
    action: F,
) -> Vec<f64> {
    let before = scrape(d).await;
    action.await;
    let after = scrape(d).await;
    series
        .iter()
        .map(|s| metric_value(&after, s) - find_metric(&before, s).unwrap_or(0.0))
        .collect()
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let d = TestDaemon::start(config(Backend::Bwrap)).await;
    d.compile("echo warm").await;
    let text = scrape(&d).await;
    for name in [
        "compilerd_cache_hits_total",
        "compilerd_cache_misses_total",
        "compilerd_cache_evictions_total",
        "compilerd_cache_entries",
        "compilerd_cache_bytes",
        "compilerd_run_timeouts_total",
        "compilerd_output_too_large_total",
        "compilerd_program_too_large_total",
        "compilerd_origin_refusals_total",
        "compilerd_memory_limit_kills_total",
        "compilerd_runs_total{language=\"default\",outcome=\"ok\"}",
        "compilerd_run_duration_seconds_bucket{le=\"0.001\"}",
        "compilerd_request_duration_seconds_count{handler=\"compile\"}",
        "compilerd_requests_total{code=\"200\",handler=\"compile\"}",
        "compilerd_runs_in_flight",
        "compilerd_runs_queued",
        "compilerd_overload_rejections_total",
        "compilerd_sandbox_errors_total{kind=\"unavailable\"}",
        "compilerd_lameduck",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        metric_value(&text, name);
    }
    assert!(text.contains("compilerd_build_info{version=\""));
    assert!(text.contains("compilerd_run_duration_seconds_bucket{le=\"10\"}"));

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus)");
    use tokio::io::AsyncWriteExt;
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = promtool.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop().await;
}

#[tokio::test]
async fn each_counter_moves_by_exactly_one() {
    let mut c = config(Backend::Bwrap);
    c.max_program_bytes = 100;
    c.limits.timeout = Duration::from_millis(500);
    let d = TestDaemon::start(c).await;
    let hit = "compilerd_cache_hits_total";
    let miss = "compilerd_cache_misses_total";

    let moved = deltas(
        &d,
        &[
            hit,
            miss,
            "compilerd_runs_total{language=\"default\",outcome=\"ok\"}",
        ],
        async {
            d.compile("echo count me").await;
        },
    )
    .await;
    assert_eq!(moved, [0.0, 1.0, 1.0], "a miss");
    let moved = deltas(
        &d,
        &[
            hit,
            miss,
            "compilerd_runs_total{language=\"default\",outcome=\"ok\"}",
        ],
        async {
            assert_eq!(
                d.compile("echo count me").await.header("x-cache"),
                Some("HIT")
            );
        },
    )
    .await;
    assert_eq!(moved, [1.0, 0.0, 0.0], "a hit");
    let moved = deltas(
        &d,
        &[
            "compilerd_run_timeouts_total",
            "compilerd_runs_total{language=\"default\",outcome=\"timeout\"}",
        ],
        async {
            d.compile("sleep 5").await;
        },
    )
    .await;
    assert_eq!(moved, [1.0, 1.0], "a timeout");
    let moved = deltas(
        &d,
        &[
            "compilerd_output_too_large_total",
            "compilerd_runs_total{language=\"default\",outcome=\"output_too_large\"}",
        ],
        async {
            assert_eq!(d.compile("yes").await.status, 400);
        },
    )
    .await;
    assert_eq!(moved, [1.0, 1.0], "an output flood");
    let moved = deltas(&d, &["compilerd_program_too_large_total", miss], async {
        assert_eq!(d.compile("#".repeat(101)).await.status, 400);
    })
    .await;
    assert_eq!(
        moved,
        [1.0, 0.0],
        "a too-large program never reaches the cache"
    );
    let moved = deltas(
        &d,
        &[
            "compilerd_runs_total{language=\"default\",outcome=\"exit_nonzero\"}",
            "compilerd_requests_total{code=\"200\",handler=\"compile\"}",
        ],
        async {
            d.compile("exit 7").await;
        },
    )
    .await;
    assert_eq!(moved, [1.0, 1.0], "a failing program");
    d.stop().await;
}

#[tokio::test]
async fn overload_is_counted() {
    let mut c = config(Backend::Bwrap);
    c.max_concurrent_runs = 1;
    c.max_queued = 0;
    let d = TestDaemon::start(c).await;
    let busy = d.spawn_compile("sleep 1");
    d.wait_metric("compilerd_runs_in_flight", |v| v == 1.0)
        .await;
    let moved = deltas(
        &d,
        &[
            "compilerd_overload_rejections_total",
            "compilerd_requests_total{code=\"503\",handler=\"compile\"}",
        ],
        async {
            assert_eq!(d.compile("echo no room").await.status, 503);
        },
    )
    .await;
    assert_eq!(moved, [1.0, 1.0]);
    assert_eq!(busy.await.unwrap().status, 200);
    d.wait_metric("compilerd_runs_in_flight", |v| v == 0.0)
        .await;
    d.stop().await;
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_daemon() {
    let d = TestDaemon::start(config(Backend::Bwrap)).await;
    d.compile("echo scraped").await;
    d.compile("echo scraped").await;
    d.compile("echo scraped").await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: compilerd\n    static_configs:\n      - targets: ['{}']\n",
            d.addr
        ),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut prom = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus runs (apt-get install prometheus)");
    let query = format!("http://{web}/api/v1/query?query=compilerd_cache_hits_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        if let Ok(r) = reqwest::get(&query).await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(sample) = v["data"]["result"].get(0)
        {
            break sample["value"][1].as_str().unwrap().to_string();
        }
        assert!(prom.try_wait().unwrap().is_none(), "prometheus exited");
        assert!(Instant::now() < deadline, "prometheus never had the series");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(value, "2");
    prom.kill().await.unwrap();
    d.stop().await;
}
