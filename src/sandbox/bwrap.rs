//! bubblewrap backend (filled in by its own change).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Limits, RunOutcome, Sandbox, SandboxError, SandboxErrorKind};
use crate::hooks::Hooks;

#[derive(Clone, Debug)]
pub struct BwrapOptions {
    /// What runs inside, split on whitespace; the program arrives on its stdin.
    pub command: String,
    /// A directory to use as the read-only root; `None` binds the host's /usr, /bin, /lib*.
    pub rootfs: Option<std::path::PathBuf>,
}

pub struct BwrapSandbox {}

impl BwrapSandbox {
    /// Checks that bwrap is present and can create namespaces and that the command exists.
    pub async fn connect(
        _opts: BwrapOptions,
        _limits: Limits,
        _hooks: Arc<dyn Hooks>,
    ) -> Result<BwrapSandbox, SandboxError> {
        Err(SandboxError::new(
            SandboxErrorKind::Internal,
            "bwrap backend not built yet",
        ))
    }
}

#[async_trait]
impl Sandbox for BwrapSandbox {
    fn name(&self) -> &'static str {
        "bwrap"
    }
    fn fingerprint(&self) -> String {
        String::new()
    }
    async fn run(&self, _program: Bytes) -> Result<RunOutcome, SandboxError> {
        Err(SandboxError::new(
            SandboxErrorKind::Internal,
            "bwrap backend not built yet",
        ))
    }
}
