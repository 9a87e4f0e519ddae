//! The OCI runtime of the sandbox containers: the engine's default (runc), or one the operator
//! names (`--runtime runsc` for gVisor, whose kernel then takes every system call of a program).
//! Checked against the engine's list at startup, so that a name the engine does not know is a
//! clear refusal to start rather than a failure of every run.

use bollard::Docker;
use bollard::models::ResourcesUlimits;

use super::engine::engine_error;
use crate::sandbox::{SandboxError, SandboxErrorKind};

/// How an operator registers gVisor with the engine; said whenever a runtime is missing.
const HOW_TO_REGISTER: &str = "register it in /etc/docker/daemon.json, e.g. \"runtimes\": \
     {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=none\"]}}, then \
     reload the engine (kill -HUP $(cat /var/run/docker.pid)); see README, \"gVisor\"";

/// Host threads a gVisor sandbox needs before any program runs (its kernel and file proxy: ~40
/// measured with runsc's ptrace platform), and for each process of a program (~9 measured: a
/// stub process per address space and the threads that trace it). The engine's pids limit
/// counts these host threads, not the program's processes: gVisor's kernel dies when it cannot
/// make one (a pids limit of 32 kills it at its start), so the host limit leaves it room and
/// RLIMIT_NPROC, which gVisor's kernel enforces for the program's user, takes the program's.
const GVISOR_HOST_PIDS: i64 = 64;
const GVISOR_HOST_PIDS_PER_PROCESS: i64 = 16;

/// The OCI runtime the containers run under.
#[derive(Clone, Debug, PartialEq)]
pub struct Runtime {
    /// As the engine lists it; the default's name when none was named.
    pub name: String,
    /// What the containers name; `None`: the engine's default.
    pub named: Option<String>,
    /// gVisor (runsc): programs run on its kernel, whose process limit is RLIMIT_NPROC.
    pub gvisor: bool,
}

impl Runtime {
    /// The engine's default runtime, taken to be runc; for tests of the settings.
    pub fn engine_default() -> Runtime {
        Runtime {
            name: "runc".to_owned(),
            named: None,
            gvisor: false,
        }
    }

    /// The engine's pids limit for a container whose program may have `pids` processes.
    pub fn host_pids(&self, pids: u32) -> i64 {
        match self.gvisor {
            true => GVISOR_HOST_PIDS + GVISOR_HOST_PIDS_PER_PROCESS * i64::from(pids),
            false => i64::from(pids),
        }
    }

    /// The rlimit that bounds the program's processes where the pids limit does not.
    pub fn process_ulimit(&self, pids: u32) -> Option<ResourcesUlimits> {
        self.gvisor.then(|| ResourcesUlimits {
            name: Some("nproc".to_owned()),
            soft: Some(i64::from(pids)),
            hard: Some(i64::from(pids)),
        })
    }
}

/// The runtime the containers will run under: `wanted`, which the engine must list, or else the
/// engine's default. Its name goes into the sandbox's fingerprint: a program can tell runtimes
/// apart (gVisor's kernel answers for the host's), so their answers are not interchangeable.
pub(super) async fn resolve(
    docker: &Docker,
    host: &str,
    image: &str,
    wanted: Option<&str>,
) -> Result<Runtime, SandboxError> {
    let info = docker.info().await.map_err(|e| {
        engine_error(
            host,
            image,
            SandboxErrorKind::Unavailable,
            "asking the engine for its runtimes",
            e,
        )
    })?;
    let runtimes = info.runtimes.unwrap_or_default();
    let name = match wanted {
        Some(wanted) => wanted.to_owned(),
        None => info.default_runtime.unwrap_or_else(|| "runc".to_owned()),
    };
    if let Some(found) = runtimes.get(&name) {
        // By its binary, whatever the operator called it.
        let binary = found.path.as_deref().unwrap_or(&name);
        let gvisor = std::path::Path::new(binary)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("runsc"));
        return Ok(Runtime {
            name,
            named: wanted.map(str::to_owned),
            gvisor,
        });
    }
    let Some(wanted) = wanted else {
        // The engine's default is not in its own list (an old engine): as before, runc.
        return Ok(Runtime {
            name,
            ..Runtime::engine_default()
        });
    };
    let known: Vec<String> = {
        let mut names: Vec<String> = runtimes.into_keys().collect();
        names.sort();
        names
    };
    Err(SandboxError::new(
        SandboxErrorKind::Start,
        format!(
            "runtime {wanted:?} is not known to the Docker engine at {host} (it has: {}); \
             {HOW_TO_REGISTER}",
            known.join(", ")
        ),
    ))
}

/// The engine's words about a container that would not start under `runtime`, with the fix
/// when they are gVisor's refusal to share the host's network namespace.
pub(super) fn explain_start_failure(runtime: &Runtime, e: SandboxError) -> SandboxError {
    if e.message
        .contains("network enabled in root network namespace")
    {
        return SandboxError::new(
            e.kind,
            format!(
                "{}; runtime {:?} must run with --network=none: add it to the runtime's \
                 runtimeArgs in /etc/docker/daemon.json and reload the engine",
                e.message, runtime.name
            ),
        );
    }
    e
}
