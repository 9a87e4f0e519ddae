//! The output relay: a small static program of ours (`relay.c`) that runs inside every sandbox,
//! on both backends, as the parent of the program. The program's stdout and stderr are two
//! `SOCK_SEQPACKET` sockets, which keep each write whole and let the kernel stamp it as it is
//! queued; the relay forwards the pending write with the smallest stamp across both, so stdout
//! and stderr come out in the order they were written, and frames each one with its stream on
//! its own stdout, the only channel the daemon reads. It ends with a frame holding the program's
//! exit status and the memory cgroup's OOM kills during the run.
//!
//! The program cannot forge a frame: it only holds its two sockets, and the relay is
//! non-dumpable, so even a process of the same user cannot reach the relay's stdout through
//! /proc or ptrace. The binary is embedded in the daemon, written once at startup into a fresh
//! directory only the daemon's user can write, and mounted read-only into each sandbox. A forked
//! child writes it, so that no descriptor open for writing on it ever exists in the daemon for a
//! concurrent spawn to inherit (an exec of the relay would then fail with ETXTBSY).

mod frames;
mod install;

pub use frames::{Event, Exit, FrameError, Frames};
pub use install::InstalledRelay;

/// Where the relay is mounted in a Docker container.
pub const DOCKER_RELAY_PATH: &str = "/.compilerd-relay";
/// Where the relay is mounted in a bubblewrap sandbox: in bwrap's own /dev tmpfs, the one place
/// it can create a mount point when the root is a read-only rootfs.
pub const BWRAP_RELAY_PATH: &str = "/dev/.compilerd-relay";

/// Below this, the startup log warns that large single writes fail.
const WANTED_LARGEST_WRITE: usize = 4 << 20;

/// The largest single write() a program can make to its stdout or stderr here: the relay asks for
/// a bigger send buffer than any host allows, the kernel caps it at `net.core.wmem_max` and
/// doubles that, and a message must fit in it with a little room to spare. Past it, the write
/// fails with EMSGSIZE. `None` when the setting cannot be read.
pub fn largest_write() -> Option<usize> {
    let max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((max * 2).saturating_sub(32))
}

/// Says at startup how large a single write can be, loudly when that is small.
pub fn report_largest_write() {
    match largest_write() {
        Some(n) if n < WANTED_LARGEST_WRITE => tracing::warn!(
            largest_write = n,
            "a program's single write to stdout or stderr larger than {n} bytes fails (EMSGSIZE); \
             raise it with `sysctl -w net.core.wmem_max=4194304` (and in /etc/sysctl.d)"
        ),
        Some(n) => tracing::info!(largest_write = n, "output relay ready"),
        None => tracing::warn!(
            "cannot read net.core.wmem_max: the largest single write a program can make is unknown"
        ),
    }
}
