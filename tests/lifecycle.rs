//! The daemon's life as systemd sees it, with the real binary: socket activation through
//! `systemd-socket-activate`, sd_notify on a socket the test owns, the SIGTERM drain and the
//! randomized self-halt. Runs on the bubblewrap backend, which starts in milliseconds.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::test_rootfs;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_compilerd");

fn base_args() -> Vec<String> {
    let rootfs = test_rootfs().display().to_string();
    [
        "--backend",
        "bwrap",
        "--rootfs",
        &rootfs,
        "--log-format",
        "text",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A port that was free a moment ago, for tools that only take an address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Notify {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Notify {
            socket,
            _dir: dir,
            path,
        }
    }

    /// Blocks until a datagram containing `want` arrives; returns every line seen before it.
    fn wait_for(&self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {want} (saw {seen:?}): {e}"));
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let found = msg.lines().any(|l| l == want);
            seen.extend(msg.lines().map(str::to_string));
            if found {
                return seen;
            }
        }
    }
}

fn spawn(args: &[String], notify: Option<&Notify>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", &n.path);
    }
    cmd.spawn().unwrap()
}

async fn get(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

async fn post(url: &str, body: &'static str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("still running") as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[tokio::test]
async fn serves_on_a_socket_from_systemd_socket_activate() {
    let port = free_port();
    let notify = Notify::new();
    let mut args = vec![
        "-l".to_string(),
        format!("127.0.0.1:{port}"),
        // systemd-socket-activate passes on only the variables it is told to.
        "-E".to_string(),
        format!("NOTIFY_SOCKET={}", notify.path.display()),
        BIN.to_string(),
    ];
    // --address would bind elsewhere: the inherited socket must win.
    args.extend(base_args());
    args.extend(
        [
            "--shutdown",
            "false",
            "--drain",
            "0s",
            "--address",
            "127.0.0.1:1",
        ]
        .map(String::from),
    );
    let mut child = Command::new("systemd-socket-activate")
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("systemd-socket-activate runs (apt-get install systemd)");
    let url = format!("http://127.0.0.1:{port}/compile");
    // The first connection is what starts the daemon; it waits in the socket's backlog meanwhile.
    let (status, body) = loop {
        match reqwest::Client::new()
            .post(&url)
            .body("env; ls /proc/self/fd")
            .send()
            .await
        {
            Ok(r) => break (r.status().as_u16(), r.text().await.unwrap()),
            Err(_) => {
                assert!(child.try_wait().unwrap().is_none(), "socket activator died");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(status, 200, "{body}");
    for leaked in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        assert!(
            !body.contains(leaked),
            "{leaked} reached the sandbox: {body}"
        );
    }
    notify.wait_for("READY=1");
    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn notifies_systemd_and_drains_on_sigterm() {
    let notify = Notify::new();
    let port = free_port();
    let mut args = base_args();
    args.extend(["--shutdown", "false", "--drain", "2s", "--timeout", "5s"].map(String::from));
    args.extend(["--address".into(), format!("127.0.0.1:{port}")]);
    let mut child = spawn(&args, Some(&notify));
    let base = format!("http://127.0.0.1:{port}");

    notify.wait_for("READY=1");
    // READY=1 is only sent once the daemon serves.
    assert_eq!(get(&format!("{base}/healthz")).await, Some(200));
    // The serving line counts the load; nothing runs yet.
    let status = notify.wait_for_status("serving:");
    assert!(
        status.starts_with("serving: 0 running, 0 queued, cache 0 entries"),
        "{status}"
    );

    let running = tokio::spawn({
        let url = format!("{base}/compile");
        async move { post(&url, "sleep 1.5; echo finished").await }
    });
    wait_in_flight(&base).await;
    let term_at = Instant::now();
    sigterm(&child);
    notify.wait_for("STOPPING=1");
    assert_eq!(get(&format!("{base}/healthz")).await, Some(503));
    let (status, body) = running.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("finished\\n"), "{body}");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    let took = term_at.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "drain took {took:?}"
    );
}

#[tokio::test]
async fn a_second_sigterm_cuts_the_drain_short() {
    let notify = Notify::new();
    let port = free_port();
    let mut args = base_args();
    args.extend(["--shutdown", "false", "--drain", "60s"].map(String::from));
    args.extend(["--address".into(), format!("127.0.0.1:{port}")]);
    let mut child = spawn(&args, Some(&notify));
    notify.wait_for("READY=1");
    let started = Instant::now();
    sigterm(&child);
    notify.wait_for("STOPPING=1");
    sigterm(&child);
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn halts_itself_at_a_random_time_after_failing_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("halted");
    let port = free_port();
    let mut args = base_args();
    args.extend(["--shutdown", "true", "--lifetime", "4s", "--drain", "1s"].map(String::from));
    args.extend([
        "--halt-command".into(),
        format!("touch {}", marker.display()),
    ]);
    args.extend(["--address".into(), format!("127.0.0.1:{port}")]);
    let started = SystemTime::now();
    let mut child = spawn(&args, None);
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let mut first_503 = None;
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if first_503.is_none() && get(&healthz).await == Some(503) {
            first_503 = Some(SystemTime::now());
        }
        assert!(
            started.elapsed().unwrap() < Duration::from_secs(15),
            "never halted"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(exit.success(), "{exit}");
    let halted_at = std::fs::metadata(&marker)
        .expect("halt command ran")
        .modified()
        .unwrap();
    let after = halted_at.duration_since(started).unwrap();
    assert!(
        after >= Duration::from_secs(2) && after <= Duration::from_secs(6),
        "halted after {after:?}"
    );
    let lameduck = first_503.expect("/healthz turned 503 before the halt");
    assert!(lameduck <= halted_at);
}

#[tokio::test]
async fn without_a_halt_command_the_exit_status_asks_for_a_poweroff() {
    let port = free_port();
    let mut args = base_args();
    args.extend(["--shutdown", "true", "--lifetime", "1s", "--drain", "0s"].map(String::from));
    args.extend(["--address".into(), format!("127.0.0.1:{port}")]);
    let mut child = spawn(&args, None);
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(3));
}

#[tokio::test]
async fn startup_fails_clearly_without_the_image() {
    let out = Command::new(BIN)
        .args([
            "--backend",
            "docker",
            "--image",
            "compilerd-no-such-image",
            "--shutdown",
            "false",
            "--address",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "text"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compilerd-no-such-image"), "{err}");
}

#[tokio::test]
async fn check_config_validates_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "timeout = \"2s\"\nmemory = \"64MiB\"\nallow-origin = [\"https://a.example\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "timeout = \"soon\"\nmemroy = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memroy") || err.contains("soon"), "{err}");
}

async fn wait_in_flight(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if common::metric_value(&text, "compilerd_runs_in_flight") >= 1.0 {
            return;
        }
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Notify {
    /// Waits for a STATUS= line starting with `prefix`.
    fn wait_for_status(&self, prefix: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.socket.recv(&mut buf).expect("a STATUS= line");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if let Some(line) = msg.lines().find_map(|l| l.strip_prefix("STATUS="))
                && line.starts_with(prefix)
            {
                return line.to_string();
            }
        }
    }
}

/// The binary as a newcomer starts it: no flags but where to listen (and, for the Docker cases,
/// which image), with the engine at `docker_host` (None: the default socket).
struct FirstCommand {
    child: Child,
    notify: Notify,
    base: String,
}

impl FirstCommand {
    fn start(extra: &[&str], docker_host: Option<&str>) -> FirstCommand {
        let notify = Notify::new();
        let port = free_port();
        let mut cmd = Self::command(extra, docker_host);
        cmd.args(["--address", &format!("127.0.0.1:{port}")])
            .env("NOTIFY_SOCKET", &notify.path);
        FirstCommand {
            child: cmd.spawn().unwrap(),
            notify,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn command(extra: &[&str], docker_host: Option<&str>) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .env_remove("DOCKER_HOST");
        if let Some(host) = docker_host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }

    /// Serves: READY=1, a program's answer, and the backend `GET /languages` names.
    async fn serves(&self, want_backend: &str, reason_has: &str) {
        self.notify.wait_for("READY=1");
        let (status, body) = post(&format!("{}/compile", self.base), "echo first; exit 4").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("first\\n") && body.contains("\"Status\":4"),
            "{body}"
        );
        let listing: serde_json::Value = reqwest::get(format!("{}/languages", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lang = &listing[0];
        assert_eq!(lang["backend"], want_backend, "{listing}");
        let reason = lang["backend_reason"].as_str().unwrap();
        assert!(
            reason.starts_with("auto: ") && reason.contains(reason_has),
            "{listing}"
        );
        let status = self.notify.wait_for_status("serving:");
        assert!(
            status.contains(&format!("backend {want_backend} (auto: ")),
            "{status}"
        );
    }

    async fn stop(mut self) {
        sigterm(&self.child);
        self.notify.wait_for("STOPPING=1");
        // A second one cuts the 30 s drain short.
        sigterm(&self.child);
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success(), "{exit}");
    }
}

const NO_ENGINE: &str = "unix:///nonexistent/compilerd-test/docker.sock";

#[tokio::test]
async fn auto_takes_bwrap_when_no_engine_answers() {
    let d = FirstCommand::start(&[], Some(NO_ENGINE));
    d.serves("bwrap", "no Docker engine answers").await;
    d.stop().await;
}

#[tokio::test]
async fn auto_takes_docker_when_the_engine_has_the_image() {
    let d = FirstCommand::start(&["--image", "compilerd-test"], None);
    d.serves("docker", "the Docker engine answers").await;
    d.stop().await;
}

#[tokio::test]
async fn auto_takes_bwrap_when_the_engine_lacks_the_image() {
    let d = FirstCommand::start(&["--image", "compilerd-no-such-image"], None);
    d.serves("bwrap", "has no image compilerd-no-such-image")
        .await;
    d.stop().await;
}

#[tokio::test]
async fn auto_refuses_once_when_neither_backend_can_work() {
    // No engine, and a PATH without bwrap.
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = FirstCommand::command(&["--address", "127.0.0.1:0"], Some(NO_ENGINE));
    cmd.env("PATH", empty.path());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap()
        .unwrap();
    // The exit status of every other startup failure (a sandbox that cannot open).
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "no sandbox backend works on this host",
        "no Docker engine answers",
        "apt-get install -y bubblewrap",
        "scripts/build-image.sh",
    ] {
        assert!(err.contains(want), "{want:?} missing: {err}");
    }
}

#[tokio::test]
async fn no_halt_is_scheduled_unless_asked_for() {
    let d = FirstCommand::start(&[], Some(NO_ENGINE));
    d.notify.wait_for("READY=1");
    let status = d.notify.wait_for_status("serving:");
    assert!(!status.contains("halting"), "{status}");
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric_value(&metrics, "compilerd_halt_time_seconds"),
        0.0,
        "{metrics}"
    );
    d.stop().await;

    // Asked for, it is scheduled within the lifetime and shown.
    let d = FirstCommand::start(&["--shutdown", "true", "--lifetime", "1h"], Some(NO_ENGINE));
    d.notify.wait_for("READY=1");
    let status = d.notify.wait_for_status("serving:");
    assert!(status.contains("halting in"), "{status}");
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = common::metric_value(&metrics, "compilerd_halt_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(at >= now + 1700.0 && at <= now + 3700.0, "{at} vs {now}");
    d.stop().await;
}
