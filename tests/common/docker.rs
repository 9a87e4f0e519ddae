//! Helpers for the Docker backend's tests: a sandbox against the real engine with small limits,
//! hooks that record pool events, and the end-of-test check that nothing of ours is left.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use bytes::Bytes;
use compilerd::hooks::Hooks;
use compilerd::sandbox::docker::sweep::LABEL_INSTANCE;
use compilerd::sandbox::docker::{DockerOptions, DockerSandbox};
use compilerd::sandbox::{Chunk, Limits, RunOutcome, Sandbox, StreamKind};
use tokio::sync::watch;

pub fn image() -> String {
    std::env::var("COMPILERD_TEST_IMAGE").unwrap_or_else(|_| "compilerd-test".to_owned())
}

/// The OCI runtime the tests' containers run under: COMPILERD_TEST_RUNTIME (e.g. `runsc`, so that
/// the same suites run under gVisor), else the engine's default.
pub fn runtime() -> Option<String> {
    std::env::var("COMPILERD_TEST_RUNTIME")
        .ok()
        .filter(|r| !r.is_empty())
}

/// Whether the tests run under gVisor, where a few things differ by design (see README, "gVisor").
pub fn gvisor() -> bool {
    runtime().as_deref() == Some("runsc")
}

/// `opts` under the tests' runtime, unless they name one.
pub fn with_runtime(mut opts: DockerOptions) -> DockerOptions {
    if opts.runtime.is_none() {
        opts.runtime = runtime();
    }
    opts
}

/// Small limits so the adversarial tests end quickly.
pub fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(2),
        max_output_bytes: 64 << 10,
        memory_bytes: 64 << 20,
        pids: 32,
        cpus: 1.0,
        tmpfs_bytes: 8 << 20,
    }
}

/// Records the pool's hooks; `ready` lets a test wait for a refill without sleeping.
pub struct PoolHooks {
    pub ready: watch::Sender<usize>,
    pub armed: watch::Sender<usize>,
    pub empty: AtomicUsize,
    pub refills: AtomicUsize,
    /// When the last run's program went to its container (its deadline counts from there).
    pub handed_over: std::sync::Mutex<Option<Instant>>,
}

impl Hooks for PoolHooks {
    fn pool_ready(&self, n: usize) {
        self.ready.send_replace(n);
    }
    fn pool_armed(&self, n: usize) {
        self.armed.send_replace(n);
    }
    fn pool_empty(&self) {
        self.empty.fetch_add(1, Ordering::SeqCst);
    }
    fn pool_refill(&self, _latency: Duration) {
        self.refills.fetch_add(1, Ordering::SeqCst);
    }
    fn run_handed_over(&self) {
        *self.handed_over.lock().unwrap() = Some(Instant::now());
    }
}

impl PoolHooks {
    /// Waits (bounded) until the pool reports `n` ready containers.
    pub async fn wait_ready(&self, n: usize) {
        let mut rx = self.ready.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|r| *r == n)).await;
        assert!(
            reached.is_ok(),
            "pool never reached {n} ready (now {})",
            *self.ready.borrow()
        );
    }

    /// Waits (bounded) until the pool reports at least `n` armed containers.
    pub async fn wait_armed(&self, n: usize) {
        let mut rx = self.armed.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|r| *r >= n)).await;
        assert!(
            reached.is_ok(),
            "pool never had {n} armed (now {})",
            *self.armed.borrow()
        );
    }
}

/// The three ways a program reaches a container: a pooled container's waiting exec, a pooled
/// container's main process, and a container started for the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Armed,
    Unarmed,
    Cold,
}

pub const MODES: [Mode; 3] = [Mode::Armed, Mode::Unarmed, Mode::Cold];

/// A sandbox whose every run goes the way `mode` says.
pub struct ModeSandbox {
    pub sb: DockerSandbox,
    pub hooks: Arc<PoolHooks>,
    pub mode: Mode,
}

impl ModeSandbox {
    pub async fn connect(mode: Mode) -> ModeSandbox {
        Self::connect_with(mode, limits()).await
    }

    pub async fn connect_with(mode: Mode, limits: Limits) -> ModeSandbox {
        let pool_size = if mode == Mode::Cold { 0 } else { 1 };
        let mut opts = DockerOptions::new(image(), pool_size);
        opts.arm = mode == Mode::Armed;
        let (sb, hooks) = connect_opts(opts, limits).await;
        ModeSandbox { sb, hooks, mode }
    }

    /// Waits until the pool holds a container of the mode's kind.
    pub async fn ready(&self) {
        match self.mode {
            Mode::Armed => self.hooks.wait_armed(1).await,
            Mode::Unarmed => self.hooks.wait_ready(1).await,
            Mode::Cold => {}
        }
    }

    /// Runs `program` once the pool holds a container of the mode's kind.
    pub async fn run(&self, program: &str) -> RunOutcome {
        self.ready().await;
        run(&self.sb, program).await
    }

    /// `run`, and how long the run took from its hand-over to its answer: a cold container's
    /// start (a second or two under gVisor on a loaded host) is not the run's, nor its deadline's.
    pub async fn timed_run(&self, program: &str) -> (RunOutcome, Duration) {
        *self.hooks.handed_over.lock().unwrap() = None;
        let outcome = self.run(program).await;
        let handed_over = self
            .hooks
            .handed_over
            .lock()
            .unwrap()
            .expect("no hand-over reported");
        (outcome, handed_over.elapsed())
    }

    pub async fn finish(self) {
        finish(self.sb).await
    }
}

pub async fn connect(pool_size: usize) -> (DockerSandbox, Arc<PoolHooks>) {
    connect_with(pool_size, limits()).await
}

pub async fn connect_with(pool_size: usize, limits: Limits) -> (DockerSandbox, Arc<PoolHooks>) {
    connect_image(image(), pool_size, limits).await
}

pub async fn connect_image(
    image: String,
    pool_size: usize,
    limits: Limits,
) -> (DockerSandbox, Arc<PoolHooks>) {
    connect_opts(DockerOptions::new(image, pool_size), limits).await
}

pub async fn connect_opts(opts: DockerOptions, limits: Limits) -> (DockerSandbox, Arc<PoolHooks>) {
    let hooks = Arc::new(PoolHooks {
        ready: watch::Sender::new(0),
        armed: watch::Sender::new(0),
        empty: AtomicUsize::new(0),
        refills: AtomicUsize::new(0),
        handed_over: std::sync::Mutex::new(None),
    });
    let sandbox = DockerSandbox::connect(with_runtime(opts), limits, hooks.clone())
        .await
        .expect("connect to the engine (is dockerd running and the test image built?)");
    (sandbox, hooks)
}

pub async fn run(sandbox: &DockerSandbox, program: &str) -> RunOutcome {
    sandbox
        .run(Bytes::from(program.to_owned()), None)
        .await
        .unwrap_or_else(|e| panic!("run failed: {e:?}"))
}

pub fn text(chunks: &[Chunk], kind: StreamKind) -> String {
    chunks
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

/// The output and status of a run that must have exited.
pub fn exited(outcome: RunOutcome) -> (i64, String, String) {
    match outcome {
        RunOutcome::Exited { status, output } => (
            status,
            text(&output, StreamKind::Stdout),
            text(&output, StreamKind::Stderr),
        ),
        other => panic!("expected an exit, got {other:?}"),
    }
}

pub fn engine() -> Docker {
    Docker::connect_with_defaults().unwrap()
}

/// Names of the containers (any state) carrying this sandbox's instance label.
pub async fn containers_of(instance: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_INSTANCE}={instance}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    engine()
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect()
}

/// Shuts the sandbox down and checks that the engine holds none of its containers.
pub async fn finish(sandbox: DockerSandbox) {
    let instance = sandbox.instance().to_owned();
    sandbox.shutdown().await;
    assert_eq!(sandbox.live_containers(), 0);
    let left = containers_of(&instance).await;
    assert!(left.is_empty(), "containers left behind: {left:?}");
}
