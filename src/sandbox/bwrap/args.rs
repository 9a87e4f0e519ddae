//! The bwrap command line: which namespaces, what the sandbox sees of the file system, as whom
//! the command runs, which system calls it may make, and that it runs under the output relay.

use std::ffi::OsString;
use std::path::Path;

use super::NOBODY;
use super::spawn::DataFd;
use crate::sandbox::relay::BWRAP_RELAY_PATH;
use crate::sandbox::syscalls::Filters;
use crate::sandbox::{Limits, SANDBOX_ENV};

/// The first descriptor the launcher opens for bwrap, above stdin, stdout and stderr.
const FIRST_DATA_FD: i32 = 3;

/// The seccomp programs as descriptors for the launcher to open, in the order bwrap installs them.
pub(super) fn seccomp_fds(filters: &Filters) -> Vec<DataFd> {
    (FIRST_DATA_FD..)
        .zip(filters.programs())
        .map(|(fd, program)| DataFd::new(fd, program))
        .collect()
}

/// Whether this bwrap has `--disable-userns` (0.8 and newer), from its own usage text.
pub(super) async fn has_disable_userns(bwrap: &Path) -> bool {
    tokio::process::Command::new(bwrap)
        .arg("--help")
        .env_clear()
        .output()
        .await
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--disable-userns"))
}

/// The host directories a sandbox without a rootfs sees, read-only. Merged-/usr hosts have
/// /bin -> usr/bin and so on, which become the same symlinks inside.
fn host_root_args(args: &mut Vec<OsString>) {
    for dir in ["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        let path = Path::new("/").join(dir);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(&path) {
                args.extend(["--symlink".into(), target.into(), path.into()]);
            }
        } else if meta.is_dir() {
            args.extend(["--ro-bind".into(), path.clone().into(), path.into()]);
        }
    }
    // The loader's cache (libraries in multiarch directories) and the alternatives symlinks that
    // many commands in /usr/bin point through; nothing that names or configures the host.
    args.extend(["--dir".into(), "/etc".into()]);
    for file in [
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/alternatives",
    ] {
        args.extend(["--ro-bind-try".into(), file.into(), file.into()]);
    }
}

pub(super) fn bwrap_args(
    rootfs: Option<&Path>,
    relay: &Path,
    command: &[String],
    limits: &Limits,
    seccomp: &[DataFd],
    disable_userns: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut add = |xs: &[&str]| args.extend(xs.iter().map(OsString::from));
    // --unshare-all tries the cgroup namespace and takes the rest; --unshare-user makes the user
    // namespace mandatory even where bwrap would otherwise run without one.
    add(&[
        "--unshare-all",
        "--unshare-user",
        "--as-pid-1",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]);
    // The filters refuse namespaces already; this keeps a nested user namespace out of reach
    // through any path they might miss (bwrap lowers user.max_user_namespaces inside).
    if disable_userns {
        add(&["--disable-userns"]);
    }
    // Installed last thing before the relay starts, so the relay runs under them too.
    for data in seccomp {
        add(&["--add-seccomp-fd", &data.fd.to_string()]);
    }
    for (k, v) in SANDBOX_ENV {
        add(&["--setenv", k, v]);
    }
    match rootfs {
        Some(dir) => args.extend(["--ro-bind".into(), dir.into(), "/".into()]),
        None => host_root_args(&mut args),
    }
    let tmpfs = limits.tmpfs_bytes.to_string();
    let mut add = |xs: &[&str]| args.extend(xs.iter().map(OsString::from));
    // bwrap's /dev is a tmpfs of its own, writable and unbounded: read-only, it still holds the
    // device nodes, which are separate mounts. /dev/shm, as in the Docker backend, is a tmpfs no
    // bigger than /tmp (some runtimes need shm_open); both are charged to the memory limit.
    add(&["--proc", "/proc", "--dev", "/dev"]);
    args.extend(["--ro-bind".into(), relay.into(), BWRAP_RELAY_PATH.into()]);
    let mut add = |xs: &[&str]| args.extend(xs.iter().map(OsString::from));
    add(&["--perms", "1777", "--size", &tmpfs, "--tmpfs", "/dev/shm"]);
    add(&["--remount-ro", "/dev"]);
    add(&["--perms", "1777", "--size", &tmpfs, "--tmpfs", "/tmp"]);
    if rootfs.is_none() {
        // Without a rootfs, / is a tmpfs bwrap made to hold the binds; last, after every mount point.
        add(&["--remount-ro", "/"]);
    }
    let id = NOBODY.to_string();
    add(&[
        "--chdir",
        "/tmp",
        "--uid",
        &id,
        "--gid",
        &id,
        "--hostname",
        "sandbox",
        "--cap-drop",
        "ALL",
        "--",
        BWRAP_RELAY_PATH,
        "--stdin-header",
    ]);
    args.extend(command.iter().map(OsString::from));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_and_userns_refusal_come_before_the_command() {
        let filters = Filters::compile().unwrap();
        let seccomp = seccomp_fds(&filters);
        assert_eq!(
            seccomp.iter().map(|d| d.fd).collect::<Vec<_>>(),
            [3, 4],
            "one descriptor per program, above stderr"
        );
        let command = ["/bin/sh".to_owned()];
        let args = bwrap_args(
            None,
            Path::new("/r"),
            &command,
            &Limits::default(),
            &seccomp,
            true,
        );
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let end = args.iter().position(|a| *a == "--").unwrap();
        let options = &args[..end];
        assert!(options.contains(&"--disable-userns"), "{args:?}");
        assert!(
            options
                .windows(4)
                .any(|w| w == ["--add-seccomp-fd", "3", "--add-seccomp-fd", "4"]),
            "{args:?}"
        );
        assert_eq!(
            &args[end + 1..],
            [BWRAP_RELAY_PATH, "--stdin-header", "/bin/sh"]
        );
        let without = bwrap_args(
            None,
            Path::new("/r"),
            &command,
            &Limits::default(),
            &[],
            false,
        );
        assert!(!without.iter().any(|a| a == "--disable-userns"));
    }
}
