//! One sandbox container's life: create, attach, start, take a program, collect its output under
//! the cap and the deadline, read how it ended, and be removed whatever happened.
//!
//! Removal is tied to a guard rather than to the happy path: every container is named before it is
//! created, and the guard that owns the name removes it when dropped, whether the run finished,
//! failed, was killed or was cancelled. The engine counts live containers so that `shutdown` can
//! wait until the last one is gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::settings;
use super::sweep::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER, current_owner};
use crate::sandbox::output::OutputCollector;
use crate::sandbox::{Limits, RunOutcome, SandboxError, SandboxErrorKind, StreamKind};

/// 128 + SIGKILL.
const SIGKILL_EXIT: i64 = 137;

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
    pub limits: Limits,
    pub instance: String,
    labels: HashMap<String, String>,
    counter: AtomicU64,
    /// Containers created (or being created) and not yet removed.
    live: watch::Sender<usize>,
    /// Guards may be dropped outside the runtime's context (a cancelled run); removal still
    /// needs somewhere to run.
    runtime: tokio::runtime::Handle,
}

/// A container that is started, attached and blocked reading its stdin.
pub(super) struct Started {
    guard: Guard,
    output: OutputStream,
    input: InputSink,
    /// What the image's command printed before it had a program (a banner, say). A cold run
    /// would show it first, so a pooled run does too.
    early: Vec<LogOutput>,
    early_bytes: usize,
}

impl Started {
    /// Keeps one item of output that came before the program; false when the stream ended or
    /// failed (the container died), or when the command printed more than any run may.
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
        // Decrements `live` even if the runtime drops the task unpolled (shutting down).
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
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Engine {
    pub fn new(docker: Docker, host: String, image: String, limits: Limits) -> Arc<Engine> {
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
            limits,
            instance,
            labels,
            counter: AtomicU64::new(0),
            live: watch::Sender::new(0),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Turns an engine error into a `SandboxError` that says what we were doing and, when the
    /// engine itself is gone, where we looked for it.
    pub fn error(&self, kind: SandboxErrorKind, doing: &str, e: DockerError) -> SandboxError {
        engine_error(&self.host, &self.image, kind, doing, e)
    }

    /// Creates, attaches to and starts one container. Attaching before the start means no byte
    /// of output can be missed; the image's command then blocks reading stdin until a program
    /// arrives, which is what lets a started container wait in the pool.
    pub async fn launch(self: &Arc<Self>) -> Result<Started, SandboxError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.live.send_modify(|live| *live += 1);
        // Named and guarded before the create call: if that call is cut short after the engine
        // acted on it, the name still finds the container.
        let guard = Guard {
            engine: self.clone(),
            name: format!("compilerd-{}-{n}", self.instance),
        };
        let body = settings::container_body(&self.image, &self.limits, self.labels.clone());
        let create = CreateContainerOptionsBuilder::new()
            .name(&guard.name)
            .build();
        self.docker
            .create_container(Some(create), body)
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "creating a sandbox container", e))?;
        let attach = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(&guard.name, Some(attach))
            .await
            .map_err(|e| {
                self.error(
                    SandboxErrorKind::Start,
                    "attaching to a sandbox container",
                    e,
                )
            })?;
        self.docker
            .start_container(&guard.name, None)
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "starting a sandbox container", e))?;
        Ok(Started {
            guard,
            output: attached.output,
            input: attached.input,
            early: Vec::new(),
            early_bytes: 0,
        })
    }

    /// Whether a pre-started container can still take a program: its attach stream has not ended
    /// (the engine closes it when the container dies or restarts) and the engine says it runs.
    pub async fn usable(&self, c: &mut Started) -> bool {
        while let Some(item) = c.output.next().now_or_never() {
            if !c.keep_early(item, self.limits.max_output_bytes) {
                return false;
            }
        }
        match self.docker.inspect_container(&c.guard.name, None).await {
            Ok(info) => info.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Resolves when an idle container has died. Cancel-safe: what it printed meanwhile is kept
    /// in the container.
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
    pub async fn drive(&self, c: Started, program: Bytes) -> Result<RunOutcome, SandboxError> {
        let Started {
            guard,
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
                // Half-close: with stdin_once the engine turns this into EOF on the program's
                // stdin and keeps the output flowing.
                let _ = input.shutdown().await;
            }
            // Keep the connection's write half open until the run ends.
            std::future::pending::<()>().await;
        });
        // The wait request goes out now, alongside the program, rather than after the output
        // ends: it saves a round trip on every run.
        let exit = self.exit_status(name);
        tokio::pin!(exit);
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        let mut status = None;
        let mut output_done = false;

        // Done when the output has ended (the engine may report the exit before it delivered
        // the last bytes) and the exit is known (the program may close both streams and go on).
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
                            continue;
                        }
                    };
                    if collector.push(kind, &data).is_err() {
                        break Some(Cut::OutputCap);
                    }
                }
                result = &mut exit, if status.is_none() => status = Some(result?),
                () = &mut write => unreachable!("the writer never finishes"),
            }
        };
        if let Some(cut) = cut {
            // Hang up before the kill: the engine finishes a container's exit only once its
            // output is delivered, so a kill while we leave a flood unread would stall.
            drop(output);
            drop(write);
            // The answer does not wait for the engine to confirm the kill (that can take a second
            // on a loaded host); the guard's forced removal follows it either way.
            let engine = guard.engine.clone();
            let doomed = name.to_owned();
            tokio::spawn(async move { engine.kill(&doomed).await });
            return Ok(match cut {
                Cut::Deadline => RunOutcome::TimedOut {
                    output: collector.into_chunks(),
                },
                Cut::OutputCap => RunOutcome::OutputTooLarge,
            });
        }

        let status = status.unwrap_or_default();
        let output = collector.into_chunks();
        // The engine's OOMKilled flag cannot be trusted on its own: when the killed process was
        // the last one, the cgroup is gone before the engine hears of the OOM, and it reports a
        // plain exit 137 (nearly always, on the Debian 12 engine this project targets). Inside
        // a sandbox only the kernel's OOM killer and the program itself send SIGKILL (our own
        // kills returned above), so a SIGKILL exit counts as the memory limit.
        if status == SIGKILL_EXIT {
            return Ok(RunOutcome::OutOfMemory { output });
        }
        // A child killed by the limit while the program went on to fail: the container outlived
        // the OOM, so an engine that hears of OOMs at all has set its flag.
        if status != 0 {
            let info = self
                .docker
                .inspect_container(name, None)
                .await
                .map_err(|e| self.error(SandboxErrorKind::Io, "inspecting a finished run", e))?;
            if info.state.and_then(|s| s.oom_killed).unwrap_or(false) {
                return Ok(RunOutcome::OutOfMemory { output });
            }
        }
        Ok(RunOutcome::Exited { status, output })
    }

    async fn exit_status(&self, name: &str) -> Result<i64, SandboxError> {
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a nonzero exit as an error; for us it is just the status.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => {
                Err(self.error(SandboxErrorKind::Io, "waiting for the program to exit", e))
            }
            None => Err(SandboxError::new(
                SandboxErrorKind::Io,
                "waiting for the program to exit: the engine closed the wait without a status",
            )),
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

    /// Resolves when every container of this sandbox has been removed (or given up on).
    pub async fn all_removed(&self) {
        let mut rx = self.live.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Which stream a piece of attach output belongs to; `None` for what is not program output.
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
