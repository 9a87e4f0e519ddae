//! One sandbox's life: `Spawner::prepare` sets it up to the point where its command waits on
//! stdin (cgroup made, bwrap forked and joined to it, namespaces and mounts made, the command
//! started), and `Prepared::serve` hands it one program, supervises the run and takes everything
//! down. Between the two the sandbox may wait in the pool; the run's clock starts at `serve`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::cgroup::{BWRAP_TASKS, Cgroups, RunCgroup};
use super::spawn::{self, DataFd, Launch, Resource};
use super::{COMPLAINTS_CAP, COMPLAINTS_WAIT, SETUP_FAILED, err, exit_status, own_threads};
use crate::sandbox::job::{LiveInput, StdinEvent};
use crate::sandbox::output::OutputCollector;
use crate::sandbox::relay::InstalledRelay;
use crate::sandbox::supervise::{Ending, Report, supervise};
use crate::sandbox::{Limits, LiveOutput, RunOutcome, SandboxError, SandboxErrorKind};

/// Everything needed to set up a sandbox; shared by the request path and the pool's filler.
pub(super) struct Spawner {
    pub bwrap: PathBuf,
    pub args: Vec<OsString>,
    pub limits: Limits,
    pub cgroups: Option<Cgroups>,
    /// Always RLIMIT_CORE and RLIMIT_NOFILE; the fallbacks for whatever no cgroup enforces.
    pub rlimits: Vec<(Resource, libc::rlim_t)>,
    /// RLIMIT_NPROC stands in for pids.max and must leave room for the daemon's own threads.
    pub nproc_fallback: bool,
    pub drop_to: Option<(libc::uid_t, libc::gid_t)>,
    /// Mounted into every sandbox, and its launch mode starts bwrap; removed once no sandbox
    /// can be made any more.
    pub relay: InstalledRelay,
    /// The syscall filter's programs, which the launcher hands to bwrap.
    pub seccomp: Vec<DataFd>,
}

/// How long a run may take, how much it may write, and its own memory and process limits when
/// they are not the sandbox's.
#[derive(Clone, Copy, Debug)]
pub(super) struct RunBounds {
    pub timeout: Duration,
    pub max_output_bytes: usize,
    pub resize: Option<(u64, u32)>,
}

/// A sandbox whose command waits for its program on stdin.
pub(super) struct Prepared {
    child: Child,
    cg: Option<RunCgroup>,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// bwrap's own stderr: only bwrap and the relay write there, the program's stderr goes
    /// through the relay. Read all along, so that neither can block on it.
    complaints: JoinHandle<Vec<u8>>,
}

impl Spawner {
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

    pub(super) async fn prepare(&self) -> Result<Prepared, SandboxError> {
        let cg = match &self.cgroups {
            Some(g) => Some(g.create().map_err(|e| {
                err(
                    SandboxErrorKind::Start,
                    format!("cannot create the run's cgroup: {e}"),
                )
            })?),
            None => None,
        };
        let launch = Launch {
            cgroup_procs: cg.iter().flat_map(RunCgroup::procs_files).collect(),
            rlimits: self.rlimits_for_run(),
            drop_to: self.drop_to,
            data_fds: &self.seccomp,
        };
        let mut cmd = launch.command(self.relay.path(), &self.bwrap, &self.args);
        cmd.env_clear().kill_on_drop(true);
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
        let complaints = tokio::spawn(read_bounded(stderr, COMPLAINTS_CAP));
        Ok(Prepared {
            child,
            cg,
            stdin,
            stdout,
            complaints,
        })
    }
}

impl Prepared {
    /// The run's cgroup directories.
    pub(super) fn dirs(&self) -> &[PathBuf] {
        self.cg.as_ref().map_or(&[], |c| c.dirs())
    }

    /// Whether bwrap is still there to take a program. A waiting sandbox has no reason to end, so
    /// one that did was killed from outside (or by the OOM killer) and must not be handed a run.
    pub(super) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// bwrap's pid, for tests that kill a waiting sandbox.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills everything in the sandbox and removes its cgroup, unused.
    pub(super) async fn discard(self) {
        self.complaints.abort();
        take_down(self.child, self.cg).await;
    }

    /// Runs `program` in this sandbox; then kills and waits for everything in it and removes its
    /// cgroup. That teardown (the namespaces' end costs the kernel milliseconds) goes to
    /// `teardowns` once the outcome is known, so the answer need not wait for it; without
    /// `teardowns` it is done before returning.
    ///
    /// `input` is what the relay reads (its header, then a legacy program); `resize` gives the
    /// run its own memory and process limits first; `report` gets the job's measurements, with
    /// the peak memory read from the run's cgroup.
    pub(super) async fn serve(
        self,
        input: Bytes,
        bounds: RunBounds,
        live: Option<LiveOutput>,
        teardowns: Option<&Teardowns>,
        report: &mut Report,
        live_input: Option<LiveInput>,
    ) -> Result<RunOutcome, SandboxError> {
        let RunBounds {
            timeout,
            max_output_bytes,
            resize,
        } = bounds;
        let Prepared {
            child,
            cg,
            stdin,
            stdout,
            complaints,
        } = self;
        let resized = match (resize, &cg) {
            (Some((memory, pids)), Some(c)) => c.set_limits(memory, pids),
            _ => Ok(()),
        };
        if let Err(e) = resized {
            complaints.abort();
            let _ = take_down(child, cg).await;
            return Err(err(
                SandboxErrorKind::Start,
                format!("cannot set the run's own limits on its cgroup: {e}"),
            ));
        }
        let started = tokio::time::Instant::now();
        // A program need not read its input: a broken pipe just ends the feeding.
        let cg_ref = cg.as_ref();
        let feed = async move {
            let mut stdin = Some(stdin);
            if let Some(s) = stdin.as_mut()
                && s.write_all(&input).await.is_err()
            {
                stdin = None;
            }
            let Some(mut events) = live_input else {
                return;
            };
            // Live: stdin stays open for what the client sends, until it ends it or goes.
            while let Some(event) = events.recv().await {
                match event {
                    StdinEvent::Data(data) => {
                        if let Some(s) = stdin.as_mut()
                            && s.write_all(&data).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    StdinEvent::Eof => stdin = None,
                    StdinEvent::Signal(sig) => {
                        if let Some(cg) = cg_ref {
                            cg.signal_program(sig);
                        }
                    }
                }
            }
        };
        let mut output = OutputCollector::new(max_output_bytes, live);
        let ending = supervise(
            frames_of(stdout),
            &mut output,
            report,
            started + timeout,
            feed,
        )
        .await;
        // The kernel counts an OOM kill before its victim's exit can be reported.
        let oom = cg.as_ref().is_some_and(RunCgroup::oom_killed);
        if let Some(m) = report.measures.as_mut()
            && m.peak_memory.is_none()
        {
            m.peak_memory = cg.as_ref().and_then(RunCgroup::peak_memory);
        }
        // After a normal exit too: the namespace is empty by then, and this proves it.
        let teardown = take_down(child, cg);
        let ending = match ending {
            Ok(Ending::Vanished) if !oom => {
                // The relay is the namespace's pid 1, which no process inside can kill: without
                // its report, the sandbox never came up (bwrap says why on its own stderr, which
                // the program cannot write to) or the relay failed.
                let status = teardown.await;
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
            ending => {
                complaints.abort();
                match teardowns {
                    Some(teardowns) => teardowns.spawn(teardown),
                    None => drop(teardown.await),
                }
                ending?
            }
        };
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
            Ending::Vanished => RunOutcome::OutOfMemory { output },
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

/// Kills everything in a sandbox and removes its cgroup; bwrap's exit status.
async fn take_down(mut child: Child, cg: Option<RunCgroup>) -> Option<std::process::ExitStatus> {
    let status = kill(&mut child, cg.as_ref()).await;
    if let Some(mut c) = cg
        && let Err(e) = c.remove()
    {
        // Dropping `c` kills what is left and retries on a background thread.
        tracing::warn!(error = %e, "a sandbox's cgroup was not empty after the kill");
    }
    status
}

/// Kills every process of the run and returns once they are all gone, with bwrap's exit status.
///
/// The launcher first: until it is gone it may still be about to join the cgroup (it does so
/// after the spawn has returned), and once it is, nothing can join any more. Killing bwrap's
/// monitor also takes the namespace's pid 1 (its parent-death signal), and with it, a moment later,
/// every process in the namespace; the cgroup's kill makes sure of it and waits until it is empty.
async fn kill(child: &mut Child, cg: Option<&RunCgroup>) -> Option<std::process::ExitStatus> {
    let _ = child.start_kill();
    let status = child.wait().await.ok();
    if let Some(cg) = cg
        && !cg.kill_all().await
    {
        tracing::error!("a run's processes survived SIGKILL for seconds");
    }
    status
}

/// Counts one run, or one teardown after an answer, in a shared count while alive: the pool's
/// filler holds its spawns back while the count is not zero (see `pool`).
pub(super) struct Busy(Arc<watch::Sender<usize>>);

impl Busy {
    pub(super) fn new(count: &Arc<watch::Sender<usize>>) -> Busy {
        count.send_modify(|n| *n += 1);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Where runs' teardowns go after their answers: tracked, so that shutdown can wait for them,
/// and counted in `busy` until done.
pub(super) struct Teardowns {
    tracker: TaskTracker,
    busy: Arc<watch::Sender<usize>>,
}

impl Teardowns {
    pub(super) fn new(busy: Arc<watch::Sender<usize>>) -> Teardowns {
        Teardowns {
            tracker: TaskTracker::new(),
            busy,
        }
    }

    fn spawn<T: Send + 'static>(&self, teardown: impl Future<Output = T> + Send + 'static) {
        let busy = Busy::new(&self.busy);
        self.tracker.spawn(async move {
            teardown.await;
            drop(busy);
        });
    }

    /// Resolves once every teardown has finished; no more may be spawned.
    pub(super) async fn finish(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
