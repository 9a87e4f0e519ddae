//! A Docker engine of the test's own (its own dockerd, containerd, data and socket under a temp
//! dir, in a network namespace of its own with no bridge), which a chaos test may stop and start
//! at will: the machine's shared engine and network are never touched. The busybox test rootfs
//! is imported into it as the test image.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest an engine may take to come up or to go away.
const ENGINE_LIMIT: Duration = Duration::from_secs(90);

pub struct PrivateEngine {
    dir: tempfile::TempDir,
    /// `unix://…/docker.sock`, for bollard and `docker -H`.
    pub host: String,
    dockerd: Option<Child>,
}

impl PrivateEngine {
    /// Starts a private engine and imports the test rootfs into it as `image`.
    pub async fn start(rootfs: &Path, image: &str) -> PrivateEngine {
        let dir = tempfile::Builder::new()
            .prefix("compilerd-engine-")
            .tempdir()
            .expect("a temp dir for the private engine");
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let mut engine = PrivateEngine {
            dir,
            host,
            dockerd: None,
        };
        engine.start_again().await;
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar the test rootfs");
        let imported = Command::new("docker")
            .args([
                "-H",
                &engine.host,
                "import",
                "--change",
                r#"CMD ["/bin/sh"]"#,
                "-",
            ])
            .arg(image)
            .stdin(tar.stdout.take().unwrap())
            .stdout(Stdio::null())
            .status()
            .expect("docker import");
        assert!(tar.wait().unwrap().success(), "tar of {rootfs:?} failed");
        assert!(imported.success(), "importing {rootfs:?} as {image} failed");
        engine
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `docker -H <this engine> ARGS…`'s stdout; None when the command failed.
    pub fn docker(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn up(&self) -> bool {
        self.docker(&["version", "--format", "{{.Server.Version}}"])
            .is_some()
    }

    /// Every container this engine holds, in any state.
    pub fn containers(&self) -> Vec<String> {
        self.docker(&["ps", "-aq"])
            .expect("docker ps on the private engine")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Starts (again) the engine's dockerd; it starts its own containerd under the exec root.
    pub async fn start_again(&mut self) {
        assert!(self.dockerd.is_none(), "the private engine runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))
            .unwrap();
        // In a network namespace of its own: an engine without a bridge deletes the bridge
        // interface `docker0` of the namespace it runs in, which in the host's would cut the
        // machine's own engine off its default network. Its unix socket is a file, reachable
        // from any namespace. `unshare` execs dockerd, so the child is dockerd itself.
        let child = Command::new("unshare")
            .args(["--net", "--", "dockerd"])
            .arg("--data-root")
            .arg(self.path("data"))
            .arg("--exec-root")
            .arg(self.path("exec"))
            .arg("--pidfile")
            .arg(self.path("docker.pid"))
            .args(["--host", &self.host])
            // And nothing of the network setup a bridge needs, not even in its own namespace.
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .args([
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a private dockerd");
        self.dockerd = Some(child);
        let began = Instant::now();
        while !self.up() {
            if let Some(status) = self.dockerd.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the private dockerd exited ({status}):\n{}",
                    self.log_tail()
                );
            }
            assert!(
                began.elapsed() < ENGINE_LIMIT,
                "the private dockerd did not come up:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the engine as its service manager would (SIGTERM: it stops its containers, then
    /// exits) and waits until it is gone.
    pub async fn stop(&mut self) {
        let mut child = self.dockerd.take().expect("the private engine runs");
        terminate(&child);
        let began = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                began.elapsed() < ENGINE_LIMIT,
                "the private dockerd did not stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The running dockerd's network namespace (`net:[INODE]`).
    pub fn network_namespace(&self) -> String {
        let pid = self.dockerd.as_ref().expect("the private engine runs").id();
        network_namespace(&format!("/proc/{pid}/ns/net"))
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The network namespace `link` (a `/proc/PID/ns/net`) names, e.g. `net:[4026531840]`.
pub fn network_namespace(link: &str) -> String {
    std::fs::read_link(link)
        .unwrap_or_else(|e| panic!("{link}: {e}"))
        .display()
        .to_string()
}

/// This process's network interfaces: `NAME` for each link and `NAME ADDRESS` for each of its
/// addresses, as `ip -o link` and `ip -o addr` list them.
pub fn interfaces() -> std::collections::BTreeSet<String> {
    let ip = |what: &str| {
        let out = Command::new("ip")
            .args(["-o", what])
            .output()
            .expect("ip (iproute2)");
        assert!(out.status.success(), "ip -o {what} failed");
        String::from_utf8(out.stdout).unwrap()
    };
    let mut found = std::collections::BTreeSet::new();
    for line in ip("link").lines() {
        // "5: docker0: <…> …" and "7: veth1@if6: <…> …"
        if let Some(name) = line.split(": ").nth(1) {
            found.insert(name.split('@').next().unwrap().to_owned());
        }
    }
    for line in ip("addr").lines() {
        // "5: docker0    inet 172.17.0.1/16 brd … scope global docker0\ …"
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, name, _family, address, ..] = fields[..] {
            found.insert(format!("{name} {address}"));
        }
    }
    found
}

fn terminate(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    let sent = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        // Blocking, once, at the end of a test: the engine must be gone (and have unmounted its
        // containers' layers) before its directory is removed.
        if let Some(mut child) = self.dockerd.take() {
            terminate(&child);
            let _ = child.wait();
        }
        // Layers a failed test left mounted would make the directory's removal fail.
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.path("data"))
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.path("exec"))
            .stderr(Stdio::null())
            .status();
    }
}
