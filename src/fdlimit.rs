//! The process's file-descriptor budget. Every client connection costs one fd, so a daemon left at
//! systemd's default soft limit (1024) runs out with a few hundred idle clients while the hard
//! limit (often 500 000) sits unused: the soft limit is raised to the hard one at start, and the
//! default connection limit is derived from what is left after the runs' own needs.

use std::io;

/// fds kept aside for everything that is not a client connection: the listener, the runtime,
/// logging, /metrics' process collector, connections being refused.
const RESERVED: u64 = 128;
/// fds one run may hold at once (bwrap: pipes, pidfd, cgroup files; Docker: engine connections).
const PER_RUN: u64 = 16;

/// The soft and hard `RLIMIT_NOFILE`.
pub fn nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit before and after.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    // An unlimited hard limit is still capped by the kernel's fs.nr_open.
    let target = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(hard, |nr_open| hard.min(nr_open));
    if soft >= target {
        return Ok((soft, soft));
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((soft, hard))
}

/// Client connections accepted at once when `--max-connections` is not set: the fd limit minus
/// the reserve and what `sandboxes` concurrent runs and pooled sandboxes hold, at least 16.
pub fn default_max_connections(nofile: u64, sandboxes: usize) -> usize {
    let spare = nofile
        .saturating_sub(RESERVED)
        .saturating_sub(PER_RUN.saturating_mul(sandboxes as u64));
    spare.clamp(16, usize::MAX as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_leaves_room_for_runs() {
        assert_eq!(default_max_connections(1024, 4), 1024 - 128 - 64);
        assert_eq!(default_max_connections(100, 100), 16);
        assert_eq!(
            default_max_connections(u64::MAX, 1),
            (u64::MAX - 144) as usize
        );
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let (_, after) = raise_nofile().unwrap();
        let (soft, hard) = nofile().unwrap();
        assert_eq!(after, soft);
        assert!(soft == hard || hard == libc::RLIM_INFINITY, "{soft} {hard}");
    }
}
