//! Docker Engine API backend (filled in by its own change).

pub mod settings;
pub mod sweep;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Limits, RunOutcome, Sandbox, SandboxError, SandboxErrorKind};
use crate::hooks::Hooks;

#[derive(Clone, Debug)]
pub struct DockerOptions {
    pub image: String,
    /// Containers kept started and waiting for a program; 0 disables the pool.
    pub pool_size: usize,
}

pub struct DockerSandbox {}

impl DockerSandbox {
    /// Connects to the engine (DOCKER_HOST or the default socket), negotiates the API version,
    /// checks the image, sweeps containers a previous run left behind and fills the pool.
    pub async fn connect(
        _opts: DockerOptions,
        _limits: Limits,
        _hooks: Arc<dyn Hooks>,
    ) -> Result<DockerSandbox, SandboxError> {
        Err(SandboxError::new(
            SandboxErrorKind::Internal,
            "docker backend not built yet",
        ))
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn name(&self) -> &'static str {
        "docker"
    }
    fn fingerprint(&self) -> String {
        String::new()
    }
    async fn run(&self, _program: Bytes) -> Result<RunOutcome, SandboxError> {
        Err(SandboxError::new(
            SandboxErrorKind::Internal,
            "docker backend not built yet",
        ))
    }
}
