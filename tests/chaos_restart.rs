//! Chaos: the real binary killed with SIGKILL in the middle of runs, then started again. The new
//! daemon must sweep every sandbox the dead one left (Docker containers on a private engine, see
//! `common/private_engine.rs`; bubblewrap run cgroups and their processes) and serve within
//! seconds; once it stops in turn, nothing of either is left.

mod common;
#[path = "common/private_engine.rs"]
mod private_engine;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{test_image, test_rootfs};
use private_engine::PrivateEngine;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_compilerd");

/// How soon a restarted daemon must answer a run.
const SERVES_WITHIN: Duration = Duration::from_secs(10);

/// Runs at once when the daemon is killed.
const RUNS: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A number no other process's command line holds: the sleeps of the killed runs carry it.
fn marker(backend: &Backend) -> u32 {
    let n = match backend {
        Backend::Bwrap => 1,
        Backend::Docker(_) => 2,
    };
    8_000_000 + (std::process::id() % 1000) * 10 + n
}

fn with_marker(marker: u32) -> Vec<String> {
    let needle = marker.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.split_whitespace().any(|w| w == needle))
        .collect()
}

/// The directories the daemon (a child of this process, so in its cgroups) makes run cgroups in.
fn cgroup_parents() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut parents = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                if std::path::Path::new(root)
                    .join("cgroup.controllers")
                    .exists()
                {
                    parents.push(PathBuf::from(root).join(rel));
                    break;
                }
            }
        } else if let Some(c) = controllers
            .split(',')
            .find(|c| ["memory", "pids", "cpu"].contains(c))
        {
            parents.push(PathBuf::from("/sys/fs/cgroup").join(c).join(rel));
        }
    }
    parents
}

/// Run cgroups of the daemon with pid `pid`.
fn run_cgroups(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("compilerd-{pid}-");
    cgroup_parents()
        .iter()
        .filter_map(|p| std::fs::read_dir(p).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

enum Backend {
    Bwrap,
    Docker(PrivateEngine),
}

impl Backend {
    fn spawn(&self, port: u16) -> Child {
        let mut cmd = Command::new(BIN);
        cmd.args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--shutdown", "false", "--drain", "0s", "--timeout", "20s"])
            .args(["--max-concurrent-runs", "4", "--log-format", "text"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match self {
            Backend::Bwrap => {
                cmd.args(["--backend", "bwrap", "--rootfs"])
                    .arg(test_rootfs());
            }
            Backend::Docker(engine) => {
                cmd.args(["--backend", "docker", "--pool-size", "2", "--image"])
                    .arg(test_image())
                    .env("DOCKER_HOST", &engine.host);
            }
        }
        cmd.spawn().unwrap()
    }

    /// The owners (`compilerd.owner` labels) of the containers on the engine; empty for bwrap.
    fn container_owners(&self) -> Vec<String> {
        match self {
            Backend::Bwrap => Vec::new(),
            Backend::Docker(engine) => engine
                .docker(&["ps", "-a", "--format", "{{.Label \"compilerd.owner\"}}"])
                .expect("docker ps")
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }
}

fn owned_by(owners: &[String], pid: u32) -> usize {
    owners
        .iter()
        .filter(|o| o.split('/').nth(1) == Some(&pid.to_string()))
        .count()
}

async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn runs_in_flight(base: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("{base}/metrics")).await else {
        return 0.0;
    };
    common::find_metric(
        &r.text().await.unwrap_or_default(),
        "compilerd_runs_in_flight",
    )
    .unwrap_or(0.0)
}

/// Polls until the daemon answers a run with 200; returns how long that took.
async fn first_run(base: &str, limit: Duration) -> Duration {
    let began = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let r = client
            .post(format!("{base}/compile"))
            .body(format!("echo back {}", began.elapsed().as_nanos()))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["Status"], 0, "{body}");
            return began.elapsed();
        }
        assert!(began.elapsed() < limit, "no run answered within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn killed_under_load_then_restarted(backend: Backend) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut dead = backend.spawn(port);
    let dead_pid = dead.id().unwrap();
    first_run(&base, Duration::from_secs(60)).await;

    // Runs that sleep long past the kill, so that their sandboxes are alive when it comes.
    let m = marker(&backend);
    let client = reqwest::Client::new();
    let pending: Vec<_> = (0..RUNS)
        .map(|i| {
            let request = client
                .post(format!("{base}/compile"))
                .body(format!("echo {i}; sleep {m}"));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while runs_in_flight(&base).await < RUNS as f64 {
        assert!(Instant::now() < deadline, "the runs never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("the programs running", Duration::from_secs(10), || {
        with_marker(m).len() >= RUNS
    })
    .await;
    dead.start_kill().unwrap();
    dead.wait().await.unwrap();
    for p in pending {
        assert!(
            p.await.unwrap().is_err(),
            "a run was answered by a dead daemon"
        );
    }
    // What the dead daemon left: its containers (Docker) or its run cgroups (bwrap).
    let left = match &backend {
        Backend::Bwrap => run_cgroups(dead_pid).len(),
        Backend::Docker(_) => owned_by(&backend.container_owners(), dead_pid),
    };
    assert!(
        left > 0,
        "the SIGKILL left nothing to sweep: the test proves nothing"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut new = backend.spawn(port);
    let new_pid = new.id().unwrap();
    first_run(&base, SERVES_WITHIN).await;
    let serving = started.elapsed();
    eprintln!("restarted daemon served its first run after {serving:?} ({left} left to sweep)");
    // Swept by the startup: every sandbox of the dead daemon, and every process it ran.
    assert_eq!(owned_by(&backend.container_owners(), dead_pid), 0);
    assert_eq!(run_cgroups(dead_pid), Vec::<PathBuf>::new());
    wait_until(
        "the killed runs' processes gone",
        Duration::from_secs(10),
        || with_marker(m).is_empty(),
    )
    .await;

    // And the new one leaves nothing when it stops.
    assert_eq!(unsafe { libc::kill(new_pid as i32, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(60), new.wait())
        .await
        .expect("the daemon stops")
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(backend.container_owners(), Vec::<String>::new());
    assert_eq!(run_cgroups(new_pid), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_under_load_then_restarted_bwrap() {
    killed_under_load_then_restarted(Backend::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_under_load_then_restarted_docker() {
    let engine = PrivateEngine::start(&test_rootfs(), &test_image()).await;
    killed_under_load_then_restarted(Backend::Docker(engine)).await;
}
