//! Chaos: the Docker engine stopped under load, then started again. This stops the machine's
//! dockerd, so it is ignored by a plain `cargo test` (other tests would lose their engine) and run
//! alone by .ci/run (`cargo test --test chaos_engine -- --ignored`).
//!
//! What it asks: while the engine is down every request is answered within a bounded time (a run's
//! answer, or 503 `Sandbox failed`), never held until the client gives up; when the engine is back
//! the pool refills and runs succeed without restarting compilerd; after compilerd stops, none of
//! its containers is left.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestDaemon, config};
use compilerd::config::Backend;
use compilerd::sandbox::SandboxErrorKind;

/// Longest a request may take while the engine goes away.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

fn engine_up() -> bool {
    Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn systemd_managed() -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", "docker"])
        .status()
        .is_ok_and(|s| s.success())
}

async fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops dockerd (through systemd when it manages it, else by SIGTERM, as .ci/run started it).
async fn stop_engine(systemd: bool) {
    if systemd {
        assert!(
            Command::new("systemctl")
                .args(["stop", "docker.socket", "docker"])
                .status()
                .unwrap()
                .success()
        );
    } else {
        let out = Command::new("pidof").arg("dockerd").output().unwrap();
        let pids = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!pids.is_empty(), "no dockerd to stop");
        for pid in pids.split_whitespace() {
            assert!(
                Command::new("kill")
                    .args(["-TERM", pid])
                    .status()
                    .unwrap()
                    .success()
            );
        }
    }
    wait_for("the engine stopping", Duration::from_secs(60), || {
        !engine_up()
    })
    .await;
}

async fn start_engine(systemd: bool) {
    if systemd {
        assert!(
            Command::new("systemctl")
                .args(["start", "docker"])
                .status()
                .unwrap()
                .success()
        );
    } else {
        let log = std::fs::File::create("/var/log/dockerd.log").unwrap();
        // --fork: setsid returns at once and dockerd lives on in its own session.
        let started = Command::new("setsid")
            .args(["--fork", "dockerd"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .expect("start dockerd");
        assert!(started.success());
    }
    wait_for("the engine starting", Duration::from_secs(90), engine_up).await;
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
#[ignore = "stops and restarts the Docker engine: run alone (.ci/run does)"]
async fn engine_stopped_under_load_then_back() {
    assert!(
        engine_up(),
        "the Docker engine must be running at the start"
    );
    let systemd = systemd_managed();
    let d = Arc::new(TestDaemon::start(config(Backend::Docker)).await);
    assert_eq!(d.compile("echo before").await.output(), "before\n");

    // Eight clients send distinct programs in a loop; each answer is checked as it comes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (d, stop) = (d.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u32;
            let mut failed = 0u32;
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
                    }
                    other => panic!("{other}: {}", r.text),
                }
                assert!(started.elapsed() < ANSWER_WITHIN);
            }
            failed
        }));
    }
    d.wait_metric(
        "compilerd_runs_total{language=\"default\",outcome=\"ok\"}",
        |n| n >= 8.0,
    )
    .await;
    stop_engine(systemd).await;
    // Requests keep coming while the engine is down.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sandbox_errors(&d) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no run failed while the engine was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start_engine(systemd).await;

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
    let mut failed = 0;
    for c in clients {
        failed += c.await.expect("a client saw a wrong answer");
    }
    assert!(failed > 0, "no request noticed the engine was gone");

    let d = Arc::try_unwrap(d).unwrap_or_else(|_| panic!("a client still holds the daemon"));
    d.stop().await;
    // Nothing of it left: containers whose removal failed while the engine was down included.
    let pid = std::process::id();
    wait_for(
        "every container of the daemon removed",
        Duration::from_secs(30),
        || {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-a",
                    "--filter",
                    "label=compilerd.managed",
                    "--format",
                    "{{.Label \"compilerd.owner\"}}",
                ])
                .output()
                .unwrap();
            !String::from_utf8_lossy(&out.stdout).contains(&format!("/{pid}/"))
        },
    )
    .await;
}
