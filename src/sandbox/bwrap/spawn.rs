//! Starting bwrap: through the relay's launch mode (`relay/launch.c`), and on one thread.
//!
//! What the process must do before it becomes bwrap (join the run's cgroups, so the whole run is
//! accounted from its first instruction; mark every inherited descriptor above stderr
//! close-on-exec, since a socket fd passed in by systemd is not; lower its rlimits; offer itself
//! first to the OOM killer; drop root to the sandbox's host user; ask to be killed when the
//! daemon dies) is done by the launcher, a static program of ours, instead of in a forked child
//! of the daemon. A command with no code to run between fork and exec is started with
//! posix_spawn, a vfork, which neither copies the daemon's page tables nor leaves its memory
//! copy-on-write behind it, however large its cache has grown.
//!
//! Spawning happens on one dedicated thread that lives as long as the process: the parent-death
//! signal fires when the *thread* that started the process exits, and a runtime's worker or
//! blocking thread may exit while a run is still going.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

#[cfg(target_env = "gnu")]
pub(super) type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(super) type Resource = libc::c_int;

/// What the launcher does before it execs bwrap.
#[derive(Debug)]
pub(super) struct Launch<'a> {
    /// `cgroup.procs` of each of the run's cgroups.
    pub cgroup_procs: Vec<PathBuf>,
    pub rlimits: Vec<(Resource, libc::rlim_t)>,
    /// Host uid and gid to switch to when the daemon runs as root.
    pub drop_to: Option<(libc::uid_t, libc::gid_t)>,
    /// Descriptors that bwrap inherits, each a fresh memfd holding these bytes (see `DataFd`).
    pub data_fds: &'a [DataFd],
}

/// A descriptor number bwrap finds open, and what it reads there. The launcher makes it (a memfd
/// per spawn, so that no two spawns share an offset and the daemon passes none of its own); the
/// bytes travel on its command line, spelled in hex once when the sandbox is made.
#[derive(Debug)]
pub(super) struct DataFd {
    pub fd: i32,
    hex: String,
}

impl DataFd {
    pub(super) fn new(fd: i32, bytes: &[u8]) -> DataFd {
        use std::fmt::Write;
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        DataFd { fd, hex }
    }
}

impl Launch<'_> {
    /// The command that makes this setup and then runs `program` with `args`.
    pub(super) fn command(&self, launcher: &Path, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = Command::new(launcher);
        cmd.arg("--launch")
            .arg("--parent")
            .arg(std::process::id().to_string());
        for procs in &self.cgroup_procs {
            cmd.arg("--cgroup").arg(procs);
        }
        for &(resource, value) in &self.rlimits {
            cmd.arg("--rlimit").arg(format!("{resource}:{value}"));
        }
        if let Some((uid, gid)) = self.drop_to {
            cmd.arg("--user").arg(format!("{uid}:{gid}"));
        }
        for data in self.data_fds {
            cmd.arg("--data-fd")
                .arg(format!("{}:{}", data.fd, data.hex));
        }
        cmd.arg("--").arg(program).args(args);
        cmd
    }
}

struct SpawnRequest {
    command: Command,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

fn forker() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    static FORKER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    FORKER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("compilerd-bwrap-fork".into())
                .spawn(move || {
                    for mut req in rx {
                        // The child is registered with the caller's runtime, which reaps it.
                        let _guard = req.runtime.enter();
                        let _ = req.reply.send(req.command.spawn());
                    }
                })
                .ok()?;
            Some(tx)
        })
        .as_ref()
}

/// Spawns `command` with piped stdio on the fork thread; the child belongs to the current runtime.
pub(super) async fn spawn(mut command: Command) -> io::Result<Child> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (reply, answer) = oneshot::channel();
    let req = SpawnRequest {
        command,
        runtime: Handle::current(),
        reply,
    };
    forker()
        .ok_or_else(|| io::Error::other("cannot start the bwrap fork thread"))?
        .send(req)
        .map_err(|_| io::Error::other("the bwrap fork thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the bwrap fork thread dropped a request"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_fds_travel_as_hex_on_the_launchers_command_line() {
        let data = [DataFd::new(3, &[0x00, 0x0a, 0xff])];
        let launch = Launch {
            cgroup_procs: Vec::new(),
            rlimits: Vec::new(),
            drop_to: None,
            data_fds: &data,
        };
        let cmd = launch.command(Path::new("/relay"), Path::new("/bwrap"), &["-x".into()]);
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--data-fd").unwrap();
        assert_eq!(args[at + 1], "3:000aff");
        assert_eq!(&args[args.len() - 3..], ["--", "/bwrap", "-x"]);
    }
}
