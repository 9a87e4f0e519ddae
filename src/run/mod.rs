//! Runs with inputs (see docs/design.md, "The run model"): a run request is the main file, extra
//! files, stdin, arguments and the run's own limits; a language runs it in stages, an optional
//! compile stage and a run stage, each in a fresh sandbox (`sandbox::job`). The compile stage's
//! kept files (its binary) are handed to the run stage as files, so that a compiled program can
//! later run many times from one compile. A failed compile means no run stage.

pub mod limits;
pub mod request;

use std::time::Duration;

use crate::sandbox::job::{Job, JobFile, StageOutcome};
use crate::sandbox::{Limits, LiveOutput, Sandbox, SandboxError};

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
/// written.
pub async fn execute(
    sandbox: &dyn Sandbox,
    job: &RunJob,
    live: Option<LiveOutput>,
) -> Result<RunResult, SandboxError> {
    let RunJob {
        req,
        stages,
        compile: compile_limits,
        run: run_limits,
    } = job;
    let mut files = req.files_named(&stages.main_file);
    let compile = match &stages.compile {
        Some(argv) => {
            let job = Job {
                argv: argv.clone(),
                files: files.clone(),
                stdin: Default::default(),
                limits: compile_limits.limits.clone(),
                cpu_time: compile_limits.cpu_time,
                keep: stages.keep.clone(),
                keep_max: MAX_KEPT_BYTES,
            };
            let outcome = sandbox.run_job(job, None).await?;
            if !outcome.succeeded() {
                return Ok(RunResult {
                    compile: Some(outcome),
                    run: None,
                });
            }
            // The run gets the compile's output beside the sources.
            for kept in &outcome.files {
                files.retain(|f: &JobFile| f.path != kept.path);
                files.push(kept.clone());
            }
            Some(outcome)
        }
        None => None,
    };
    let job = Job {
        argv: stages.run.iter().chain(&req.args).cloned().collect(),
        files,
        stdin: req.stdin.clone(),
        limits: run_limits.limits.clone(),
        cpu_time: run_limits.cpu_time,
        keep: Vec::new(),
        keep_max: 0,
    };
    let run = sandbox.run_job(job, live).await?;
    Ok(RunResult {
        compile,
        run: Some(run),
    })
}
