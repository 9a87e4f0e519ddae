//! One sandbox container's life: create, attach, start, optionally *arm*, and be removed whatever
//! happened. How a program runs in it is `run`'s business.
//!
//! A started container's main process is the image's command under the output relay (see
//! `relay`), attached before the start (so that no byte is missed) and blocked reading its stdin.
//! A program can go two ways:
//!
//! - to the main process's stdin. The container costs the engine nothing more than its create,
//!   start and exit. The run ends when the relay reports the exit; the engine alone would end the
//!   attach stream only after tearing the container down, ~40 ms after the program's last byte.
//! - to an *exec* of the same command, started attached beforehand ("arming" the container), which
//!   blocks reading its own stdin. Starting it costs the engine a `runc exec` (~45 ms of CPU on
//!   the 2-core test machine, a quarter of a container's whole cost). After the run the main
//!   process is let go (its stdin closes), so the container then ends as it would have.
//!
//! So the pool arms its containers only while the engine has nothing better to do (see `pool`):
//! at light load every run gets the fast hand-over, under sustained load, which is bound by the
//! engine's CPU, runs use the cheap one. Both ways run in the same container with the same
//! settings (`settings`); only the process that reads the program differs.
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
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::Events;
use super::runtime::Runtime;
use super::settings::{self, ImageCommand};
use super::sweep::{LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER, current_owner};
use crate::sandbox::relay::InstalledRelay;
use crate::sandbox::{Limits, SandboxError, SandboxErrorKind};

/// Removal attempts before a failure is logged as a warning (and, when shutting down, given up).
const REMOVAL_ATTEMPTS: u32 = 3;
/// The longest pause between two attempts to remove a container while the engine fails.
const REMOVAL_RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;
pub(super) type InputSink = Pin<Box<dyn AsyncWrite + Send>>;

/// What every container of one `DockerSandbox` shares.
pub(super) struct Engine {
    pub docker: Docker,
    /// Where the engine is, for error messages.
    pub host: String,
    pub image: String,
    /// The image's Entrypoint + Cmd and working directory, which an arming exec runs.
    pub command: ImageCommand,
    /// The output relay on the host, mounted into every container.
    relay: Arc<InstalledRelay>,
    pub limits: Limits,
    /// The OCI runtime of the containers.
    oci_runtime: Runtime,
    pub instance: String,
    labels: HashMap<String, String>,
    pub events: Arc<Events>,
    counter: AtomicU64,
    /// Containers created (or being created) and not yet removed.
    live: watch::Sender<usize>,
    /// Of those, the ones whose removal is under way.
    removing: watch::Sender<usize>,
    /// The sandbox is shutting down: failed removals stop retrying.
    closing: watch::Sender<bool>,
    /// Guards may be dropped outside the runtime's context (a cancelled run); removal still
    /// needs somewhere to run.
    runtime: tokio::runtime::Handle,
}

/// A process of a sandbox container we are attached to: its main process, or an exec.
pub(super) struct Attached {
    pub output: OutputStream,
    pub input: InputSink,
    /// What it printed before it had a program (a banner, say). A cold run would show it first,
    /// so a pooled run does too.
    pub early: Vec<LogOutput>,
    early_bytes: usize,
}

impl Attached {
    fn new(output: OutputStream, input: InputSink) -> Attached {
        Attached {
            output,
            input,
            early: Vec::new(),
            early_bytes: 0,
        }
    }

    /// Keeps one item of output that came before the program; false when the stream ended or
    /// failed (the process or its container died), or when it printed more than any run may.
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

    /// Takes what it printed so far without waiting; false as `keep_early`.
    fn still_up(&mut self, cap: usize) -> bool {
        while let Some(item) = self.output.next().now_or_never() {
            if !self.keep_early(item, cap) {
                return false;
            }
        }
        true
    }

    /// Resolves when the process is gone. Cancel-safe: what it printed meanwhile is kept.
    async fn ended(&mut self, cap: usize) {
        loop {
            let item = self.output.next().await;
            if !self.keep_early(item, cap) {
                return;
            }
        }
    }
}

/// An exec of the image's command, started in a container and blocked reading its stdin.
pub(super) struct Exec {
    pub id: String,
    pub io: Attached,
}

/// A started container whose main process waits on its stdin, and, once armed, an exec too.
pub(super) struct Started {
    pub guard: Guard,
    /// The engine's id of the container, which names its cgroup on the host.
    pub id: String,
    pub main: Attached,
    pub exec: Option<Exec>,
}

impl Started {
    pub fn name(&self) -> &str {
        &self.guard.name
    }

    pub fn armed(&self) -> bool {
        self.exec.is_some()
    }
}

/// Removes the container it names when dropped.
pub(super) struct Guard {
    pub engine: Arc<Engine>,
    pub name: String,
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
        relay: Arc<InstalledRelay>,
        limits: Limits,
        oci_runtime: Runtime,
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
            relay,
            limits,
            oci_runtime,
            instance,
            labels,
            events: Arc::new(Events::default()),
            counter: AtomicU64::new(0),
            live: watch::Sender::new(0),
            removing: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Turns an engine error into a `SandboxError` that says what we were doing and, when the
    /// engine itself is gone, where we looked for it.
    pub fn error(&self, kind: SandboxErrorKind, doing: &str, e: DockerError) -> SandboxError {
        engine_error(&self.host, &self.image, kind, doing, e)
    }

    /// Creates, attaches to and starts one container, whose main process then blocks reading
    /// its stdin until a program arrives: that is what lets a started container wait in the pool.
    pub async fn launch(self: &Arc<Self>) -> Result<Started, SandboxError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.live.send_modify(|live| *live += 1);
        // Named and guarded before the create call: if that call is cut short after the engine
        // acted on it, the name still finds the container.
        let guard = Guard {
            engine: self.clone(),
            name: format!("compilerd-{}-{n}", self.instance),
        };
        self.events.watch(&guard.name);
        let body = settings::container_body(
            &self.image,
            &self.command,
            self.relay.path(),
            &self.limits,
            self.labels.clone(),
            &self.oci_runtime,
        );
        let create = CreateContainerOptionsBuilder::new()
            .name(&guard.name)
            .build();
        let id = self
            .docker
            .create_container(Some(create), body)
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "creating a sandbox container", e))?
            .id;
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
            id,
            main: Attached::new(attached.output, attached.input),
            exec: None,
        })
    }

    /// Starts an exec of the image's command in `c`, attached, and returns once the engine
    /// reports its process running, so that a command that cannot stay up fails here (at
    /// startup, where this is the check of the image's command) rather than as a run.
    pub async fn arm(&self, c: &mut Started) -> Result<(), SandboxError> {
        let id = self
            .docker
            .create_exec(c.name(), settings::exec_config(&self.command))
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "creating the program's exec", e))?
            .id;
        let start = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        let io = match self.docker.start_exec(&id, Some(start)).await {
            Ok(StartExecResults::Attached { output, input }) => Attached::new(output, input),
            Ok(StartExecResults::Detached) => unreachable!("started attached"),
            Err(e) => {
                return Err(self.error(SandboxErrorKind::Start, "starting the program's exec", e));
            }
        };
        let mut exec = Exec { id, io };
        self.exec_running(&mut exec).await?;
        c.exec = Some(exec);
        Ok(())
    }

    /// Waits until the engine reports the exec's process running; fails if it ended instead.
    async fn exec_running(&self, exec: &mut Exec) -> Result<(), SandboxError> {
        let began = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let info = self.docker.inspect_exec(&exec.id).await.map_err(|e| {
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
                while let Some(Some(Ok(item))) = exec.io.output.next().now_or_never() {
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
    /// asking the engine: none of its streams has ended (the engine ends them when the process
    /// or the container dies, or the engine restarts). The engine is asked only after a run
    /// that ended the way a dead container's does (see `run`).
    pub fn usable(&self, c: &mut Started) -> bool {
        let cap = self.limits.max_output_bytes;
        c.main.still_up(cap) && c.exec.as_mut().is_none_or(|e| e.io.still_up(cap))
    }

    /// Resolves when an idle container's main process or exec has died. Cancel-safe.
    pub async fn idle(&self, c: &mut Started) {
        let cap = self.limits.max_output_bytes;
        match &mut c.exec {
            Some(exec) => {
                tokio::select! {
                    () = c.main.ended(cap) => {}
                    () = exec.io.ended(cap) => {}
                }
            }
            None => c.main.ended(cap).await,
        }
    }

    /// Sends `sig` (a name, e.g. INT) to every process of the program's user in container `name`:
    /// an exec of that user, since the relay (a user of its own) cannot signal them. Errors are
    /// ignored: a program that already ended needs no signal.
    pub async fn signal_program(&self, name: &str, sig: &str) {
        let config = bollard::models::ExecConfig {
            user: Some(settings::SANDBOX_USER.to_owned()),
            privileged: Some(false),
            cmd: Some(vec![
                "kill".to_owned(),
                "-s".to_owned(),
                sig.to_owned(),
                "-1".to_owned(),
            ]),
            ..Default::default()
        };
        let Ok(exec) = self.docker.create_exec(name, config).await else {
            return;
        };
        let start = StartExecOptions {
            detach: true,
            tty: false,
            output_capacity: None,
        };
        let _ = self.docker.start_exec(&exec.id, Some(start)).await;
    }

    /// Gives a started container a run's own memory and process limits, before its program.
    pub async fn resize(&self, name: &str, limits: &Limits) -> Result<(), SandboxError> {
        let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
        let body = bollard::models::ContainerUpdateBody {
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(i64::from(limits.pids)),
            ..Default::default()
        };
        self.docker
            .update_container(name, body)
            .await
            .map_err(|e| self.error(SandboxErrorKind::Start, "setting a run's own limits", e))
    }

    /// SIGKILL now; removal follows when the guard drops. Errors are ignored: a container that
    /// already exited is what we wanted, and removal kills it anyway.
    pub async fn kill(&self, name: &str) {
        let opts = KillContainerOptionsBuilder::new().signal("KILL").build();
        if let Err(e) = self.docker.kill_container(name, Some(opts)).await {
            tracing::debug!(container = name, error = %e, "kill failed (already exited?)");
        }
    }

    /// Removes `name`, retrying while the engine fails: an engine that is down (stopped,
    /// restarting) leaves its containers behind, exited, and nothing else would ever remove
    /// them while this daemon lives (the startup sweep only takes a dead daemon's). The retries
    /// back off to one every few seconds and keep the container counted as live, so that the
    /// pool does not pile creations onto an engine that cannot remove. Once the sandbox shuts
    /// down they stop after a few attempts; `sweep_instance` and the next startup sweep cover
    /// what is left.
    async fn remove(&self, name: &str) {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let mut delay = Duration::from_millis(200);
        let mut closing = self.closing.subscribe();
        for attempt in 1u32.. {
            match self.docker.remove_container(name, Some(opts.clone())).await {
                // 404: never created, or already gone. 409: a removal is already under way.
                Ok(())
                | Err(DockerError::DockerResponseServerError {
                    status_code: 404 | 409,
                    ..
                }) => {
                    if attempt > REMOVAL_ATTEMPTS {
                        tracing::info!(
                            container = name,
                            attempt,
                            "sandbox container removed at last"
                        );
                    }
                    return;
                }
                Err(e) if attempt >= REMOVAL_ATTEMPTS && *closing.borrow() => {
                    tracing::warn!(container = name, error = %e,
                        "could not remove a sandbox container while shutting down; the next \
                         startup sweep will");
                    return;
                }
                Err(e) if attempt == REMOVAL_ATTEMPTS => {
                    tracing::warn!(container = name, error = %e,
                        "could not remove a sandbox container; retrying until the engine takes it");
                }
                Err(e) => {
                    tracing::debug!(container = name, error = %e, "removal failed, retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                // Shutting down: one more attempt now, then give up if it fails.
                _ = closing.wait_for(|c| *c) => {}
            }
            delay = (delay * 2).min(REMOVAL_RETRY_MAX);
        }
    }

    /// From now on removals that fail give up after a few attempts (the sandbox shuts down).
    pub fn close(&self) {
        self.closing.send_replace(true);
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
