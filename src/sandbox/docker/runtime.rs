//! The OCI runtime of the sandbox containers: the engine's default (runc), or one the operator
//! names (`--runtime runsc` for gVisor, whose kernel then takes every system call of a program).
//! Checked against the engine's list at startup, so that a name the engine does not know is a
//! clear refusal to start rather than a failure of every run.

use bollard::Docker;

use super::engine::engine_error;
use crate::sandbox::{SandboxError, SandboxErrorKind};

/// How an operator registers gVisor with the engine; said whenever a runtime is missing.
const HOW_TO_REGISTER: &str = "register it in /etc/docker/daemon.json, e.g. \"runtimes\": \
     {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=none\"]}}, then \
     reload the engine (kill -HUP $(cat /var/run/docker.pid)); see README, \"gVisor\"";

/// The runtime the containers will run under: `wanted`, which the engine must list, or else the
/// engine's default. The name goes into the sandbox's fingerprint: a program can tell runtimes
/// apart (gVisor's kernel answers for the host's), so their answers are not interchangeable.
pub(super) async fn resolve(
    docker: &Docker,
    host: &str,
    image: &str,
    wanted: Option<&str>,
) -> Result<String, SandboxError> {
    let info = docker.info().await.map_err(|e| {
        engine_error(
            host,
            image,
            SandboxErrorKind::Unavailable,
            "asking the engine for its runtimes",
            e,
        )
    })?;
    let default = info.default_runtime.unwrap_or_else(|| "runc".to_owned());
    let Some(wanted) = wanted else {
        return Ok(default);
    };
    let known: Vec<String> = {
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        names
    };
    if known.iter().any(|n| n == wanted) {
        return Ok(wanted.to_owned());
    }
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
pub(super) fn explain_start_failure(runtime: &str, e: SandboxError) -> SandboxError {
    if e.message
        .contains("network enabled in root network namespace")
    {
        return SandboxError::new(
            e.kind,
            format!(
                "{}; runtime {runtime:?} must run with --network=none: add it to the \
                 runtime's runtimeArgs in /etc/docker/daemon.json and reload the engine",
                e.message
            ),
        );
    }
    e
}
