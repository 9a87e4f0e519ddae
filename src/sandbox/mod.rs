//! The sandbox contract shared by every backend (see `docs/design.md`): the program goes to the
//! command's stdin, then EOF; stdout and stderr come back as chunks in the order they were
//! written (through the `relay` inside the sandbox, watched by `supervise`); the run dies the moment
//! its output passes the cap or its deadline passes, and nothing of it outlives the run. A backend
//! knows nothing of HTTP, the cache or metrics; it reports through `Hooks`.

pub mod bwrap;
pub mod docker;
pub mod job;
pub mod output;
pub mod relay;
pub mod scripted;
pub mod supervise;
pub mod syscalls;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// The environment every sandboxed program gets, whatever the backend: nothing of the daemon's.
pub const SANDBOX_ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
];

/// Per-run resource limits; the same for every run of a daemon.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Wall-clock deadline, counted from the moment the program is handed over.
    pub timeout: Duration,
    /// Cap on stdout + stderr together.
    pub max_output_bytes: usize,
    /// Memory, swap included.
    pub memory_bytes: u64,
    pub pids: u32,
    pub cpus: f64,
    /// Size of the writable tmpfs at /tmp.
    pub tmpfs_bytes: u64,
}

/// The sandbox owns its limits and their defaults (the config builds on the sandbox, never the
/// other way round); `config::DEFAULTS` writes the same values, and a test there holds the two
/// together.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(3500),
            max_output_bytes: 65536,
            memory_bytes: 128 << 20,
            pids: 64,
            cpus: 1.0,
            tmpfs_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Everything here that can change a program's answer, for the cache key.
    pub fn fingerprint(&self) -> String {
        format!(
            "timeout={}ms;output={};memory={};pids={};cpus={};tmpfs={}",
            self.timeout.as_millis(),
            self.max_output_bytes,
            self.memory_bytes,
            self.pids,
            self.cpus,
            self.tmpfs_bytes
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub kind: StreamKind,
    pub data: Vec<u8>,
    /// When its first byte was written, counted from the hand-over of the program.
    pub at: Duration,
}

/// Receives a run's output as it is written (each accepted write, after the cap check), for live
/// transports; the run's answer still carries all of it.
pub type LiveOutput = tokio::sync::mpsc::UnboundedSender<Chunk>;

#[derive(Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The program ran to completion; `status` is its exit code (128+N for signal N).
    Exited { status: i64, output: Vec<Chunk> },
    /// stdout + stderr passed the cap; the run was killed at once. `output` is what came before
    /// the cap, up to the cap's byte.
    OutputTooLarge { output: Vec<Chunk> },
    /// The deadline passed; the run was killed.
    TimedOut { output: Vec<Chunk> },
    /// The memory limit killed the program.
    OutOfMemory { output: Vec<Chunk> },
}

/// Why a run could not happen; a bounded metric label through `as_str`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxErrorKind {
    /// The engine (or bwrap) did not answer or is missing.
    Unavailable,
    /// The configured image or command does not exist.
    ImageMissing,
    /// Creating, starting or attaching to the sandbox failed.
    Start,
    /// Talking to a running sandbox failed.
    Io,
    Internal,
}

impl SandboxErrorKind {
    pub const ALL: [SandboxErrorKind; 5] = [
        SandboxErrorKind::Unavailable,
        SandboxErrorKind::ImageMissing,
        SandboxErrorKind::Start,
        SandboxErrorKind::Io,
        SandboxErrorKind::Internal,
    ];

    /// What failed, as a client may read it: no host names, paths or remedies (those are the
    /// operator's, in `SandboxError::message` and the log).
    pub fn public_text(self) -> &'static str {
        match self {
            SandboxErrorKind::Unavailable => "the sandbox engine is not available",
            SandboxErrorKind::ImageMissing => "the sandbox image is missing",
            SandboxErrorKind::Start => "the sandbox could not be started",
            SandboxErrorKind::Io => "the connection to the sandbox broke",
            SandboxErrorKind::Internal => "an internal error of the sandbox",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxErrorKind::Unavailable => "unavailable",
            SandboxErrorKind::ImageMissing => "image_missing",
            SandboxErrorKind::Start => "start",
            SandboxErrorKind::Io => "io",
            SandboxErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SandboxError {
    pub kind: SandboxErrorKind,
    /// Says what failed and, where it can, how to fix it: for operators (logs, startup errors);
    /// clients get `kind.public_text()`.
    pub message: String,
}

impl SandboxError {
    pub fn new(kind: SandboxErrorKind, message: impl Into<String>) -> Self {
        SandboxError {
            kind,
            message: message.into(),
        }
    }
}

#[async_trait]
pub trait Sandbox: Send + Sync + 'static {
    /// "docker" or "bwrap".
    fn name(&self) -> &'static str;

    /// Everything besides the program that changes a run's answer (backend, resolved image id or
    /// rootfs/command, limits). It is hashed into the cache key.
    fn fingerprint(&self) -> String;

    /// Runs one program in a fresh sandbox; with `live`, its output also goes there as it is
    /// written. Cancel-safe in the sense that matters: callers run this in a spawned task, and the
    /// backend removes its sandbox on every path out.
    async fn run(
        &self,
        program: Bytes,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError>;

    /// How the program's output is framed, when its image says (`faketime`); `None`: plain.
    fn output_framing(&self) -> Option<&'static str> {
        None
    }

    /// The libraries the image offers to programs (`module@version`), as it declares them.
    fn modules(&self) -> &[String] {
        &[]
    }

    /// Runs one stage of a run request (files, stdin, arguments, its own limits; see `job`) in a
    /// fresh sandbox, with the same guarantees as `run`, and reports its measurements.
    /// `input`, for a job with `live_stdin`, carries its stdin as it comes, its end and signals.
    async fn run_job(
        &self,
        job: job::Job,
        live: Option<LiveOutput>,
        input: Option<job::LiveInput>,
    ) -> Result<job::StageOutcome, SandboxError>;

    /// A short state line for logs and STATUS=, e.g. "pool 2/2".
    fn status(&self) -> String {
        String::new()
    }

    /// Removes everything the backend still holds (pre-started containers). Called once, after the
    /// last run finished.
    async fn shutdown(&self) {}
}
