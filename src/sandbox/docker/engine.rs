//! One sandbox container's life: create, start, take a program, collect its output under the cap
//! and the deadline, read how it ended, and be removed whatever happened.
//!
//! The program does not go to the container's main process. The main process (the image's command)
//! only holds the container up: it blocks reading a stdin that stays open and is never written.
//! The program goes to an *exec* of that same command, started attached as soon as the container
//! is up, which blocks reading its own stdin until the program arrives. Why: the engine (dockerd
//! 20.10) ends a container's attach stream and reports its exit only after tearing it down
//! (containerd task delete, unmounts), ~40 ms after the program's last byte, while an exec's stream
//! ends and its exit code is readable ~1 ms after it exits. Starting the exec is expensive too
//! (runc exec, ~50 ms), which is why it is started before the program is known, not with it. The
//! price: every container costs the engine that exec on top of its create, start and removal
//! (~25 ms of a ~75 ms total on the 2-core test machine), so the most runs per second the engine
//! can sustain, once the pool is drained, drops by about a quarter.
//!
//! Removal is tied to a guard rather than to the happy path: every container is named before it is
//! created, and the guard that owns the name removes it when dropped, whether the run finished,
//! failed, was killed or was cancelled. A container serves one program, then is removed, off the
//! request path. The engine counts live containers so that `shutdown` can wait until the last one
//! is gone, and so that the pool does not outrun removals.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::future::{BoxFuture, Fuse, FusedFuture};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::Events;
use super::settings::{self, ImageCommand};
use super::sweep::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER, current_owner};
use crate::sandbox::output::OutputCollector;
use crate::sandbox::{Limits, RunOutcome, SandboxError, SandboxErrorKind, StreamKind};

/// 128 + SIGKILL.
const SIGKILL_EXIT: i64 = 137;

/// While a program runs, how soon its exit is first asked about, and the longest gap between two
/// asks (the gap doubles). See `drive` for why a run asks at all.
const FIRST_EXIT_POLL: Duration = Duration::from_millis(50);
const MAX_EXIT_POLL: Duration = Duration::from_millis(400);
/// Once the output has ended, the exit is already recorded (the engine records it before it ends
/// the stream); should it not be, ask again this often.
const EXIT_RECHECK: Duration = Duration::from_millis(5);
/// How long the output may go on after the program exited before its leftovers (background
/// processes still holding stdout) are killed.
const LEFTOVER_GRACE: Duration = Duration::from_millis(50);
/// How long a run that failed waits for the engine's word on its end (see `Events`); it comes a
/// millisecond or so after the output ends.
const EXIT_EVENT_WAIT: Duration = Duration::from_millis(250);

/// Why a run was killed before it ended by itself.
enum Cut {
    Deadline,
    OutputCap,
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;
type InputSink = Pin<Box<dyn AsyncWrite + Send>>;

/// What every container of one `DockerSandbox` shares.
pub(super) struct Engine {
    pub docker: Docker,
    /// Where the engine is, for error messages.
    pub host: String,
    pub image: String,
    /// The image's Entrypoint + Cmd and working directory, which the exec runs.
    command: ImageCommand,
    pub limits: Limits,
    pub instance: String,
    labels: HashMap<String, String>,
    pub events: Arc<Events>,
    counter: AtomicU64,
    /// Containers created (or being created) and not yet removed.
    live: watch::Sender<usize>,
    /// Of those, the ones whose removal is under way.
    removing: watch::Sender<usize>,
    /// Guards may be dropped outside the runtime's context (a cancelled run); removal still
    /// needs somewhere to run.
    runtime: tokio::runtime::Handle,
}

/// A started container with an attached exec of the image's command blocked reading its stdin.
pub(super) struct Started {
    guard: Guard,
    exec: String,
    output: OutputStream,
    input: InputSink,
    /// What the image's command printed before it had a program (a banner, say). A cold run
    /// would show it first, so a pooled run does too.
    early: Vec<LogOutput>,
    early_bytes: usize,
}

impl Started {
    /// Keeps one item of output that came before the program; false when the stream ended or
    /// failed (the exec or its container died), or when the command printed more than any run
    /// may.
    fn keep_early(&mut self, item: Option<Result<LogOutput, DockerError>>, cap: usize) -> bool {
        match item {
            Some(Ok(item)) => {
                self.early_bytes += item.as_ref().len();
                self.early.push(item);
                self.early_bytes <= cap
            }
            _ => false,
        }
    }
}

/// Removes the container it names when dropped.
struct Guard {
    engine: Arc<Engine>,
    name: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let name = std::mem::take(&mut self.name);
        self.engine.events.forget(&name);
        // Decrements `live` even if the runtime drops the task unpolled (shutting down).
        self.engine.removing.send_modify(|n| *n += 1);
        let done = LiveToken(engine.clone());
        self.engine.runtime.spawn(async move {
            engine.remove(&name).await;
            drop(done);
        });
    }
}

struct LiveToken(Arc<Engine>);

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.0.removing.send_modify(|n| *n = n.saturating_sub(1));
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Engine {
    pub fn new(
        docker: Docker,
        host: String,
        image: String,
        command: ImageCommand,
        limits: Limits,
    ) -> Arc<Engine> {
        // Random, so that names stay unique across restarts and across daemons on one engine.
        let instance = format!("{:012x}", rand::random::<u64>() >> 16);
        let labels = HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_OWNER.to_owned(), current_owner()),
            (LABEL_INSTANCE.to_owned(), instance.clone()),
        ]);
        Arc::new(Engine {
            docker,
            host,
            image,
            command,
            limits,
            instance,
            labels,
            events: Arc::new(Events::default()),
            counter: AtomicU64::new(0),
            live: watch::Sender::new(0),
            removing: watch::Sender::new(0),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Turns an engine error into a `SandboxError` that says what we were doing and, when the
    /// engine itself is gone, where we looked for it.
    pub fn error(&self, kind: SandboxErrorKind, doing: &str, e: DockerError) -> SandboxError {
        engine_error(&self.host, &self.image, kind, doing, e)
    }

    /// Creates and starts one container, then starts an exec of the image's command in it,
    /// attached, so that the exec blocks reading its stdin until a program arrives: that is what
    /// lets a started container wait in the pool.
    ///
    /// With `verify`, returns only once the engine reports the exec's process running, so that an
    /// image whose command cannot run fails here (at startup, or as a refill failure that backs
    /// off) rather than as a run. The cold path skips that: the program could not start sooner
    /// anyway, and a command that fails shows up in the run's status.
    pub async fn launch(self: &Arc<Self>, verify: bool) -> Result<Started, SandboxError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.live.send_modify(|live| *live += 1);
        // Named and guarded before the create call: if that call is cut short after the engine
        // acted on it, the name still finds the container.
        let guard = Guard {
            engine: self.clone(),
            name: format!("compilerd-{}-{n}", self.instance),
        };
        self.events.watch(&guard.name);
        let body = settings::container_body(&self.image, &self.limits, self.labels.clone());
        let create = CreateContainerOptionsBuilder::new()
            .name(&guard.name)
            .build();
        self.docker
            .create_container(Some(create), body)
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "creating a sandbox container", e))?;
        self.docker
            .start_container(&guard.name, None)
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "starting a sandbox container", e))?;
        let exec = self
            .docker
            .create_exec(&guard.name, settings::exec_config(&self.command))
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "creating the program's exec", e))?
            .id;
        let start = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        let (output, input) = match self.docker.start_exec(&exec, Some(start)).await {
            Ok(StartExecResults::Attached { output, input }) => (output, input),
            Ok(StartExecResults::Detached) => unreachable!("started attached"),
            Err(e) => {
                return Err(self.error(SandboxErrorKind::Start, "starting the program's exec", e));
            }
        };
        let mut c = Started {
            guard,
            exec,
            output,
            input,
            early: Vec::new(),
            early_bytes: 0,
        };
        if verify {
            self.exec_running(&mut c).await?;
        }
        Ok(c)
    }

    /// Waits until the engine reports the exec's process running; fails if it ended instead.
    async fn exec_running(&self, c: &mut Started) -> Result<(), SandboxError> {
        let began = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let info = self.docker.inspect_exec(&c.exec).await.map_err(|e| {
                self.error(SandboxErrorKind::Start, "inspecting the program's exec", e)
            })?;
            // Right after the start call the engine may not have marked the exec running yet;
            // it does before it asks for the process, and the pid comes once the process
            // exists. An exec that could not start gets an exit code (126 or 127).
            let ended = info.exit_code.is_some();
            if !ended && info.running == Some(true) && info.pid.unwrap_or(0) > 0 {
                return Ok(());
            }
            if ended || began.elapsed() > super::ENGINE_TIMEOUT {
                // What the engine or the command said about it, if anything.
                let mut said = String::new();
                while let Some(Some(Ok(item))) = c.output.next().now_or_never() {
                    said.push_str(&String::from_utf8_lossy(item.as_ref()));
                }
                return Err(SandboxError::new(
                    SandboxErrorKind::Start,
                    format!(
                        "the image's command {:?} did not stay up in a sandbox container \
                         (exit status {:?}): {}",
                        self.command.argv,
                        info.exit_code,
                        said.trim()
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether a pre-started container can still take a program, as far as we can tell without
    /// asking the engine: its exec's stream has not ended (the engine ends it when the exec or the
    /// container dies, or the engine restarts). The engine is asked only after a run that ended
    /// the way a dead container's does (see `drive`).
    pub fn usable(&self, c: &mut Started) -> bool {
        while let Some(item) = c.output.next().now_or_never() {
            if !c.keep_early(item, self.limits.max_output_bytes) {
                return false;
            }
        }
        true
    }

    /// Resolves when an idle container's exec has died. Cancel-safe: what it printed meanwhile
    /// is kept in the container.
    pub async fn idle(&self, c: &mut Started) {
        loop {
            let item = c.output.next().await;
            if !c.keep_early(item, self.limits.max_output_bytes) {
                return;
            }
        }
    }

    pub fn name(c: &Started) -> &str {
        &c.guard.name
    }

    /// Hands the program over and collects the run. The deadline counts from here.
    ///
    /// `None` means the container may have been dead when the program arrived: the caller runs
    /// the program again in another container. A pooled container can die unnoticed just before
    /// the hand-over: its exec's stream may end a little after the engine already reports the
    /// container stopped. Asking the engine before every hand-over would cost a round trip
    /// (5-15 ms on a busy host, much of a pooled run), so it is asked after the run instead, and
    /// only when the run ended the way a dead container's does (SIGKILL): a container that no
    /// longer runs then may have been dead all along. It may also be that the memory limit
    /// killed the container's idle main process, or that the program killed it; a second run
    /// then ends the same way, and as the last try, its answer stands. A program's run has no
    /// effect outside its container, so running it twice is safe. With `last_try`, the answer
    /// is the run's whatever the container's state (never `None`).
    pub async fn drive(
        &self,
        c: Started,
        program: Bytes,
        last_try: bool,
    ) -> Result<Option<RunOutcome>, SandboxError> {
        let Started {
            guard,
            exec,
            mut output,
            mut input,
            early,
            early_bytes: _,
        } = c;
        let name = guard.name.as_str();
        let deadline = Instant::now() + self.limits.timeout;
        let mut collector = OutputCollector::new(self.limits.max_output_bytes);
        for item in early {
            if let Some((kind, data)) = stream_of(item) {
                // `usable` and `idle` keep no more than the cap.
                let _ = collector.push(kind, &data);
            }
        }

        let mut write = Box::pin(async move {
            // A failed write means the program exited or closed its stdin without reading it
            // all; that is the program's business, and its output still tells the story.
            if input.write_all(&program).await.is_ok() {
                // Half-close: the engine turns this into EOF on the program's stdin and keeps
                // the output flowing.
                let _ = input.shutdown().await;
            }
            // Keep the connection's write half open until the run ends.
            std::future::pending::<()>().await;
        });
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        // The exec's stream normally ends ~1 ms after the program exits, and the exit code is
        // then already recorded. But processes the program left in the background keep the
        // stream open as long as they hold its stdout (seconds, or up to the deadline), whereas
        // a container's main process takes everything with it when it exits. So that a run
        // still ends when the program does, a run that goes on asks for the exit now and then,
        // and once the program has exited, kills what is left after a short grace (the engine
        // may still be delivering the last bytes). The exit status is the program's, read
        // before that kill.
        let mut poll_gap = FIRST_EXIT_POLL;
        let poll = tokio::time::sleep_until(Instant::now() + FIRST_EXIT_POLL);
        tokio::pin!(poll);
        let mut asking: Fuse<BoxFuture<'_, Result<Option<i64>, SandboxError>>> = Fuse::terminated();
        let mut leftovers_killed = false;
        let mut status = None;
        let mut output_done = false;

        let cut = loop {
            if output_done && status.is_some() {
                break None;
            }
            tokio::select! {
                biased;
                () = &mut expired => break Some(Cut::Deadline),
                item = output.next(), if !output_done => {
                    let (kind, data) = match item {
                        Some(Ok(item)) => match stream_of(item) {
                            Some(chunk) => chunk,
                            None => continue,
                        },
                        Some(Err(e)) => {
                            return Err(self.error(SandboxErrorKind::Io, "reading the program's output", e));
                        }
                        None => {
                            output_done = true;
                            if status.is_none() && asking.is_terminated() {
                                poll.as_mut().reset(Instant::now());
                            }
                            continue;
                        }
                    };
                    if collector.push(kind, &data).is_err() {
                        break Some(Cut::OutputCap);
                    }
                }
                result = &mut asking => match result? {
                    Some(code) => {
                        status = Some(code);
                        if !output_done {
                            poll.as_mut().reset(Instant::now() + LEFTOVER_GRACE);
                        }
                    }
                    None => {
                        let gap = if output_done { EXIT_RECHECK } else { poll_gap };
                        poll_gap = (poll_gap * 2).min(MAX_EXIT_POLL);
                        poll.as_mut().reset(Instant::now() + gap);
                    }
                },
                () = &mut poll, if asking.is_terminated() && !leftovers_killed => {
                    if status.is_none() {
                        asking = self.exec_exit(&exec).boxed().fuse();
                        // Re-armed when the answer comes.
                        poll.as_mut().reset(deadline);
                    } else {
                        // Exited, and the output still runs after the grace: leftovers. Their
                        // output up to the kill is still read, to the end of the stream.
                        leftovers_killed = true;
                        let engine = guard.engine.clone();
                        let doomed = name.to_owned();
                        tokio::spawn(async move { engine.kill(&doomed).await });
                    }
                }
                () = &mut write => unreachable!("the writer never finishes"),
            }
        };
        drop(asking);
        if let Some(cut) = cut {
            // Hang up before the kill: the engine finishes a process's exit only once its
            // output is delivered, so a kill while we leave a flood unread would stall.
            drop(output);
            drop(write);
            // The answer does not wait for the engine to confirm the kill (that can take a second
            // on a loaded host); the guard's forced removal follows it either way. Killing the
            // container kills the exec'd program with it.
            let engine = guard.engine.clone();
            let doomed = name.to_owned();
            tokio::spawn(async move { engine.kill(&doomed).await });
            return Ok(Some(match cut {
                Cut::Deadline => RunOutcome::TimedOut {
                    output: collector.into_chunks(),
                },
                Cut::OutputCap => RunOutcome::OutputTooLarge,
            }));
        }

        let status = status.unwrap_or_default();
        let output = collector.into_chunks();
        // The engine's OOMKilled flag cannot be trusted on its own: it is only set when the
        // container stops, and even then, when the killed process was the last one, the cgroup is
        // gone before the engine hears of the OOM (a plain exit 137, nearly always, on the Debian
        // 12 engine this project targets). Inside a sandbox only the kernel's OOM killer and the
        // program itself send SIGKILL (our cuts returned above; a kill of leftovers comes after
        // the status was read), so a SIGKILL exit counts as the memory limit. That includes the killer picking the container's idle main
        // process: the container stops, and the exec'd program dies with it (SIGKILL, or an exec
        // the engine has forgotten, which `exec_exit` reports as SIGKILL).
        if status == SIGKILL_EXIT {
            if !last_try && !self.still_running(name).await {
                tracing::info!(
                    container = name,
                    "sandbox container stopped under a run; running the program again elsewhere"
                );
                return Ok(None);
            }
            return Ok(Some(RunOutcome::OutOfMemory { output }));
        }
        // A child killed by the limit while the program went on to fail: the engine announced
        // the OOM as an event (its OOMKilled flag would only be set once the container stops).
        if status != 0
            && self
                .events
                .oom_before_end(name, &exec, EXIT_EVENT_WAIT)
                .await
        {
            return Ok(Some(RunOutcome::OutOfMemory { output }));
        }
        Ok(Some(RunOutcome::Exited { status, output }))
    }

    /// The exec'd program's exit status, or `None` while it runs (or is still starting: the
    /// engine marks an exec running a little after the start call returns). An exec that could
    /// not start gets an exit code too (126 or 127). An exec the engine no longer knows went with
    /// its container (the engine forgets a stopped container's execs), so its program was
    /// killed: SIGKILL.
    async fn exec_exit(&self, exec: &str) -> Result<Option<i64>, SandboxError> {
        match self.docker.inspect_exec(exec).await {
            Ok(info) => Ok(info.exit_code.filter(|_| info.running != Some(true))),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(Some(SIGKILL_EXIT)),
            Err(e) => Err(self.error(SandboxErrorKind::Io, "reading the program's exit status", e)),
        }
    }

    /// Whether the engine says the container runs; unknown counts as yes (the run's answer
    /// stands).
    async fn still_running(&self, name: &str) -> bool {
        match self.docker.inspect_container(name, None).await {
            Ok(info) => info.state.and_then(|s| s.running).unwrap_or(false),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(_) => true,
        }
    }

    /// SIGKILL now; removal follows when the guard drops. Errors are ignored: a container that
    /// already exited is what we wanted, and removal kills it anyway.
    async fn kill(&self, name: &str) {
        let opts = KillContainerOptionsBuilder::new().signal("KILL").build();
        if let Err(e) = self.docker.kill_container(name, Some(opts)).await {
            tracing::debug!(container = name, error = %e, "kill failed (already exited?)");
        }
    }

    async fn remove(&self, name: &str) {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=3 {
            match self.docker.remove_container(name, Some(opts.clone())).await {
                // 404: never created, or already gone. 409: a removal is already under way.
                Ok(())
                | Err(DockerError::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => return,
                Err(e) if attempt == 3 => {
                    tracing::warn!(container = name, error = %e,
                        "could not remove a sandbox container; the next startup sweep will");
                }
                Err(e) => {
                    tracing::debug!(container = name, error = %e, "removal failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
    }

    /// Containers of this sandbox not yet removed.
    pub fn live(&self) -> usize {
        *self.live.borrow()
    }

    /// How many removals are under way, and every change of that number.
    pub fn watch_removing(&self) -> watch::Receiver<usize> {
        self.removing.subscribe()
    }

    /// Resolves when every container of this sandbox has been removed (or given up on).
    pub async fn all_removed(&self) {
        let mut rx = self.live.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Which stream a piece of the exec's output belongs to; `None` for what is not program output.
fn stream_of(item: LogOutput) -> Option<(StreamKind, Bytes)> {
    match item {
        // Console is what the engine sends for a TTY; ours have none, but it is stdout if seen.
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            Some((StreamKind::Stdout, message))
        }
        LogOutput::StdErr { message } => Some((StreamKind::Stderr, message)),
        LogOutput::StdIn { .. } => None,
    }
}

/// See `Engine::error`; also used before an `Engine` exists.
pub(super) fn engine_error(
    host: &str,
    image: &str,
    kind: SandboxErrorKind,
    doing: &str,
    e: DockerError,
) -> SandboxError {
    match e {
        DockerError::SocketNotFoundError(_)
        | DockerError::HyperLegacyError { .. }
        | DockerError::IOError { .. }
        | DockerError::RequestTimeoutError => SandboxError::new(
            SandboxErrorKind::Unavailable,
            format!(
                "{doing}: the Docker engine at {host} is not reachable ({e}); start it \
                 (`systemctl start docker`, or `dockerd &`) or point DOCKER_HOST at a running engine"
            ),
        ),
        DockerError::DockerResponseServerError {
            status_code: 404,
            ref message,
        } if message.contains("image") => SandboxError::new(
            SandboxErrorKind::ImageMissing,
            format!(
                "{doing}: image {image} not found ({message}); build it with \
                 scripts/build-test-image.sh {image}, or load it with docker load / docker import"
            ),
        ),
        e => SandboxError::new(kind, format!("{doing}: {e}")),
    }
}
