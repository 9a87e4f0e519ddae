//! Chaos on the host of the bubblewrap backend, with the real binary: bwrap gone at run time, and
//! the cgroup tree turned read-only under a running daemon. Each must give clear 503s and a clear
//! log line while it lasts, and runs must succeed again once it is fixed, without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::test_rootfs;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_compilerd");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts the binary on bwrap; `wrap` may put a command in front of it (e.g. `unshare`), and
    /// `path` replaces its PATH.
    async fn start(wrap: &[&str], path: Option<&Path>) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let (program, before) = match wrap.split_first() {
            Some((first, rest)) => (first.to_string(), rest.to_vec()),
            None => (BIN.to_owned(), Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(before);
        if !wrap.is_empty() {
            cmd.arg(BIN);
        }
        cmd.args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--backend", "bwrap", "--rootfs"])
            .arg(test_rootfs())
            // Each run makes its sandbox on the request path, where these faults strike; a
            // pre-spawned one would serve the first runs after the fault (the pool's own
            // failures are tested in bwrap_sandbox.rs).
            .args(["--pool-size", "0"])
            .args([
                "--shutdown",
                "false",
                "--drain",
                "0s",
                "--log-format",
                "text",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .kill_on_drop(true);
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn().unwrap();
        let d = Daemon {
            child,
            base,
            log,
            _dir: dir,
        };
        let began = Instant::now();
        while reqwest::get(format!("{}/healthz", d.base)).await.is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "the daemon did not start:\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn compile(&self, program: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/compile", self.base))
            .body(program.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// A fresh program (never a cache hit) that must run fine.
    async fn runs(&self, tag: &str) {
        let (status, body) = self.compile(&format!("echo {tag}")).await;
        assert_eq!(status, 200, "{body}\n{}", self.log());
        assert_eq!(body["Events"][0]["Message"], format!("{tag}\n"));
    }

    /// A fresh program answered 503 `Sandbox failed: the sandbox could not be started.` (the
    /// client learns the kind only), and an ERROR log line with `says` in its details.
    async fn fails(&self, tag: &str, says: &str) {
        let (status, body) = self.compile(&format!("echo {tag}")).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body["Errors"], "Sandbox failed: the sandbox could not be started.",
            "{body}"
        );
        let log = self.log();
        assert!(
            log.lines()
                .any(|l| l.contains("sandbox failed") && l.contains(says)),
            "no log line says {says:?}:\n{log}"
        );
    }

    async fn stop(mut self) {
        let pid = self.child.id().unwrap() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the daemon stops")
            .unwrap();
        assert!(status.success(), "{status}\n{}", self.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_missing_at_run_time() {
    let bin = tempfile::tempdir().unwrap();
    let bwrap = bin.path().join("bwrap");
    std::fs::copy("/usr/bin/bwrap", &bwrap).expect("bubblewrap installed at /usr/bin/bwrap");
    let d = Daemon::start(&[], Some(bin.path())).await;
    d.runs("before").await;

    std::fs::remove_file(&bwrap).unwrap();
    d.fails("gone-1", "cannot start").await;
    d.fails("gone-2", &bwrap.display().to_string()).await;
    let health = reqwest::get(format!("{}/healthz", d.base)).await.unwrap();
    assert_eq!(health.status(), 200);

    std::fs::copy("/usr/bin/bwrap", &bwrap).unwrap();
    d.runs("after").await;
    d.stop().await;
}

/// The daemon's own cgroup directories (memory, pids, cpu; or the v2 one), as the daemon, a
/// child of this process, will find them.
fn cgroup_parents() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut parents = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                if Path::new(root).join("cgroup.controllers").exists() {
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

/// `mount -o remount,bind,MODE DIR` for each dir, inside the mount namespace of `pid`.
fn remount(pid: u32, dirs: &[PathBuf], mode: &str) {
    for dir in dirs {
        let ok = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "mount", "-o"])
            .arg(format!("remount,bind,{mode}"))
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {dir:?} {mode}");
    }
}

/// The cgroup tree read-only under a running daemon. The daemon runs in a mount namespace of its
/// own, where each of its cgroup directories is bind-mounted onto itself, so that the test can
/// turn exactly those read-only for it alone (root ignores permission bits; the machine's other
/// users of the tree are not touched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_tree_read_only_at_run_time() {
    let dirs = cgroup_parents();
    assert!(!dirs.is_empty());
    let binds: Vec<String> = dirs
        .iter()
        .map(|d| format!("mount --bind '{0}' '{0}'", d.display()))
        .collect();
    let script = format!("{} && exec \"$@\"", binds.join(" && "));
    let wrap = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ];
    let d = Daemon::start(&wrap, None).await;
    let pid = d.child.id().unwrap();
    d.runs("before").await;

    remount(pid, &dirs, "ro");
    d.fails("ro-1", "cgroup").await;
    d.fails("ro-2", "Read-only file system").await;

    remount(pid, &dirs, "rw");
    d.runs("after").await;
    d.stop().await;
    // Nothing of its runs is left in the real tree.
    for dir in &dirs {
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("compilerd-{pid}-")))
            .collect();
        assert!(left.is_empty(), "run cgroups left in {dir:?}: {left:?}");
    }
}
