//! Starting bwrap: what the forked child does before it execs bwrap, and the thread that forks.
//!
//! The child joins the run's cgroups itself (so the whole run is accounted from its first
//! instruction, with no window in which a fork could escape), marks every inherited descriptor
//! above stderr close-on-exec (a socket fd passed in by systemd, say, is not close-on-exec and
//! must never reach a sandbox), lowers its rlimits, offers itself first to the OOM killer, drops
//! root to the sandbox's host user, and asks to be killed when the daemon dies. All of it runs between fork and exec in a multithreaded
//! process, so it only makes async-signal-safe system calls and never allocates.
//!
//! Forking happens on one dedicated thread that lives as long as the process: the parent-death
//! signal fires when the *thread* that forked exits, and a runtime's worker or blocking thread
//! may exit while a run is still going.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
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

/// Everything the forked child does before exec; built before the fork, only read after it.
#[derive(Debug)]
pub(super) struct ChildSetup {
    /// `cgroup.procs` of each of the run's cgroups, opened by the parent.
    pub cgroup_procs: Vec<File>,
    pub rlimits: Vec<(Resource, libc::rlim_t)>,
    /// Host uid and gid to switch to when the daemon runs as root.
    pub drop_to: Option<(libc::uid_t, libc::gid_t)>,
    /// The daemon's pid, to notice that it died before the parent-death signal was armed.
    pub parent: libc::pid_t,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    /// Runs in the child between fork and exec.
    pub(super) fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls on values owned by `self`; nothing here allocates or takes
        // a lock, which is what makes it safe after fork in a multithreaded process.
        unsafe {
            for file in &self.cgroup_procs {
                // "0" is the writing process itself, in v1 and v2 alike.
                if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Before the rlimits: the fallback walk goes up to RLIMIT_NOFILE, which they lower.
            cloexec_above_stderr()?;
            for &(resource, value) in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                check(libc::setrlimit(resource, &lim))?;
            }
            // Under host memory pressure the kernel should pick a sandbox, never the daemon.
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                libc::write(adj, b"1000".as_ptr().cast(), 4);
                libc::close(adj);
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if let Some((uid, gid)) = self.drop_to {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            // After the uid change, which clears it.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            // The daemon died before the signal was armed; ESRCH, as no message may be allocated.
            if libc::getppid() != self.parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    }
}

/// Sets close-on-exec on every descriptor above 2. Not close: the standard library's own
/// exec-error pipe must stay open until exec.
unsafe fn cloexec_above_stderr() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk every possible descriptor.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and fcntl on integers; EBADF for unused descriptors is expected.
    unsafe {
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
        let max = lim.rlim_cur.min(libc::c_int::MAX as libc::rlim_t) as RawFd;
        for fd in 3..max {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
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
