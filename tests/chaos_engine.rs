//! Chaos: the Docker engine stopped under load, then started again. The engine is a private one
//! (its own dockerd under a temp dir, see `common::private_engine`), so this runs in a plain
//! `cargo test` without disturbing the machine's engine or any other test.
//!
//! What it asks: while the engine is down every request is answered within a bounded time (a run's
//! answer, or 503 `Sandbox failed`), never held until the client gives up, and /healthz stays 200
//! (see README: the daemon is healthy, its engine is not); when the engine is back the pool refills
//! and runs succeed without restarting compilerd; after compilerd stops, the engine holds no
//! container at all (removals that failed while it was down included).

mod common;
#[path = "common/private_engine.rs"]
mod private_engine;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestDaemon, config, test_image, test_rootfs};
use compilerd::config::Backend;
use compilerd::hooks::Hooks;
use compilerd::metrics::Metrics;
use compilerd::sandbox::SandboxErrorKind;
use compilerd::sandbox::docker::{DockerOptions, DockerSandbox};
use private_engine::{PrivateEngine, interfaces, network_namespace};

/// Longest a request may take while the engine goes away.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

const POOL: usize = 2;

async fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sandbox_errors(d: &TestDaemon) -> f64 {
    SandboxErrorKind::ALL
        .iter()
        .map(|k| {
            d.metric(&format!(
                "compilerd_sandbox_errors_total{{kind=\"{}\"}}",
                k.as_str()
            ))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_stopped_under_load_then_back() {
    let mut engine = PrivateEngine::start(&test_rootfs(), &test_image()).await;
    let mut cfg = config(Backend::Docker);
    cfg.pool_size = POOL;
    let metrics = Arc::new(Metrics::new());
    let hooks: Arc<dyn Hooks> = metrics.clone();
    let sandbox = DockerSandbox::connect_to(
        &engine.host,
        DockerOptions::new(test_image(), POOL),
        cfg.limits.clone(),
        hooks,
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.message));
    let d = Arc::new(TestDaemon::start_with(cfg, Arc::new(sandbox), metrics).await);
    assert_eq!(d.compile("echo before").await.output(), "before\n");

    // Eight clients send distinct programs in a loop; each answer is checked as it comes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (d, stop) = (d.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            let mut failed = 0u32;
            let mut slowest_failure = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let r = tokio::time::timeout(ANSWER_WITHIN, d.compile(format!("echo {c}-{n}")))
                    .await
                    .unwrap_or_else(|_| panic!("a request was held past {ANSWER_WITHIN:?}"));
                match r.status {
                    200 => assert_eq!(r.output(), format!("{c}-{n}\n")),
                    503 => {
                        assert!(
                            r.errors().starts_with("Sandbox failed")
                                || r.errors().starts_with("Server busy"),
                            "{}",
                            r.text
                        );
                        failed += 1;
                        slowest_failure = slowest_failure.max(started.elapsed());
                    }
                    other => panic!("{other}: {}", r.text),
                }
                assert!(started.elapsed() < ANSWER_WITHIN);
            }
            (failed, slowest_failure)
        }));
    }
    d.wait_metric(
        "compilerd_runs_total{language=\"default\",outcome=\"ok\"}",
        |n| n >= 8.0,
    )
    .await;
    engine.stop().await;
    // Requests keep coming while the engine is down.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sandbox_errors(&d) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no run failed while the engine was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The daemon itself is healthy: it answers, fast and clearly (README, `GET /healthz`).
    let health = d.client.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // Let the clients meet the dead engine for a while: refills and removals fail meanwhile.
    let failed_before = sandbox_errors(&d);
    wait_for(
        "more runs failing on the dead engine",
        Duration::from_secs(30),
        || sandbox_errors(&d) >= failed_before + 4.0,
    )
    .await;
    engine.start_again().await;

    // Back: runs succeed again without restarting compilerd.
    let back = Instant::now();
    loop {
        let r = d
            .compile(format!("echo back {}", back.elapsed().as_nanos()))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "runs never recovered: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut failed, mut slowest) = (0, Duration::ZERO);
    for c in clients {
        let (f, s) = c.await.expect("a client saw a wrong answer");
        failed += f;
        slowest = slowest.max(s);
    }
    assert!(failed > 0, "no request noticed the engine was gone");
    eprintln!("{failed} requests failed during the outage, the slowest 503 took {slowest:?}");

    // The pool refills by itself.
    d.wait_metric("compilerd_pool_ready", |n| n >= POOL as f64)
        .await;
    // Containers whose removal failed while the engine was down are retried once it is back:
    // the engine holds no more than the pool (and runs that may still be finishing) while the
    // daemon still runs.
    wait_for(
        "the containers of the outage removed while the daemon runs",
        Duration::from_secs(30),
        || engine.containers().len() <= POOL,
    )
    .await;

    let d = Arc::try_unwrap(d).unwrap_or_else(|_| panic!("a client still holds the daemon"));
    d.stop().await;
    // Nothing of it left.
    let left = engine.containers();
    assert!(
        left.is_empty(),
        "containers left on the engine: {left:?}\n{}",
        engine.docker(&["ps", "-a"]).unwrap_or_default()
    );
}

/// The image removed (`docker rmi -f`) while the pool holds containers of it: the pool's
/// containers still serve, then runs get 503 `Sandbox failed: the sandbox image is missing.`; once the
/// image is back the pool refills and runs succeed, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_removed_while_pooled_then_back() {
    let engine = PrivateEngine::start(&test_rootfs(), &test_image()).await;
    let mut cfg = config(Backend::Docker);
    cfg.pool_size = POOL;
    let metrics = Arc::new(Metrics::new());
    let hooks: Arc<dyn Hooks> = metrics.clone();
    let sandbox = DockerSandbox::connect_to(
        &engine.host,
        DockerOptions::new(test_image(), POOL),
        cfg.limits.clone(),
        hooks,
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.message));
    let d = TestDaemon::start_with(cfg, Arc::new(sandbox), metrics).await;
    d.wait_metric("compilerd_pool_ready", |n| n >= POOL as f64)
        .await;

    // -f: untagged although containers use it; new containers cannot be created from the name.
    engine
        .docker(&["rmi", "-f", &test_image()])
        .expect("docker rmi -f");
    let mut served = 0;
    let refused = loop {
        let r = d.compile(format!("echo pooled {served}")).await;
        match r.status {
            200 => {
                assert_eq!(r.output(), format!("pooled {served}\n"));
                served += 1;
                assert!(served <= POOL, "ran more programs than the pool held");
            }
            503 => break r,
            other => panic!("{other}: {}", r.text),
        }
    };
    // The client gets the kind; the log gets the details (image name, engine).
    assert_eq!(
        refused.errors(),
        "Sandbox failed: the sandbox image is missing."
    );
    assert!(d.metric("compilerd_sandbox_errors_total{kind=\"image_missing\"}") >= 1.0);

    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(test_rootfs())
        .args(["-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut import = std::process::Command::new("docker")
        .args([
            "-H",
            &engine.host,
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            "-",
        ])
        .arg(test_image())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());

    let back = Instant::now();
    loop {
        let r = d
            .compile(format!("echo back {}", back.elapsed().as_nanos()))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "runs never recovered: {}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.wait_metric("compilerd_pool_ready", |n| n >= POOL as f64)
        .await;
    d.stop().await;
    assert_eq!(engine.containers(), Vec::<String>::new());
}

/// An engine without a bridge deletes the bridge interface (`docker0`) of the network namespace
/// it runs in: the private engine runs in one of its own, and leaves every interface and address
/// of the host's as it was, through a restart and its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_engine_leaves_the_hosts_network_alone() {
    let before = interfaces();
    assert!(
        before.iter().any(|i| i.starts_with("docker0 ")),
        "the host has no docker0 with an address before the test (something deleted it; \
         restore it: ip link add docker0 type bridge; ip addr add 172.17.0.1/16 dev docker0; \
         ip link set docker0 up): {before:?}"
    );
    let mut engine = PrivateEngine::start(&test_rootfs(), &test_image()).await;
    let host = network_namespace("/proc/self/ns/net");
    assert_ne!(
        engine.network_namespace(),
        host,
        "the private dockerd runs in the host's network namespace"
    );
    engine.stop().await;
    engine.start_again().await;
    assert_ne!(engine.network_namespace(), host);
    drop(engine);
    let after = interfaces();
    let lost: Vec<&String> = before.difference(&after).collect();
    assert!(lost.is_empty(), "the host lost {lost:?}; it has {after:?}");
}
