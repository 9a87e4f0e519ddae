//! Runs with inputs (see docs/design.md, "The run model"): a run request is the main file, extra
//! files, stdin, arguments and the run's own limits; a language runs it in stages, an optional
//! compile stage and a run stage, each in a fresh sandbox (`sandbox::job`). The compile stage's
//! kept files (its binary) are handed to the run stage as files, so that a compiled program can
//! later run many times from one compile. A failed compile means no run stage.

pub mod limits;
pub mod request;

use std::time::Duration;

use crate::hooks::RunResult as Metric;
use crate::sandbox::job::{Job, JobFile, LimitHit, LiveInput, StageOutcome};
use crate::sandbox::{Limits, LiveOutput, RunOutcome, Sandbox, SandboxError};

pub use limits::{Maxima, RunLimits};
pub use request::{Bounds, RequestError, RunRequest};

/// How a language runs a request: the main file's name, the compile command (if it compiles),
/// the files the compile leaves for the run, and the run command (the request's arguments follow
/// it). Commands are split on whitespace and run in /tmp, where the files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stages {
    pub main_file: String,
    pub compile: Option<Vec<String>>,
    pub keep: Vec<String>,
    pub run: Vec<String>,
}

/// A keep entry that keeps every regular file at the top of the working directory whose name does
/// not start with a dot, for stages
/// whose outputs are named by the program rather than by the language (Judge0's multi-file
/// programs).
pub const KEEP_ALL: &str = "*";

/// The most a compile stage may hand over to its run stage.
pub const MAX_KEPT_BYTES: u64 = 128 << 20;

/// A run's stages: `compile` when the language has one, `run` unless the compile failed.
#[derive(Debug)]
pub struct RunResult {
    pub compile: Option<StageOutcome>,
    pub run: Option<StageOutcome>,
}

/// Each stage's limits: the language's, changed by the request's own.
#[derive(Clone, Debug)]
pub struct StageLimits {
    pub limits: Limits,
    pub cpu_time: Option<Duration>,
}

/// A checked run request with how its language runs it and each stage's resolved limits.
#[derive(Clone, Debug)]
pub struct RunJob {
    pub req: RunRequest,
    pub stages: Stages,
    pub compile: StageLimits,
    pub run: StageLimits,
}

/// Runs a request in `sandbox` stage by stage. `live` gets the run stage's output as it is
/// written; with `input`, the run stage's stdin is live (the request's is not used).
pub async fn execute(
    sandbox: &dyn Sandbox,
    job: &RunJob,
    live: Option<LiveOutput>,
    input: Option<LiveInput>,
) -> Result<RunResult, SandboxError> {
    let compile = compile_stage(sandbox, job).await?;
    // A job without a run command compiles only: its kept files are what it is for (Judge0's
    // "compile once, judge many").
    if compile.as_ref().is_some_and(|c| !c.succeeded()) || job.stages.run.is_empty() {
        return Ok(RunResult { compile, run: None });
    }
    let run = run_stage(sandbox, job, compile.as_ref(), live, input).await?;
    Ok(RunResult {
        compile,
        run: Some(run),
    })
}

/// The compile stage, when the language has one.
pub async fn compile_stage(
    sandbox: &dyn Sandbox,
    job: &RunJob,
) -> Result<Option<StageOutcome>, SandboxError> {
    let Some(argv) = &job.stages.compile else {
        return Ok(None);
    };
    let stage = Job {
        argv: argv.clone(),
        files: job.req.files_named(&job.stages.main_file),
        stdin: Default::default(),
        limits: job.compile.limits.clone(),
        cpu_time: job.compile.cpu_time,
        keep: job.stages.keep.clone(),
        keep_max: MAX_KEPT_BYTES,
        live_stdin: false,
    };
    Ok(Some(sandbox.run_job(stage, None, None).await?))
}

/// The run stage, with the files a successful `compile` kept beside the sources.
pub async fn run_stage(
    sandbox: &dyn Sandbox,
    job: &RunJob,
    compile: Option<&StageOutcome>,
    live: Option<LiveOutput>,
    input: Option<LiveInput>,
) -> Result<StageOutcome, SandboxError> {
    let mut files = job.req.files_named(&job.stages.main_file);
    for kept in compile.map_or(&[][..], |c| &c.files) {
        files.retain(|f: &JobFile| f.path != kept.path);
        files.push(kept.clone());
    }
    let stage = Job {
        argv: job
            .stages
            .run
            .iter()
            .chain(&job.req.args)
            .cloned()
            .collect(),
        files,
        stdin: job.req.stdin.clone(),
        limits: job.run.limits.clone(),
        cpu_time: job.run.cpu_time,
        keep: Vec::new(),
        keep_max: 0,
        live_stdin: input.is_some(),
    };
    sandbox.run_job(stage, live, input).await
}

impl RunResult {
    /// What `compilerd_runs_total` counts the run as: its last stage's ending.
    pub fn metric(result: &Result<RunResult, SandboxError>) -> Metric {
        let Ok(ran) = result else {
            return Metric::SandboxError;
        };
        let Some(last) = ran.run.as_ref().or(ran.compile.as_ref()) else {
            return Metric::SandboxError;
        };
        match (&last.outcome, last.limit_hit()) {
            (_, Some(LimitHit::Time | LimitHit::Cpu)) => Metric::Timeout,
            (_, Some(LimitHit::Memory)) | (RunOutcome::OutOfMemory { .. }, _) => Metric::Oom,
            (_, Some(LimitHit::Output)) | (RunOutcome::OutputTooLarge { .. }, _) => {
                Metric::OutputTooLarge
            }
            (RunOutcome::TimedOut { .. }, _) => Metric::Timeout,
            (RunOutcome::Exited { status: 0, .. }, _) => Metric::Ok,
            (RunOutcome::Exited { .. }, _) => Metric::ExitNonzero,
        }
    }
}
