//! The startup check: one real run of the command on empty input, and what its failure means
//! for the operator.

use crate::sandbox::job::legacy_input;
use crate::sandbox::supervise::Report;

use super::{BwrapOptions, BwrapSandbox, PROBE_TIMEOUT, SETUP_FAILED, err};
use crate::sandbox::{RunOutcome, SandboxError, SandboxErrorKind};

impl BwrapSandbox {
    /// Runs the command on empty input in a real sandbox: proves that bwrap can create every
    /// namespace and mount, that the cgroups work and that the command exists inside.
    pub(super) async fn probe(
        &self,
        version: &str,
        opts: &BwrapOptions,
        host_uid: u32,
    ) -> Result<(), SandboxError> {
        let place = match &opts.rootfs {
            Some(dir) => format!("in the rootfs {}", dir.display()),
            None => "on the host's /usr, /bin and /lib".into(),
        };
        let outcome = match self
            .execute(
                legacy_input(b""),
                &self.spawner.limits.clone(),
                PROBE_TIMEOUT,
                &mut Vec::new(),
                None,
                None,
                false,
                &mut Report::default(),
            )
            .await
        {
            Ok(outcome) => outcome,
            Err(e) if e.message.starts_with(SETUP_FAILED) => {
                let msg = e.message;
                return Err(
                    if msg.contains("Unknown option") || msg.contains("Unrecognized") {
                        err(
                            SandboxErrorKind::Unavailable,
                            format!(
                                "{version} lacks an option compilerd needs ({msg}): install bubblewrap 0.8 or newer"
                            ),
                        )
                    } else {
                        err(
                            SandboxErrorKind::Unavailable,
                            format!(
                                "bwrap cannot create a sandbox as uid {host_uid} ({msg}): unprivileged user namespaces must be enabled: \
                                 `sysctl user.max_user_namespaces` must be > 0, on Debian kernels `sysctl -w kernel.unprivileged_userns_clone=1`, \
                                 on Ubuntu 24.04+ `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile for bwrap); \
                                 inside a container, its seccomp profile must allow unshare and mount"
                            ),
                        )
                    },
                );
            }
            Err(e) => {
                return Err(err(
                    SandboxErrorKind::Unavailable,
                    format!("bwrap startup check: {}", e.message),
                ));
            }
        };
        // The relay runs the command as a shell would: 127 when it is missing, 126 when it
        // cannot be run, with the reason on stderr.
        if let RunOutcome::Exited {
            status: 126 | 127,
            output,
        } = &outcome
        {
            let said: Vec<u8> = output.iter().flat_map(|c| c.data.clone()).collect();
            return Err(err(
                SandboxErrorKind::ImageMissing,
                format!(
                    "the command `{}` cannot run inside the sandbox ({}): it must exist {place} and be readable by uid {host_uid}",
                    opts.command,
                    String::from_utf8_lossy(&said).trim()
                ),
            ));
        }
        match outcome {
            RunOutcome::Exited { status: 0, .. } => {}
            other => tracing::warn!(
                outcome = ?other,
                "bwrap: the command `{}` does not end cleanly on empty input",
                opts.command
            ),
        }
        Ok(())
    }
}
