//! bubblewrap backend: each run is a fresh `bwrap` sandbox, which starts in milliseconds where a
//! container takes hundreds, and needs no engine.
//!
//! A sandbox is made (`run::Spawner::prepare`): the run's cgroups, then bwrap started on the spawn
//! thread through the relay's launch mode (which joins the cgroups, drops root to nobody and execs
//! bwrap; `spawn`), the command started and waiting on stdin. With `pool_size` > 0 that happens
//! ahead of time (`pool`), else on the request path. A run (`run::Prepared::serve`) hands the
//! program to stdin, reads the output relay's frames (`relay`, `supervise`) under the cap, and
//! stops at the program's exit, at the cap or at the deadline. The answer goes out then; the
//! teardown follows: bwrap's monitor is killed, then every process left in the cgroups, waited
//! for one pidfd each until they are empty, and only then are the cgroups removed. `shutdown`
//! waits for every teardown. Without a usable cgroup, limits fall back to rlimits and the startup
//! log says, loudly, what that leaves unenforced.
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
//! capabilities; no new privileges; the syscall filter (`syscalls`), no nested user namespace
//! (`--disable-userns`); only `SANDBOX_ENV`; a read-only root (the given rootfs, or
//! the host's /usr and friends with an almost empty /etc); /proc and a read-only /dev; a
//! size-limited tmpfs at /tmp (and one at /dev/shm), the only writable places.

mod args;
mod cgroup;
mod pool;
mod probe;
mod run;
mod spawn;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use self::args::{bwrap_args, has_disable_userns, seccomp_fds};
use self::cgroup::{Cgroups, Controller};
use self::pool::Pool;
use self::run::{Busy, RunBounds, Spawner, Teardowns};
use self::spawn::Resource;
use super::job::{Job, LiveInput, StageOutcome, legacy_input};
use super::relay::InstalledRelay;
use super::supervise::Report;
use super::syscalls::{self, Filters};
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
    /// Sandboxes kept spawned, their command waiting for a program (0: none).
    pub pool_size: usize,
}

pub struct BwrapSandbox {
    spawner: Arc<Spawner>,
    /// `None` when `pool_size` is 0: every run spawns its own sandbox.
    pool: Option<Pool>,
    enforcement: String,
    fingerprint: String,
    /// Runs in flight and teardowns under way (see `Busy`).
    busy: Arc<watch::Sender<usize>>,
    /// Runs' teardowns still under way after their answers (see `Prepared::serve`).
    teardowns: Teardowns,
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
        hooks: Arc<dyn Hooks>,
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
        let filters = Filters::compile().map_err(|e| {
            err(
                SandboxErrorKind::Internal,
                format!("cannot compile the syscall filter: {e}"),
            )
        })?;
        let seccomp = seccomp_fds(&filters);
        let disable_userns = has_disable_userns(&bwrap).await;
        tracing::info!("bwrap: {}", syscalls::describe());
        if !disable_userns {
            tracing::warn!(
                "bwrap {version} lacks --disable-userns (0.8 and newer): only the syscall filter \
                 keeps a program from making a nested user namespace"
            );
        }
        let args = bwrap_args(
            opts.rootfs.as_deref(),
            relay.path(),
            &command,
            &limits,
            &seccomp,
            disable_userns,
        );
        let mode = match &cgroups {
            Some(_) if unenforced.is_empty() => "cgroup",
            Some(_) => "cgroup+rlimits",
            None => "rlimits",
        };
        let fingerprint = format!(
            "bwrap;{version};command={};root={root_desc};enforce={mode};syscalls={};{}",
            command.join(" "),
            syscalls::fingerprint(),
            limits.fingerprint()
        );
        let spawner = Arc::new(Spawner {
            bwrap,
            args,
            limits,
            cgroups,
            rlimits,
            nproc_fallback,
            drop_to,
            relay,
            seccomp,
        });
        let busy = Arc::new(watch::channel(0).0);
        let mut sandbox = BwrapSandbox {
            spawner,
            pool: None,
            enforcement,
            fingerprint,
            busy: busy.clone(),
            teardowns: Teardowns::new(busy),
        };
        sandbox.probe(&version, &opts, host_uid).await?;
        if opts.pool_size > 0 {
            let pool = Pool::start(
                sandbox.spawner.clone(),
                opts.pool_size,
                hooks,
                sandbox.busy.subscribe(),
            );
            // As the Docker backend: the daemon is ready with its pool full, so that its first
            // runs and its steady state are what an operator measures. The probe has just made
            // a sandbox; should filling still stall, runs make their own meanwhile.
            if tokio::time::timeout(PROBE_TIMEOUT, pool.full())
                .await
                .is_err()
            {
                tracing::warn!(
                    pool = opts.pool_size,
                    ready = pool.len(),
                    "bwrap: the pool is not full yet; starting anyway"
                );
            }
            sandbox.pool = Some(pool);
        }
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
        let limits = self.spawner.limits.clone();
        let result = self
            .execute(
                legacy_input(&program),
                &limits,
                limits.timeout,
                &mut dirs,
                None,
                None,
                false,
                &mut Report::default(),
            )
            .await;
        (result, dirs)
    }

    /// Where this sandbox makes run cgroups, and the name prefix of its runs.
    #[doc(hidden)]
    pub fn cgroup_parents(&self) -> Option<(Vec<PathBuf>, String)> {
        let g = self.spawner.cgroups.as_ref()?;
        Some((
            g.parents().map(Path::to_path_buf).collect(),
            g.prefix().to_string(),
        ))
    }

    /// Returns once the pool holds `pool_size` waiting sandboxes (at once without a pool).
    #[doc(hidden)]
    pub async fn pool_full(&self) {
        if let Some(pool) = &self.pool {
            pool.full().await;
        }
    }

    /// bwrap's pid in each waiting sandbox of the pool.
    #[doc(hidden)]
    pub fn pool_pids(&self) -> Vec<u32> {
        self.pool.as_ref().map_or_else(Vec::new, Pool::waiting_pids)
    }

    /// Makes the pool's next `n` spawns fail, as a spawn can.
    #[doc(hidden)]
    pub fn fail_next_pool_spawns(&self, n: usize) {
        if let Some(pool) = &self.pool {
            pool.fail_next_spawns(n);
        }
    }

    /// Runs `input` (the relay's header, then a legacy program) under `limits` (the language's,
    /// or a run's own: its memory and processes are set on the cgroup first).
    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        input: Bytes,
        limits: &Limits,
        timeout: Duration,
        trace: &mut Vec<PathBuf>,
        live: Option<LiveOutput>,
        mut live_input: Option<LiveInput>,
        answer_first: bool,
        report: &mut Report,
    ) -> Result<RunOutcome, SandboxError> {
        let _busy = Busy::new(&self.busy);
        let teardowns = answer_first.then_some(&self.teardowns);
        let own = &self.spawner.limits;
        let bounds = RunBounds {
            timeout,
            max_output_bytes: limits.max_output_bytes,
            resize: (limits.memory_bytes != own.memory_bytes || limits.pids != own.pids)
                .then_some((limits.memory_bytes, limits.pids)),
        };
        if let Some(sandbox) = self.pool.as_ref().and_then(Pool::take) {
            trace.extend(sandbox.dirs().iter().cloned());
            match sandbox
                .serve(
                    input.clone(),
                    bounds,
                    live.clone(),
                    teardowns,
                    report,
                    live_input.take(),
                )
                .await
            {
                // Its relay never reported: the sandbox was gone before the program reached it
                // (killed between the pool's check and the hand-over). A program cannot cause
                // that (see `serve`), so it gets a fresh sandbox.
                Err(e) if e.message.starts_with(SETUP_FAILED) => {
                    tracing::warn!(error = %e.message, "a pre-spawned bwrap sandbox failed; running in a fresh one");
                }
                result => return result,
            }
        }
        let sandbox = self.spawner.prepare().await?;
        trace.extend(sandbox.dirs().iter().cloned());
        sandbox
            .serve(input, bounds, live, teardowns, report, live_input.take())
            .await
    }
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
        let limits = self.spawner.limits.clone();
        let input = legacy_input(&program);
        let mut report = Report::default();
        self.execute(
            input,
            &limits,
            limits.timeout,
            &mut Vec::new(),
            live,
            None,
            true,
            &mut report,
        )
        .await
    }

    async fn run_job(
        &self,
        job: Job,
        live: Option<LiveOutput>,
        input: Option<LiveInput>,
    ) -> Result<StageOutcome, SandboxError> {
        let started = std::time::Instant::now();
        let mut report = Report::default();
        let outcome = self
            .execute(
                job.encode(),
                &job.limits,
                job.deadline(),
                &mut Vec::new(),
                live,
                input,
                true,
                &mut report,
            )
            .await?;
        Ok(StageOutcome::new(outcome, report, started.elapsed()))
    }

    async fn shutdown(&self) {
        if let Some(pool) = &self.pool {
            pool.close().await;
        }
        self.teardowns.finish().await;
    }

    fn status(&self) -> String {
        let pool = self
            .pool
            .as_ref()
            .map(|p| format!(", pool {}/{}", p.len(), p.target()))
            .unwrap_or_default();
        format!(
            "bwrap {} running or being torn down ({}){pool}",
            *self.busy.borrow(),
            if self.spawner.cgroups.is_some() {
                "cgroup"
            } else {
                "rlimits"
            }
        )
    }
}
