//! bubblewrap backend: each run is a fresh `bwrap` sandbox, which starts in milliseconds where a
//! container takes hundreds, and needs no engine.
//!
//! A run is: make the run's cgroup, fork on the fork thread (the child joins the cgroup, drops
//! root to nobody and execs bwrap), hand the program to stdin, read the output relay's frames
//! (`relay`, `supervise`) under the cap, and stop at the program's exit, at the cap or at the
//! deadline. Then every process left in the cgroup is killed and waited for, one pidfd each, until
//! the cgroup is empty. Only then is the cgroup removed and the run over. Without a usable cgroup,
//! limits fall back to rlimits and the startup log says, loudly, what that leaves unenforced.
//!
//! The relay is pid 1 of the namespace (`--as-pid-1`) and the command its child: bwrap's monitor
//! waits for the relay directly, the relay reaps whatever the namespace orphans, no process inside
//! can signal it, and its exit (once it has reported the command's) makes the kernel kill and reap
//! everything else in the namespace. With bwrap's own init instead, the monitor would report the
//! exit at once and leave that init to die orphaned, a zombie that some host reaper collects
//! whenever it gets to it.
//!
//! bwrap's own stderr carries only bwrap's and the relay's complaints, never the program's
//! output, so a run that ends without the relay's report is a sandbox that failed, and says why.
//!
//! Inside: new user, pid, net, ipc, uts and cgroup namespaces; uid and gid 65534; no
//! capabilities; no new privileges; only `SANDBOX_ENV`; a read-only root (the given rootfs, or
//! the host's /usr and friends with an almost empty /etc); /proc and a read-only /dev; a
//! size-limited tmpfs at /tmp (and one at /dev/shm), the only writable places.

mod args;
mod cgroup;
mod probe;
mod spawn;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};

use self::args::bwrap_args;
use self::cgroup::{BWRAP_TASKS, Cgroups, Controller, RunCgroup};
use self::spawn::{ChildSetup, Resource};
use super::output::OutputCollector;
use super::relay::InstalledRelay;
use super::supervise::{Ending, supervise};
use super::{Limits, LiveOutput, RunOutcome, Sandbox, SandboxError, SandboxErrorKind};
use crate::hooks::Hooks;

/// The host uid and gid a sandbox gets when the daemon is root. Without capabilities, host root
/// would still own most host files and processes; nobody owns nothing.
const NOBODY: u32 = 65534;

/// The startup probe runs the command on empty input; it should end long before this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of bwrap's own stderr (its and the relay's complaints, never the program's output) is
/// kept for the error message of a sandbox that could not be set up.
const COMPLAINTS_CAP: usize = 4096;
/// How the error of a sandbox that never came up begins.
const SETUP_FAILED: &str = "bwrap could not set up the sandbox";
/// How long a run that ended without its exit status waits for those complaints.
const COMPLAINTS_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct BwrapOptions {
    /// What runs inside, split on whitespace; the program arrives on its stdin.
    pub command: String,
    /// A directory to use as the read-only root; `None` binds the host's /usr, /bin, /lib*.
    pub rootfs: Option<std::path::PathBuf>,
}

pub struct BwrapSandbox {
    bwrap: PathBuf,
    args: Vec<OsString>,
    limits: Limits,
    cgroups: Option<Cgroups>,
    /// Always RLIMIT_CORE and RLIMIT_NOFILE; the fallbacks for whatever no cgroup enforces.
    rlimits: Vec<(Resource, libc::rlim_t)>,
    /// RLIMIT_NPROC stands in for pids.max and must leave room for the daemon's own threads.
    nproc_fallback: bool,
    drop_to: Option<(libc::uid_t, libc::gid_t)>,
    enforcement: String,
    fingerprint: String,
    running: AtomicUsize,
    /// Mounted into every sandbox; removed with the sandbox.
    _relay: InstalledRelay,
}

fn err(kind: SandboxErrorKind, message: impl Into<String>) -> SandboxError {
    SandboxError::new(kind, message)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn exit_status(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(sig)) => 128 + i64::from(sig),
        (None, None) => -1,
    }
}

fn own_threads() -> u64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .ok()
        .and_then(|s| u64::try_from(s.num_threads).ok())
        .unwrap_or(64)
}

/// Counts a run as in flight while alive.
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Running(n)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BwrapSandbox {
    /// Checks that bwrap is present and can create namespaces and that the command exists.
    pub async fn connect(
        opts: BwrapOptions,
        limits: Limits,
        hooks: Arc<dyn Hooks>,
    ) -> Result<BwrapSandbox, SandboxError> {
        Self::open(opts, limits, hooks, true).await
    }

    /// As `connect`, but ignoring cgroups, so that tests can exercise the rlimit fallback on a
    /// host that has cgroups.
    #[doc(hidden)]
    pub async fn connect_without_cgroups(
        opts: BwrapOptions,
        limits: Limits,
        hooks: Arc<dyn Hooks>,
    ) -> Result<BwrapSandbox, SandboxError> {
        Self::open(opts, limits, hooks, false).await
    }

    async fn open(
        opts: BwrapOptions,
        limits: Limits,
        _hooks: Arc<dyn Hooks>,
        use_cgroups: bool,
    ) -> Result<BwrapSandbox, SandboxError> {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let command: Vec<String> = opts.command.split_whitespace().map(String::from).collect();
        if command.is_empty() {
            return Err(err(
                SandboxErrorKind::ImageMissing,
                "the bwrap command is empty",
            ));
        }
        let root_desc = match &opts.rootfs {
            Some(dir) => {
                let meta = std::fs::metadata(dir).map_err(|e| {
                    err(
                        SandboxErrorKind::ImageMissing,
                        format!("rootfs {}: {e}", dir.display()),
                    )
                })?;
                if !meta.is_dir() {
                    return Err(err(
                        SandboxErrorKind::ImageMissing,
                        format!("rootfs {} is not a directory", dir.display()),
                    ));
                }
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                format!("rootfs:{}@{mtime}", dir.display())
            }
            None => "host".to_string(),
        };
        let bwrap = find_in_path("bwrap").ok_or_else(|| {
            err(
                SandboxErrorKind::Unavailable,
                "bubblewrap is not installed (no bwrap in PATH): apt-get install bubblewrap",
            )
        })?;
        let version = tokio::process::Command::new(&bwrap)
            .arg("--version")
            .env_clear()
            .output()
            .await
            .map_err(|e| {
                err(
                    SandboxErrorKind::Unavailable,
                    format!("cannot run {}: {e}", bwrap.display()),
                )
            })?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();

        let euid = rustix::process::geteuid().as_raw();
        let drop_to = (euid == 0).then_some((NOBODY, NOBODY));
        let host_uid = drop_to.map_or(euid, |(uid, _)| uid);

        let detected = if use_cgroups {
            Cgroups::detect(&limits, INSTANCES.fetch_add(1, Ordering::Relaxed))
        } else {
            cgroup::Detected {
                cgroups: None,
                notes: vec!["cgroups disabled by the caller".into()],
            }
        };
        let cgroups = detected.cgroups;
        let by_cgroup = |c| cgroups.as_ref().is_some_and(|g| g.enforces(c));

        // As the Docker backend: no core dumps (they would go to the host's handler), 1024 files.
        let mut rlimits: Vec<(Resource, libc::rlim_t)> =
            vec![(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, 1024)];
        let mut unenforced: Vec<String> = Vec::new();
        if !by_cgroup(Controller::Memory) {
            rlimits.push((libc::RLIMIT_AS, limits.memory_bytes));
            unenforced.push(format!(
                "memory is only RLIMIT_AS of {} bytes per process, not per run, and an out-of-memory program is not reported as such",
                limits.memory_bytes
            ));
        }
        let nproc_fallback = !by_cgroup(Controller::Pids);
        if nproc_fallback {
            unenforced.push(format!(
                "the process limit is only RLIMIT_NPROC, which counts every process of host uid {host_uid} across all runs: one run's fork bomb can starve the others"
            ));
        }
        if !by_cgroup(Controller::Cpu) {
            let secs = limits.timeout.as_secs() + 2;
            rlimits.push((libc::RLIMIT_CPU, secs));
            unenforced.push(format!(
                "the CPU share ({} cpus) is not enforced, only RLIMIT_CPU of {secs} s per process",
                limits.cpus
            ));
        }
        if cgroups.is_none() {
            unenforced.push(
                "a killed run's processes are found through bwrap's pid namespace alone".into(),
            );
        }
        let enforcement = match &cgroups {
            Some(g) if unenforced.is_empty() => g.describe(),
            Some(g) => format!("{}; rlimits for the rest", g.describe()),
            None => "rlimits only".to_string(),
        };
        if !unenforced.is_empty() {
            tracing::warn!(
                why = ?detected.notes,
                "bwrap: no usable cgroup for part of the limits; NOT ENFORCED as configured: {}",
                unenforced.join("; ")
            );
        } else {
            tracing::info!(why = ?detected.notes, "bwrap: limits enforced by {enforcement}");
        }
        if let Some(g) = &cgroups {
            for dir in g.sweep() {
                tracing::warn!(cgroup = %dir.display(), "removed a run cgroup that a previous daemon left behind");
            }
        }

        let relay = InstalledRelay::install().map_err(|e| {
            err(
                SandboxErrorKind::Start,
                format!("cannot write the output relay for the sandboxes: {e}"),
            )
        })?;
        let args = bwrap_args(opts.rootfs.as_deref(), relay.path(), &command, &limits);
        let mode = match &cgroups {
            Some(_) if unenforced.is_empty() => "cgroup",
            Some(_) => "cgroup+rlimits",
            None => "rlimits",
        };
        let fingerprint = format!(
            "bwrap;{version};command={};root={root_desc};enforce={mode};{}",
            command.join(" "),
            limits.fingerprint()
        );
        let sandbox = BwrapSandbox {
            bwrap,
            args,
            limits,
            cgroups,
            rlimits,
            nproc_fallback,
            drop_to,
            enforcement,
            fingerprint,
            running: AtomicUsize::new(0),
            _relay: relay,
        };
        sandbox.probe(&version, &opts, host_uid).await?;
        Ok(sandbox)
    }

    /// How the limits are enforced on this host, e.g. "cgroup v1: memory in ...".
    pub fn enforcement(&self) -> &str {
        &self.enforcement
    }

    /// Like `run`, also returning the run's cgroup directories (gone again once it returns), so
    /// that tests can prove nothing of a run outlives it.
    #[doc(hidden)]
    pub async fn run_traced(
        &self,
        program: Bytes,
    ) -> (Result<RunOutcome, SandboxError>, Vec<PathBuf>) {
        let mut dirs = Vec::new();
        let result = self.run_checked(program, &mut dirs, None).await;
        (result, dirs)
    }

    /// Where this sandbox makes run cgroups, and the name prefix of its runs.
    #[doc(hidden)]
    pub fn cgroup_parents(&self) -> Option<(Vec<PathBuf>, String)> {
        let g = self.cgroups.as_ref()?;
        Some((
            g.parents().map(Path::to_path_buf).collect(),
            g.prefix().to_string(),
        ))
    }

    async fn run_checked(
        &self,
        program: Bytes,
        dirs: &mut Vec<PathBuf>,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        self.execute(program, self.limits.timeout, dirs, live).await
    }

    fn rlimits_for_run(&self) -> Vec<(Resource, libc::rlim_t)> {
        let mut rl = self.rlimits.clone();
        if self.nproc_fallback {
            let mut n = u64::from(self.limits.pids) + u64::from(BWRAP_TASKS);
            if self.drop_to.is_none() {
                // Every thread of the daemon's user counts, the daemon's own included.
                n += own_threads();
            }
            rl.push((libc::RLIMIT_NPROC, n));
        }
        rl
    }

    async fn execute(
        &self,
        program: Bytes,
        timeout: Duration,
        trace: &mut Vec<PathBuf>,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        let _running = Running::new(&self.running);
        let mut cg = match &self.cgroups {
            Some(g) => Some(g.create().map_err(|e| {
                err(
                    SandboxErrorKind::Start,
                    format!("cannot create the run's cgroup: {e}"),
                )
            })?),
            None => None,
        };
        if let Some(c) = &cg {
            trace.extend(c.dirs().iter().cloned());
        }
        let setup = ChildSetup {
            cgroup_procs: cg.as_mut().map(RunCgroup::take_procs).unwrap_or_default(),
            rlimits: self.rlimits_for_run(),
            drop_to: self.drop_to,
            parent: rustix::process::getpid().as_raw_nonzero().get(),
        };
        let mut cmd = Command::new(&self.bwrap);
        cmd.args(&self.args).env_clear().kill_on_drop(true);
        // SAFETY: `apply` makes only async-signal-safe calls and does not allocate.
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let started = Instant::now();
        let mut child = spawn::spawn(cmd).await.map_err(|e| {
            err(
                SandboxErrorKind::Start,
                format!("cannot start {}: {e}", self.bwrap.display()),
            )
        })?;

        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill(&mut child, cg.as_ref()).await;
            return Err(err(
                SandboxErrorKind::Internal,
                "bwrap's stdio is not piped",
            ));
        };
        // bwrap's own stderr: only bwrap and the relay write there, the program's stderr goes
        // through the relay. Read all along, so that neither can block on it.
        let complaints = tokio::spawn(read_bounded(stderr, COMPLAINTS_CAP));
        // A program need not read its input: a broken pipe just ends the feeding.
        let feed = async move {
            let mut stdin = stdin;
            let _ = stdin.write_all(&program).await;
        };
        let mut output = OutputCollector::new(self.limits.max_output_bytes, live);
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let ending = supervise(frames_of(stdout), &mut output, deadline, feed).await;
        // After a normal exit too: the namespace is empty by then, and this proves it.
        let status = kill(&mut child, cg.as_ref()).await;
        let ending = match ending {
            Ok(ending) => ending,
            Err(e) => {
                complaints.abort();
                return Err(e);
            }
        };
        let oom = cg.as_ref().is_some_and(RunCgroup::oom_killed);
        if let Some(mut c) = cg
            && let Err(e) = c.remove()
        {
            // Dropping `c` kills what is left and retries on a background thread.
            tracing::warn!(error = %e, "a run's cgroup was not empty after the run");
        }
        let output = output.into_chunks();
        Ok(match ending {
            Ending::OverCap => RunOutcome::OutputTooLarge { output },
            Ending::Deadline => RunOutcome::TimedOut { output },
            Ending::Exited(exit) if oom || exit.oom_kills.is_some_and(|n| n > 0) => {
                RunOutcome::OutOfMemory { output }
            }
            Ending::Exited(exit) => RunOutcome::Exited {
                status: exit.status,
                output,
            },
            Ending::Vanished if oom => RunOutcome::OutOfMemory { output },
            // The relay is the namespace's pid 1, which no process inside can kill: without
            // its report, the sandbox never came up (bwrap says why on its own stderr, which
            // the program cannot write to) or the relay failed.
            Ending::Vanished => {
                let said = tokio::time::timeout(COMPLAINTS_WAIT, complaints)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let said = String::from_utf8_lossy(&said).trim().to_string();
                let status =
                    status.map_or_else(|| "unknown".to_owned(), |s| exit_status(s).to_string());
                return Err(err(
                    SandboxErrorKind::Start,
                    format!("{SETUP_FAILED} (exit status {status}): {said}"),
                ));
            }
        })
    }
}

/// The relay's frames, as bwrap's stdout delivers them.
fn frames_of(stdout: ChildStdout) -> impl Stream<Item = Result<Bytes, SandboxError>> + Unpin {
    Box::pin(futures_util::stream::unfold(
        Some(stdout),
        |stdout| async move {
            let mut stdout = stdout?;
            let mut buf = BytesMut::with_capacity(64 << 10);
            match stdout.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(stdout))),
                Err(e) => Some((
                    Err(err(
                        SandboxErrorKind::Io,
                        format!("reading the sandbox's output: {e}"),
                    )),
                    None,
                )),
            }
        },
    ))
}

/// Reads `from` to its end, keeping the first `cap` bytes.
async fn read_bounded(mut from: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Kills every process of the run and returns once they are all gone, with bwrap's exit status.
async fn kill(child: &mut Child, cg: Option<&RunCgroup>) -> Option<std::process::ExitStatus> {
    match cg {
        Some(cg) => {
            if !cg.kill_all().await {
                tracing::error!("a run's processes survived SIGKILL for seconds");
            }
        }
        // No cgroup: the monitor's death takes the namespace's pid 1 (its parent-death signal),
        // and with it every process in the namespace, a moment later.
        None => {
            let _ = child.start_kill();
        }
    }
    child.wait().await.ok()
}

#[async_trait]
impl Sandbox for BwrapSandbox {
    fn name(&self) -> &'static str {
        "bwrap"
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    async fn run(
        &self,
        program: Bytes,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        self.run_checked(program, &mut Vec::new(), live).await
    }

    fn status(&self) -> String {
        format!(
            "bwrap {} running ({})",
            self.running.load(Ordering::Relaxed),
            if self.cgroups.is_some() {
                "cgroup"
            } else {
                "rlimits"
            }
        )
    }
}
