//! The one place that decides how a sandbox container is locked down. Pool containers and
//! on-demand containers both come from `container_body`, and a program runs either in the
//! container's main process or in an exec from `exec_config` that can do no more, so a pooled run
//! can never be weaker than a cold one, and a review of the hardening is a review of this file.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig,
    ImageConfig, ResourcesUlimits,
};

use super::runtime::Runtime;
use crate::sandbox::relay::DOCKER_RELAY_PATH;
use crate::sandbox::syscalls;
use crate::sandbox::{Limits, SANDBOX_ENV};

/// nobody:nogroup, the program's user. Numeric, so it works even in an image without
/// /etc/passwd. The container itself runs as root with only `CONTAINER_CAPS`, so that the
/// output relay (and docker-init) run as another uid than the program, which the relay drops to
/// before it runs it (see `relay.c`): a program cannot kill or inspect its own relay. Once the
/// program runs, the relay drops to a third user of its own with no capability (65533, fixed in
/// `relay.c`); only docker-init stays root.
pub const SANDBOX_USER: &str = "65534:65534";

/// The container's user: root, for the relay alone (see `SANDBOX_USER`).
const CONTAINER_USER: &str = "0:0";

/// All a relay starting as root needs to make the program's process `SANDBOX_USER` with no
/// capability in any set (SETPCAP empties the bounding set), and nothing else.
const CONTAINER_CAPS: [&str; 3] = ["SETUID", "SETGID", "SETPCAP"];

/// A fixed hostname: the default (the container id) would leak into output and make the same
/// program answer differently on every run, which the cache would then freeze.
pub const SANDBOX_HOSTNAME: &str = "sandbox";

/// What the image runs: its Entrypoint followed by its Cmd, in its WorkingDir. The container's
/// main process runs it by default; an arming exec runs the same thing.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageCommand {
    pub argv: Vec<String>,
    /// Empty: the engine's default, `/`, as for the main process.
    pub working_dir: String,
}

impl ImageCommand {
    /// `None` when the image has no command at all.
    pub fn of(config: &ImageConfig) -> Option<ImageCommand> {
        Self::with_cmd(config, None)
    }

    /// The image's command with `cmd`, when given, in place of its Cmd.
    pub fn with_cmd(config: &ImageConfig, cmd: Option<Vec<String>>) -> Option<ImageCommand> {
        let argv: Vec<String> = config
            .entrypoint
            .iter()
            .flatten()
            .chain(cmd.as_ref().or(config.cmd.as_ref()).into_iter().flatten())
            .cloned()
            .collect();
        (!argv.is_empty()).then(|| ImageCommand {
            argv,
            working_dir: config.working_dir.clone().unwrap_or_default(),
        })
    }
}

/// The exec that runs a program in a started container. It can do no more than the container's
/// main process: not privileged, no user (the container's applies, and its relay drops the
/// program to `SANDBOX_USER` as the main process's does), no TTY; the engine
/// runs it with the container's capabilities, no-new-privileges, seccomp and AppArmor profiles,
/// limits and cgroup. Its environment is the container's (the image's ENV, HOSTNAME and
/// `SANDBOX_ENV`), with `SANDBOX_ENV` repeated here so that it wins whatever the image says.
pub fn exec_config(command: &ImageCommand) -> ExecConfig {
    ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        privileged: Some(false),
        user: None,
        env: Some(sandbox_env()),
        cmd: Some(relayed(command)),
        working_dir: (!command.working_dir.is_empty()).then(|| command.working_dir.clone()),
        ..Default::default()
    }
}

/// The image's command under the output relay, which is what every sandbox runs.
fn relayed(command: &ImageCommand) -> Vec<String> {
    relay_entrypoint()
        .into_iter()
        .chain(command.argv.iter().cloned())
        .collect()
}

/// The relay, told to run the program as `SANDBOX_USER`.
fn relay_entrypoint() -> Vec<String> {
    vec![
        DOCKER_RELAY_PATH.to_owned(),
        "--user".to_owned(),
        SANDBOX_USER.to_owned(),
        // The daemon's header comes first on stdin: a legacy program or a job (relay/job.c).
        "--stdin-header".to_owned(),
    ]
}

fn sandbox_env() -> Vec<String> {
    SANDBOX_ENV
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// Everything the engine needs to create one sandbox container from `image`, whose main process
/// runs `command` under the relay at `relay` on the host, mounted read-only, under the OCI
/// `runtime`.
pub fn container_body(
    image: &str,
    command: &ImageCommand,
    relay: &std::path::Path,
    limits: &Limits,
    labels: HashMap<String, String>,
    runtime: &Runtime,
) -> ContainerCreateBody {
    let memory = i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX);
    let tmpfs_bytes = i64::try_from(limits.tmpfs_bytes).unwrap_or(i64::MAX);
    let ulimit = |name: &str, n: i64| ResourcesUlimits {
        name: Some(name.to_owned()),
        soft: Some(n),
        hard: Some(n),
    };
    ContainerCreateBody {
        image: Some(image.to_owned()),
        hostname: Some(SANDBOX_HOSTNAME.to_owned()),
        user: Some(CONTAINER_USER.to_owned()),
        // The engine adds the image's own ENV and HOSTNAME, never the daemon's environment.
        env: Some(sandbox_env()),
        entrypoint: Some(relay_entrypoint()),
        cmd: Some(command.argv.clone()),
        // The main process (the image's command) is attached before the start, so none of its
        // output is missed, and blocks reading its stdin: that is how the container waits for a
        // program. With stdin_once, our half-close after the program becomes EOF on its stdin.
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        // No `network_disabled`: with it, the engine mounts an empty /etc/hosts and `localhost`
        // does not resolve; `network_mode: none` alone leaves only loopback already.
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            // Equal memory and memory+swap: no swap, so a hog is OOM-killed instead of thrashing.
            memory: Some(memory),
            memory_swap: Some(memory),
            binds: Some(vec![format!("{}:{DOCKER_RELAY_PATH}:ro", relay.display())]),
            // The init and the relay count, as in any container.
            // Under gVisor the program's processes are bounded by RLIMIT_NPROC instead (see
            // `Runtime`).
            pids_limit: Some(runtime.host_pids(limits.pids)),
            nano_cpus: Some((limits.cpus * 1e9).round() as i64),
            readonly_rootfs: Some(true),
            // Compiled languages build and run their binary in /tmp. Docker mounts a tmpfs
            // `noexec` unless `exec` is asked for, and a compiled program then fails with
            // "Permission denied" (status 126).
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!("rw,exec,nosuid,nodev,size={tmpfs_bytes},mode=1777"),
            )])),
            // A private IPC namespace keeps shm_open working (some runtimes need it), with
            // /dev/shm no bigger than /tmp; both are charged to the memory limit.
            ipc_mode: Some("private".to_owned()),
            shm_size: Some(tmpfs_bytes),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(CONTAINER_CAPS.map(str::to_owned).to_vec()),
            // Our syscall policy in place of the engine's default profile: the same refusals as
            // the bwrap backend's filter (`syscalls`).
            security_opt: Some(vec![
                "no-new-privileges".to_owned(),
                syscalls::docker_security_opt().to_owned(),
            ]),
            privileged: Some(false),
            cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
            // A real PID 1 (docker-init) reaps zombies and forwards signals, so a program
            // that forks a lot behaves as it would on a normal machine. With a program in an exec
            // it matters more: orphans of the program are reparented to PID 1, and without init
            // that would be the idle main process, which never reaps them.
            init: Some(true),
            ulimits: Some(
                [ulimit("nofile", 1024), ulimit("core", 0)]
                    .into_iter()
                    .chain(runtime.process_ulimit(limits.pids))
                    .collect(),
            ),
            // Under host memory pressure the kernel should pick a sandbox, never the daemon.
            oom_score_adj: Some(1000),
            // Output reaches us through the attach or exec stream; a log driver would only copy
            // every byte to the engine's disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_owned()),
                config: None,
            }),
            // Removal is ours, on every path, so that the exit code and OOM state can still be
            // read after the program ends.
            auto_remove: Some(false),
            runtime: runtime.named.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_follows_limits() {
        let limits = Limits::default();
        let command = ImageCommand {
            argv: vec!["sh".into()],
            working_dir: String::new(),
        };
        let relay = std::path::Path::new("/run/compilerd/relay");
        let body = container_body(
            "img",
            &command,
            relay,
            &limits,
            HashMap::new(),
            &Runtime::engine_default(),
        );
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.memory, Some(128 << 20));
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.pids_limit, Some(64));
        assert_eq!(
            host.binds,
            Some(vec![format!("/run/compilerd/relay:{DOCKER_RELAY_PATH}:ro")])
        );
        assert_eq!(
            body.entrypoint,
            Some(vec![
                DOCKER_RELAY_PATH.to_owned(),
                "--user".into(),
                "65534:65534".into(),
                "--stdin-header".into()
            ])
        );
        assert_eq!(body.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(host.nano_cpus, Some(1_000_000_000));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.runtime, None);
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.cap_add,
            Some(vec!["SETUID".into(), "SETGID".into(), "SETPCAP".into()])
        );
        assert_eq!(
            host.security_opt,
            Some(vec![
                "no-new-privileges".to_owned(),
                syscalls::docker_security_opt().to_owned()
            ])
        );
        let tmp = &host.tmpfs.unwrap()["/tmp"];
        assert!(tmp.contains(&format!("size={}", 16 << 20)));
        assert!(tmp.split(',').any(|o| o == "exec"), "{tmp}");
        assert_eq!(body.user.as_deref(), Some("0:0"));
        assert_eq!(body.env.unwrap().len(), SANDBOX_ENV.len());
    }

    #[test]
    fn gvisor_bounds_processes_by_rlimit() {
        let limits = Limits::default();
        let command = ImageCommand {
            argv: vec!["sh".into()],
            working_dir: String::new(),
        };
        let runsc = Runtime {
            name: "runsc".into(),
            named: Some("runsc".into()),
            gvisor: true,
        };
        let relay = std::path::Path::new("/run/compilerd/relay");
        let body = container_body("img", &command, relay, &limits, HashMap::new(), &runsc);
        let host = body.host_config.unwrap();
        assert_eq!(host.runtime.as_deref(), Some("runsc"));
        // Room for gVisor's own threads; the program's processes are its NPROC.
        assert!(host.pids_limit.unwrap() > 64 * 9, "{:?}", host.pids_limit);
        let nproc = host
            .ulimits
            .unwrap()
            .into_iter()
            .find(|u| u.name.as_deref() == Some("nproc"))
            .unwrap();
        assert_eq!((nproc.soft, nproc.hard), (Some(64), Some(64)));
    }

    #[test]
    fn exec_is_no_stronger_than_the_container() {
        let command = ImageCommand::of(&ImageConfig {
            entrypoint: Some(vec!["/bin/tini".into()]),
            cmd: Some(vec!["sh".into()]),
            working_dir: Some("/src".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(command.argv, vec!["/bin/tini", "sh"]);
        let exec = exec_config(&command);
        assert_eq!(exec.privileged, Some(false));
        assert_eq!(exec.user, None);
        assert_eq!(exec.tty, Some(false));
        assert_eq!(exec.working_dir.as_deref(), Some("/src"));
        assert_eq!(
            exec.cmd,
            Some(vec![
                DOCKER_RELAY_PATH.into(),
                "--user".into(),
                "65534:65534".into(),
                "--stdin-header".into(),
                "/bin/tini".into(),
                "sh".into()
            ])
        );
        assert_eq!(exec.env.unwrap().len(), SANDBOX_ENV.len());
        assert_eq!(ImageCommand::of(&ImageConfig::default()), None);
    }
}
