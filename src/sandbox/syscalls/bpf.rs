//! The policy as classic BPF programs for `seccomp(2)`, compiled by `seccompiler` (Firecracker's)
//! once when a sandbox is made, and handed to bwrap, which installs them just before it starts
//! the relay, so that they cover the relay and everything the program starts.
//!
//! Two programs, because a `seccompiler` filter has one action for the calls it matches and one
//! for the rest: the policy (allowed calls allowed, the rest EPERM), then one that answers ENOSYS
//! to the calls in `ENOSYS`, which the first allows. The kernel runs both for every call and
//! keeps the stronger verdict, so an ENOSYS call ends in ENOSYS whatever the policy says of it.
//! Calls whose verdict depends on no argument are cached by the kernel (5.11 and newer), so the
//! length of the list costs nothing on the calls a program makes most.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::{ALLOWED, ArgTest, CONDITIONAL, ENOSYS};

/// The compiled programs, in the order they are to be installed, as `struct sock_filter` arrays.
#[derive(Clone, Debug)]
pub struct Filters {
    programs: Vec<Vec<u8>>,
}

fn condition(arg: u8, test: ArgTest) -> Result<SeccompCondition, BackendError> {
    let (op, value) = match test {
        ArgTest::Equals(v) => (SeccompCmpOp::Eq, v),
        ArgTest::NoneOf(mask) => (SeccompCmpOp::MaskedEq(u64::from(mask)), 0),
    };
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, u64::from(value))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    others: SeccompAction,
    matched: SeccompAction,
) -> Result<Vec<u8>, BackendError> {
    let filter = SeccompFilter::new(rules, others, matched, TargetArch::x86_64)?;
    let program: BpfProgram = filter.try_into()?;
    Ok(program
        .iter()
        .flat_map(|i| {
            let mut bytes = [0u8; 8];
            bytes[..2].copy_from_slice(&i.code.to_ne_bytes());
            bytes[2] = i.jt;
            bytes[3] = i.jf;
            bytes[4..].copy_from_slice(&i.k.to_ne_bytes());
            bytes
        })
        .collect())
}

impl Filters {
    pub fn compile() -> Result<Filters, BackendError> {
        let eperm = SeccompAction::Errno(libc::EPERM as u32);
        // An empty rule list matches the call whatever its arguments.
        let mut policy: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
            .iter()
            .chain(ENOSYS)
            .map(|call| (call.nr, Vec::new()))
            .collect();
        for c in CONDITIONAL {
            let rules = c
                .any_of
                .iter()
                .map(|&test| SeccompRule::new(vec![condition(c.arg, test)?]))
                .collect::<Result<Vec<_>, _>>()?;
            policy.insert(c.call.nr, rules);
        }
        let enosys = ENOSYS.iter().map(|call| (call.nr, Vec::new())).collect();
        Ok(Filters {
            programs: vec![
                compile(policy, eperm, SeccompAction::Allow)?,
                compile(
                    enosys,
                    SeccompAction::Allow,
                    SeccompAction::Errno(libc::ENOSYS as u32),
                )?,
            ],
        })
    }

    /// Each program's instructions, in the order they are to be installed.
    pub fn programs(&self) -> &[Vec<u8>] {
        &self.programs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest program the kernel takes (BPF_MAXINSNS).
    const MAX_INSTRUCTIONS: usize = 4096;

    #[test]
    fn compiles_into_programs_the_kernel_takes() {
        let filters = Filters::compile().unwrap();
        assert_eq!(filters.programs().len(), 2);
        for program in filters.programs() {
            assert_eq!(program.len() % 8, 0);
            assert!(
                program.len() / 8 < MAX_INSTRUCTIONS,
                "{}",
                program.len() / 8
            );
        }
    }

    /// Installs the filters in a forked child and reports what some calls return there: the
    /// policy's behaviour on this kernel, without bwrap.
    #[test]
    fn the_kernel_enforces_the_policy() {
        let filters = Filters::compile().unwrap();
        let progs: Vec<libc::sock_fprog> = filters
            .programs()
            .iter()
            .map(|p| libc::sock_fprog {
                len: u16::try_from(p.len() / 8).unwrap(),
                filter: p.as_ptr().cast_mut().cast(),
            })
            .collect();
        let calls: [(i64, [u64; 2]); 6] = [
            (libc::SYS_getpid, [0, 0]),
            (libc::SYS_unshare, [libc::CLONE_NEWUSER as u64, 0]),
            (libc::SYS_io_uring_setup, [1, 0]),
            (libc::SYS_clone3, [0, 0]),
            (libc::SYS_personality, [0x0040_0000, 0]),
            (libc::SYS_socket, [libc::AF_VSOCK as u64 | 1 << 32, 1]),
        ];
        let mut pipe = [0; 2];
        // SAFETY: a pipe into an array of two descriptors.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child makes raw system calls on memory prepared before the fork and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above, async-signal-safe calls only.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for prog in &progs {
                    if libc::syscall(libc::SYS_seccomp, 1, 0, prog as *const libc::sock_fprog) != 0
                    {
                        libc::_exit(2);
                    }
                }
                let mut errnos = [0i32; 6];
                for (i, (nr, args)) in calls.iter().enumerate() {
                    let r = libc::syscall(*nr, args[0], args[1], 0, 0, 0, 0);
                    errnos[i] = if r < 0 { *libc::__errno_location() } else { 0 };
                }
                libc::write(pipe[1], errnos.as_ptr().cast(), size_of_val(&errnos));
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end; then reading into a buffer of that size.
        unsafe { libc::close(pipe[1]) };
        let mut errnos = [0i32; 6];
        let n = unsafe { libc::read(pipe[0], errnos.as_mut_ptr().cast(), size_of_val(&errnos)) };
        let mut status = 0;
        // SAFETY: reaping the child forked above.
        unsafe {
            libc::close(pipe[0]);
            libc::waitpid(pid, &mut status, 0);
        }
        assert_eq!(status, 0, "the child could not install the filters");
        assert_eq!(n as usize, size_of_val(&errnos));
        assert_eq!(
            errnos,
            [
                0,
                libc::EPERM,
                libc::EPERM,
                libc::ENOSYS,
                libc::EPERM,
                libc::EPERM
            ]
        );
    }
}
