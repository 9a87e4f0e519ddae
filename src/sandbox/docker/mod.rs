//! Docker Engine API backend: one fresh, hardened container per run, talked to over the
//! engine's socket (bollard), never through the `docker` CLI. The program goes to the image's
//! command, as the container's main process or as an exec in it (see `engine` for which and why).
//!
//! - `settings`: the one place that decides the container's hardening and the exec's;
//! - `engine`: one container's life, from create to removal;
//! - `run`: one program's run in a started container;
//! - `pool`: pre-started containers waiting on stdin, refilled in the background;
//! - `runtime`: the OCI runtime the containers run under (runc, or gVisor's runsc);
//! - `events`: the engine's events about our containers (OOM kills, ended execs);
//! - `sweep`: labels, owners, and removal of what a crashed daemon left behind.

mod engine;
mod events;
mod pool;
mod run;
pub mod runtime;
pub mod settings;
pub mod sweep;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bytes::Bytes;
use tokio::task::JoinHandle;

use self::engine::{Engine, engine_error};
use self::pool::Pool;
use self::settings::ImageCommand;
use super::job::{Job, LiveInput, StageOutcome, legacy_input};
use super::relay::InstalledRelay;
use super::supervise::Report;
use super::{Limits, LiveOutput, RunOutcome, Sandbox, SandboxError, SandboxErrorKind};
use crate::hooks::Hooks;

/// Where bollard looks when DOCKER_HOST is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Engine calls that take longer than this count as an unreachable engine. The exec's stream
/// is not bounded by it (runs have their own deadline).
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct DockerOptions {
    pub image: String,
    /// Containers kept started and waiting for a program; 0 disables the pool.
    pub pool_size: usize,
    /// Whether pool containers get an exec to take the program when the engine is quiet (see
    /// `engine`): faster runs at light load, no cost under a sustained one. Off only to test the
    /// other hand-over.
    pub arm: bool,
    /// Replaces the image's Cmd, e.g. with a language's formatter; `None`: the image's.
    pub command: Option<Vec<String>>,
    /// The engine's OCI runtime for the containers (`runsc`: gVisor); `None`: the engine's
    /// default.
    pub runtime: Option<String>,
}

impl DockerOptions {
    pub fn new(image: impl Into<String>, pool_size: usize) -> DockerOptions {
        DockerOptions {
            image: image.into(),
            pool_size,
            arm: true,
            command: None,
            runtime: None,
        }
    }
}

pub struct DockerSandbox {
    engine: Arc<Engine>,
    pool: Option<Arc<Pool>>,
    filler: Mutex<Option<JoinHandle<()>>>,
    /// Follows the engine's events for `engine.events`; aborted at shutdown.
    follower: JoinHandle<()>,
    fingerprint: String,
    hooks: Arc<dyn Hooks>,
}

impl DockerSandbox {
    /// Connects to the engine (DOCKER_HOST or the default socket), negotiates the API version,
    /// checks the image, sweeps containers a previous run left behind and fills the pool.
    pub async fn connect(
        opts: DockerOptions,
        limits: Limits,
        hooks: Arc<dyn Hooks>,
    ) -> Result<DockerSandbox, SandboxError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
        Self::connect_to(&host, opts, limits, hooks).await
    }

    /// `connect` with an explicit engine address (`unix://…`, `tcp://…`, `http://…`), for
    /// embedders and tests that must not touch the process environment.
    pub async fn connect_to(
        host: &str,
        opts: DockerOptions,
        limits: Limits,
        hooks: Arc<dyn Hooks>,
    ) -> Result<DockerSandbox, SandboxError> {
        let image = opts.image.as_str();
        let unavailable =
            |e| engine_error(host, image, SandboxErrorKind::Unavailable, "connecting", e);
        let docker = Docker::connect_with_host(host)
            .map_err(unavailable)?
            .with_timeout(ENGINE_TIMEOUT)
            .negotiate_version()
            .await
            .map_err(unavailable)?;

        let (image_id, command) = match docker.inspect_image(image).await {
            Ok(info) => (
                info.id.unwrap_or_default(),
                info.config
                    .as_ref()
                    .and_then(|c| ImageCommand::with_cmd(c, opts.command.clone())),
            ),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 400,
                message,
            }) => {
                return Err(SandboxError::new(
                    SandboxErrorKind::ImageMissing,
                    format!(
                        "image {image} not found on the Docker engine at {host} ({message}); \
                         build it with scripts/build-test-image.sh {image}, or load it with \
                         docker load / docker import"
                    ),
                ));
            }
            Err(e) => {
                return Err(engine_error(
                    host,
                    image,
                    SandboxErrorKind::Unavailable,
                    "inspecting the image",
                    e,
                ));
            }
        };

        // Programs go to the image's command, so the image must have one.
        let Some(command) = command else {
            return Err(SandboxError::new(
                SandboxErrorKind::Start,
                format!(
                    "image {image} has no command (neither Entrypoint nor Cmd); a sandbox image's \
                     command must read a program on stdin and run it"
                ),
            ));
        };

        let runtime = runtime::resolve(&docker, host, image, opts.runtime.as_deref()).await?;

        let orphans = sweep::orphans(&docker).await.map_err(|e| {
            engine_error(
                host,
                image,
                SandboxErrorKind::Unavailable,
                "listing old containers",
                e,
            )
        })?;
        // In the background: the engine may be unable to remove one (a wedged runtime, e.g. a
        // gVisor sandbox stopped under ptrace), and then the call waits out the client's whole
        // timeout; startup (once per sandbox, i.e. per language and formatter) must not wait
        // with it. Orphans are dead daemons' containers, so nothing here needs them gone first.
        if !orphans.is_empty() {
            let docker = docker.clone();
            tokio::spawn(async move {
                let swept = sweep::remove_all(&docker, orphans).await;
                if swept > 0 {
                    tracing::info!(
                        count = swept,
                        "removed sandbox containers left by a previous daemon"
                    );
                }
            });
        }

        // The command is in it: the same image with another command (a formatter) answers the
        // same program differently; so is the runtime.
        let fingerprint = format!(
            "backend=docker;image={image}@{image_id};command={:?};runtime={};syscalls={};{}",
            command.argv,
            runtime.name,
            crate::sandbox::syscalls::fingerprint(),
            limits.fingerprint()
        );
        let relay = InstalledRelay::install().map_err(|e| {
            SandboxError::new(
                SandboxErrorKind::Start,
                format!("cannot write the output relay for the sandboxes: {e}"),
            )
        })?;
        let engine = Engine::new(
            docker,
            host.to_owned(),
            opts.image.clone(),
            command,
            Arc::new(relay),
            limits,
            runtime.clone(),
        );
        let follower = engine
            .events
            .follow(engine.docker.clone(), &engine.instance);
        let filled = if opts.pool_size > 0 {
            Pool::start(engine.clone(), hooks.clone(), opts.pool_size, opts.arm)
                .await
                .map(|(pool, filler)| (Some(pool), Some(filler)))
        } else {
            // Without a pool, one throwaway container proves the engine accepts our settings
            // (CPU and memory ranges, init, cgroup namespace) and that the image's command stays
            // up, so a bad setting fails the startup instead of every request.
            match engine.launch().await {
                Ok(mut c) => engine.arm(&mut c).await.map(|()| (None, None)),
                Err(e) => Err(e),
            }
        };
        let (pool, filler) = match filled {
            Ok(filled) => filled,
            Err(e) => {
                // The caller is likely to exit on this error: remove what was created first.
                let _ = tokio::time::timeout(ENGINE_TIMEOUT, engine.all_removed()).await;
                follower.abort();
                return Err(runtime::explain_start_failure(&runtime, e));
            }
        };
        tracing::info!(
            host,
            image,
            image_id,
            runtime = runtime.name,
            gvisor = runtime.gvisor,
            pool = opts.pool_size,
            instance = engine.instance,
            "docker sandbox ready"
        );
        tracing::info!("docker: {}", crate::sandbox::syscalls::describe());
        Ok(DockerSandbox {
            engine,
            pool,
            filler: Mutex::new(filler),
            follower,
            fingerprint,
            hooks,
        })
    }

    /// The value of this sandbox's `compilerd.instance` label, which every container it
    /// creates carries.
    pub fn instance(&self) -> &str {
        &self.engine.instance
    }

    /// Containers of this sandbox that exist or are being created or removed.
    pub fn live_containers(&self) -> usize {
        self.engine.live()
    }
}

impl DockerSandbox {
    /// Runs `input` (the relay's header, then a legacy program) under `limits`: the language's,
    /// or a run's own (its memory and processes set on the container first).
    async fn execute(
        &self,
        input: Bytes,
        limits: &Limits,
        timeout: Duration,
        (live, mut live_input): (Option<LiveOutput>, Option<LiveInput>),
        report: &mut Report,
    ) -> Result<RunOutcome, SandboxError> {
        let own = &self.engine.limits;
        // A second container when the first may have been dead at hand-over (see `run`). Not
        // more: a program that gets its container killed would have it killed again, and that
        // answer stands.
        for last_try in [false, true] {
            // `take` reports a pool found empty to the hooks.
            let pooled = match &self.pool {
                Some(pool) => pool.take().await,
                None => None,
            };
            // Cold: the same container as the pool's; the program goes to its main process.
            let container = match pooled {
                Some(c) => c,
                None => self.engine.launch().await?,
            };
            if limits.memory_bytes != own.memory_bytes || limits.pids != own.pids {
                self.engine.resize(container.name(), limits).await?;
            }
            *report = Report::default();
            self.hooks.run_handed_over();
            let driven = run::drive(
                &self.engine,
                container,
                input.clone(),
                timeout,
                limits.max_output_bytes,
                last_try,
                live.clone(),
                report,
                live_input.take(),
            );
            if let Some(outcome) = driven.await? {
                return Ok(outcome);
            }
        }
        unreachable!("the last try always has an outcome")
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    async fn run(
        &self,
        program: Bytes,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        let limits = self.engine.limits.clone();
        let input = legacy_input(&program);
        self.execute(
            input,
            &limits,
            limits.timeout,
            (live, None),
            &mut Report::default(),
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
                (live, input),
                &mut report,
            )
            .await?;
        Ok(StageOutcome::new(outcome, report, started.elapsed()))
    }

    fn status(&self) -> String {
        match &self.pool {
            Some(pool) => format!("pool {}/{}", pool.ready(), pool.target()),
            None => "pool off".to_owned(),
        }
    }

    async fn shutdown(&self) {
        if let Some(pool) = &self.pool {
            pool.close();
        }
        let filler = self.filler.lock().unwrap().take();
        if let Some(filler) = filler {
            let _ = filler.await;
        }
        // Failed removals now give up after a few attempts.
        self.engine.close();
        // Bounded: an engine that hangs should not hold the daemon's exit hostage; the next
        // startup sweep covers what is left.
        if tokio::time::timeout(ENGINE_TIMEOUT * 2, self.engine.all_removed())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.engine.live(),
                "gave up waiting for sandbox containers to be removed"
            );
        }
        // Whatever carries our instance label and is still there: a removal that gave up, a
        // create the engine finished after it failed for us.
        match sweep::sweep_instance(&self.engine.docker, &self.engine.instance).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed sandbox containers left at shutdown"),
            Err(e) => tracing::warn!(error = %e,
                "could not list this daemon's sandbox containers at shutdown; the next startup \
                 sweep will remove them"),
        }
        self.follower.abort();
    }
}

impl Drop for DockerSandbox {
    fn drop(&mut self) {
        // Without a shutdown call the filler would keep the pool topped up forever.
        if let Some(pool) = &self.pool {
            pool.close();
        }
        self.follower.abort();
    }
}
