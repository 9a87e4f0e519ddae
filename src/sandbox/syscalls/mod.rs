//! Which system calls a program may make: one policy for every backend, rendered as the BPF
//! programs that bwrap installs in front of the relay and the program (`bpf`), and as the seccomp
//! profile that the Docker engine applies to a run container (`profile`).
//!
//! The policy is the Docker engine's default profile for a container with no capability (moby's
//! `profiles/seccomp/default.json`, its kernel 6.13 edition) on x86_64, with less allowed:
//! - `io_uring_setup`, `io_uring_enter`, `io_uring_register`: a large and young interface, where
//!   many of the kernel's recent privilege escalations started (moby refuses them too since 25.0);
//! - `ptrace`, `process_vm_readv`, `process_vm_writev`: moby allows them on kernels from 4.8; a
//!   playground program has no use for another process's memory;
//! - `socket` only for the address families that exist (less AF_ALG and AF_VSOCK, as moby), tested
//!   on the 32 bits the kernel reads, where moby's test of all 64 lets a high bit slip past it.
//!
//! Namespaces stay out of reach, as under Docker: `unshare`, `setns`, `clone` with any
//! `CLONE_NEW*` flag and the mount calls are refused. `clone3` fails with ENOSYS, as under Docker:
//! its flags are behind a pointer that a filter cannot read, and libc falls back to `clone` on
//! ENOSYS. Any other call outside the policy fails with EPERM before the kernel looks at its
//! arguments, and so does a call through the x32 ABI; one through the i386 ABI (`int 0x80`) kills
//! the process under bwrap.

mod bpf;
mod profile;

pub use bpf::Filters;
pub use profile::{docker_profile, docker_security_opt};

/// A system call by its x86_64 name and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Syscall {
    pub name: &'static str,
    pub nr: i64,
}

/// A test on the low 32 bits of an argument. Every argument tested here is one that the kernel
/// reads as an `int` or as 32 bits of flags, so a test on all 64 could be dodged through the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgTest {
    Equals(u32),
    /// None of these bits is set.
    NoneOf(u32),
}

/// A call allowed when its argument `arg` passes one of `any_of`, refused with EPERM otherwise.
#[derive(Clone, Copy, Debug)]
pub struct Conditional {
    pub call: Syscall,
    pub arg: u8,
    pub any_of: &'static [ArgTest],
}

/// Numbers by the libc crate's names, and the few calls newer than its tables (numbers from the
/// kernel's `arch/x86/entry/syscalls/syscall_64.tbl`; these shadow libc's once it has them).
#[allow(non_upper_case_globals)]
mod nr {
    pub use libc::*;
    pub const SYS_io_pgetevents: i64 = 333;
    pub const SYS_uretprobe: i64 = 335;
    pub const SYS_cachestat: i64 = 451;
    pub const SYS_map_shadow_stack: i64 = 453;
    pub const SYS_futex_wake: i64 = 454;
    pub const SYS_futex_wait: i64 = 455;
    pub const SYS_futex_requeue: i64 = 456;
    pub const SYS_statmount: i64 = 457;
    pub const SYS_listmount: i64 = 458;
}

const fn without_prefix(constant: &'static str) -> &'static str {
    constant.split_at("SYS_".len()).1
}

macro_rules! calls {
    ($($constant:ident),* $(,)?) => {
        [$(Syscall { name: without_prefix(stringify!($constant)), nr: nr::$constant as i64 }),*]
    };
}

/// Allowed whatever their arguments: moby's list for a container without capabilities, on
/// x86_64, less io_uring (see the module's header).
pub const ALLOWED: &[Syscall] = &calls![
    SYS_accept,
    SYS_accept4,
    SYS_access,
    SYS_adjtimex,
    SYS_alarm,
    SYS_arch_prctl,
    SYS_bind,
    SYS_brk,
    SYS_cachestat,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_chmod,
    SYS_chown,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_creat,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_ctl_old,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchmodat2,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fork,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_requeue,
    SYS_futex_wait,
    SYS_futex_waitv,
    SYS_futex_wake,
    SYS_futimesat,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpgrp,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_get_robust_list,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_get_thread_area,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_ioctl,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_io_pgetevents,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_io_setup,
    SYS_io_submit,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lchown,
    SYS_lgetxattr,
    SYS_link,
    SYS_linkat,
    SYS_listen,
    SYS_listmount,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_lstat,
    SYS_madvise,
    SYS_map_shadow_stack,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_mknod,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_modify_ldt,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_mseal,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_name_to_handle_at,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_open,
    SYS_openat,
    SYS_openat2,
    SYS_pause,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_poll,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_pselect6,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlink,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rmdir,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_select,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_set_robust_list,
    SYS_setsid,
    SYS_setsockopt,
    SYS_set_thread_area,
    SYS_set_tid_address,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_stat,
    SYS_statfs,
    SYS_statmount,
    SYS_statx,
    SYS_symlink,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_time,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlink,
    SYS_unlinkat,
    SYS_uretprobe,
    SYS_utime,
    SYS_utimensat,
    SYS_utimes,
    SYS_vfork,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
];

/// Every namespace a `clone` could create.
const CLONE_NEW_ANY: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

const fn one(name: &'static str, nr: i64) -> Syscall {
    Syscall { name, nr }
}

/// `socket` for every address family up to AF_MCTP (45, the last in Linux 6.18), less AF_ALG (38:
/// the kernel's crypto API) and AF_VSOCK (40: a way out to the hypervisor).
const SOCKET_FAMILIES: [ArgTest; 44] = {
    let mut tests = [ArgTest::Equals(0); 44];
    let mut family = 0u32;
    let mut i = 0;
    while family <= 45 {
        if family != 38 && family != 40 {
            tests[i] = ArgTest::Equals(family);
            i += 1;
        }
        family += 1;
    }
    tests
};

/// Allowed only for some values of one argument.
pub const CONDITIONAL: &[Conditional] = &[
    Conditional {
        call: one("socket", libc::SYS_socket),
        arg: 0,
        any_of: &SOCKET_FAMILIES,
    },
    // The execution domains that libc and runtimes ask for (and the query, 0xffffffff); not
    // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and the like, which undo the address space's defences.
    Conditional {
        call: one("personality", libc::SYS_personality),
        arg: 0,
        any_of: &[
            ArgTest::Equals(0),
            ArgTest::Equals(0x0008),
            ArgTest::Equals(0x20000),
            ArgTest::Equals(0x20008),
            ArgTest::Equals(0xffff_ffff),
        ],
    },
    // Threads and processes, never a new namespace.
    Conditional {
        call: one("clone", libc::SYS_clone),
        arg: 0,
        any_of: &[ArgTest::NoneOf(CLONE_NEW_ANY)],
    },
];

/// Refused with ENOSYS rather than EPERM, so that libc falls back to an older call that the
/// policy can judge (`clone3` → `clone`).
pub const ENOSYS: &[Syscall] = &[one("clone3", libc::SYS_clone3)];

/// What the startup log names among the refused calls: what an exploit would reach for first.
pub const NOTABLE_REFUSALS: &[&str] = &[
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "open_by_handle_at",
    "kexec_load",
    "init_module",
    "finit_module",
    "reboot",
    "swapon",
    "syslog",
    "chroot",
    "acct",
];

/// A short digest of the whole policy, for the sandboxes' fingerprints: answers cached under
/// another policy may differ.
pub fn fingerprint() -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(docker_profile().to_string().as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// One line for the startup log: what a program can and cannot reach.
pub fn describe() -> String {
    format!(
        "syscall filter (x86_64 only): {} calls allowed (Docker's default profile without \
         capabilities, less io_uring and ptrace); everything else fails with EPERM, e.g. {}; \
         clone only without CLONE_NEW* flags; socket without AF_ALG and AF_VSOCK; personality \
         only the usual domains; {} fail with ENOSYS (libc falls back)",
        ALLOWED.len() + CONDITIONAL.len(),
        NOTABLE_REFUSALS.join(", "),
        ENOSYS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn every_call() -> impl Iterator<Item = Syscall> {
        ALLOWED
            .iter()
            .copied()
            .chain(CONDITIONAL.iter().map(|c| c.call))
            .chain(ENOSYS.iter().copied())
    }

    #[test]
    fn each_call_has_one_rule_and_one_number() {
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for call in every_call() {
            assert!(names.insert(call.name), "{} twice", call.name);
            assert!(numbers.insert(call.nr), "{} shares {}", call.name, call.nr);
            assert!((0..512).contains(&call.nr), "{} {}", call.name, call.nr);
        }
    }

    #[test]
    fn the_names_come_from_libc_constants() {
        let read = ALLOWED.iter().find(|s| s.name == "read").unwrap();
        assert_eq!(read.nr, 0);
        let futex_wake = ALLOWED.iter().find(|s| s.name == "futex_wake").unwrap();
        assert_eq!(futex_wake.nr, 454);
        assert_eq!(ENOSYS[0].nr, 435);
    }

    #[test]
    fn what_an_exploit_wants_is_not_allowed() {
        let allowed: HashSet<&str> = every_call().map(|s| s.name).collect();
        for name in NOTABLE_REFUSALS {
            assert!(!allowed.contains(name), "{name} is allowed");
        }
    }

    #[test]
    fn clone_refuses_every_namespace_flag() {
        let clone = CONDITIONAL.iter().find(|c| c.call.name == "clone").unwrap();
        assert_eq!(clone.any_of, &[ArgTest::NoneOf(0x7E02_0000)]);
    }

    #[test]
    fn socket_refuses_alg_and_vsock_only() {
        let socket = CONDITIONAL
            .iter()
            .find(|c| c.call.name == "socket")
            .unwrap();
        let families: Vec<u32> = socket
            .any_of
            .iter()
            .map(|t| match t {
                ArgTest::Equals(f) => *f,
                ArgTest::NoneOf(_) => panic!("{t:?}"),
            })
            .collect();
        let expected: Vec<u32> = (0..=45).filter(|f| ![38, 40].contains(f)).collect();
        assert_eq!(families, expected);
        assert!(families.contains(&(libc::AF_UNIX as u32)));
        assert!(families.contains(&(libc::AF_INET6 as u32)));
    }

    #[test]
    fn the_description_is_one_line() {
        let line = describe();
        assert!(!line.contains('\n'));
        assert!(line.contains("io_uring_setup") && line.contains("clone3"));
    }
}
