//! Attacks from other playgrounds' histories, each run against both backends: the Docker engine
//! with the busybox image `compilerd-test`, and bubblewrap with its rootfs. Freezing the sandbox,
//! filling its space, reading what it should not see, reaching out of it, nesting namespaces,
//! two runs spying on each other, and files planted for the daemon. Every check also proves that
//! nothing of the run outlives it: each attack's processes carry a unique marker in their command
//! line, looked for in the host's /proc afterwards.

#[path = "common/docker.rs"]
mod common_docker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common_docker::PoolHooks;
use compilerd::hooks::NoHooks;
use compilerd::sandbox::bwrap::{BwrapOptions, BwrapSandbox};
use compilerd::sandbox::docker::{DockerOptions, DockerSandbox};
use compilerd::sandbox::{Chunk, Limits, RunOutcome, Sandbox, StreamKind};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Docker,
    Bwrap,
}

const TIMEOUT: Duration = Duration::from_secs(2);
/// A run is answered within its deadline plus this (container hand-over, kill, removal).
const SLACK: Duration = Duration::from_secs(4);
const TMPFS: u64 = 8 << 20;

fn limits() -> Limits {
    Limits {
        timeout: TIMEOUT,
        max_output_bytes: 64 << 10,
        memory_bytes: 64 << 20,
        pids: 32,
        cpus: 1.0,
        tmpfs_bytes: TMPFS,
    }
}

fn rootfs() -> PathBuf {
    std::env::var_os("COMPILERD_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/compilerd-test/rootfs"))
}

enum Target {
    Docker(DockerSandbox, Arc<PoolHooks>),
    Bwrap(Box<BwrapSandbox>),
}

impl Target {
    async fn open(kind: Kind) -> Target {
        match kind {
            Kind::Docker => {
                // The production path: a pool of armed containers.
                let (sb, hooks) = common_docker::connect_opts(
                    DockerOptions::new(common_docker::image(), 1),
                    limits(),
                )
                .await;
                Target::Docker(sb, hooks)
            }
            Kind::Bwrap => {
                let opts = BwrapOptions {
                    command: "/bin/sh".into(),
                    rootfs: Some(rootfs()),
                    // As a daemon runs it: every attack meets a pre-spawned sandbox.
                    pool_size: 2,
                };
                let sb = BwrapSandbox::connect(opts, limits(), Arc::new(NoHooks))
                    .await
                    .unwrap_or_else(|e| panic!("bwrap: {}", e.message));
                assert!(
                    sb.enforcement().starts_with("cgroup"),
                    "limits are not enforced by cgroups here: {}",
                    sb.enforcement()
                );
                Target::Bwrap(Box::new(sb))
            }
        }
    }

    fn sandbox(&self) -> &dyn Sandbox {
        match self {
            Target::Docker(sb, _) => sb,
            Target::Bwrap(sb) => sb.as_ref(),
        }
    }

    /// Runs `program` (on Docker in an armed pool container) and checks it was answered in time.
    async fn run(&self, program: &str) -> RunOutcome {
        if let Target::Docker(_, hooks) = self {
            hooks.wait_armed(1).await;
        }
        let started = Instant::now();
        let outcome = self
            .sandbox()
            .run(Bytes::from(program.to_owned()), None)
            .await
            .unwrap_or_else(|e| panic!("run failed: {e:?}\nprogram: {program}"));
        assert!(
            started.elapsed() < TIMEOUT + SLACK,
            "answered after {:?}\nprogram: {program}",
            started.elapsed()
        );
        outcome
    }

    /// The output of a run that must have exited.
    async fn exited(&self, program: &str) -> (i64, String) {
        match self.run(program).await {
            RunOutcome::Exited { status, output } => (status, all_text(&output)),
            other => panic!("expected an exit, got {other:?}\nprogram: {program}"),
        }
    }

    /// Removes everything and checks the backend holds nothing more.
    async fn finish(self) {
        match self {
            Target::Docker(sb, _) => common_docker::finish(sb).await,
            Target::Bwrap(sb) => {
                let (parents, prefix) = sb.cgroup_parents().expect("cgroups in use");
                sb.shutdown().await;
                for parent in parents {
                    let left: Vec<_> = std::fs::read_dir(&parent)
                        .unwrap()
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with(&prefix))
                        .collect();
                    assert!(left.is_empty(), "run cgroups left in {parent:?}: {left:?}");
                }
            }
        }
    }
}

fn all_text(output: &[Chunk]) -> String {
    output
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

fn stdout(output: &[Chunk]) -> String {
    output
        .iter()
        .filter(|c| c.kind == StreamKind::Stdout)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

/// A number no other process on the host has in its command line: `sleep <marker>` is a process
/// the test can look for after the run.
fn marker() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    7_000_000 + (std::process::id() % 1000) * 1000 + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Host processes whose command line holds `marker`.
fn with_marker(marker: u32) -> Vec<String> {
    let needle = marker.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.split_whitespace().any(|w| w == needle))
        .collect()
}

/// Waits (bounded) until no host process carries `marker`: removal may finish just after the
/// answer.
async fn assert_gone(marker: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = with_marker(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes outlived the run: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! both_backends {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn docker() {
                    super::$check(super::Kind::Docker).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn bwrap() {
                    super::$check(super::Kind::Bwrap).await
                }
            }
        )*
    };
}

both_backends!(
    stop_own_process_group,
    stop_every_process,
    signal_ignoring_processes,
    closed_stdout_and_stderr_running_on,
    detached_session_outlives_nothing,
    filling_tmp_shm_and_more,
    many_small_files,
    environment_holds_nothing_of_the_host,
    proc_shows_only_the_run,
    sys_is_read_only,
    host_sockets_and_network_unreachable,
    no_privileges_to_gain,
    nested_namespaces_are_refused,
    concurrent_runs_never_see_each_other,
    planted_links_and_fifos_are_never_followed,
);

// `kill -9 -1` kills every process the program's user may signal except the caller (Linux
// semantics): the shell lives on and its answer is its own, not a timeout, not "out of memory".
both_backends!(kill_every_process);

async fn assert_times_out(t: &Target, program: &str, before: &str) {
    match t.run(program).await {
        RunOutcome::TimedOut { output } => assert_eq!(stdout(&output), before, "{program}"),
        other => panic!("expected a timeout, got {other:?}\nprogram: {program}"),
    }
}

/// A frozen process group. The stop comes from a child shell: a shell that is its PID
/// namespace's init (bwrap) cannot be stopped from inside, and would just carry on.
async fn stop_own_process_group(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    assert_times_out(
        &t,
        &format!("sleep {m} & echo before; sh -c 'kill -STOP 0'; echo after"),
        "before\n",
    )
    .await;
    assert_gone(m).await;
    t.finish().await;
}

/// Everything of the program's frozen but the stopping shell: the deadline ends the run. (On
/// both backends the program's shell is not its namespace's init, the relay or docker-init is,
/// so it is frozen too; the relay itself, pid 1 under bwrap, another uid under Docker, is not.)
async fn stop_every_process(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    let program = format!("sleep {m} & echo before; sh -c 'kill -STOP -1'; echo after");
    assert_times_out(&t, &program, "before\n").await;
    assert_gone(m).await;
    // The sandbox is still usable for the next run.
    assert_eq!(t.exited("echo next").await, (0, "next\n".into()));
    t.finish().await;
}

async fn kill_every_process(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    let program = format!("sleep {m} & echo before; kill -9 -1; sleep 1; echo after");
    let started = Instant::now();
    match t.run(&program).await {
        RunOutcome::Exited { status, output } => {
            assert_eq!((status, stdout(&output).as_str()), (0, "before\nafter\n"));
        }
        other => panic!("expected the shell's own exit, got {other:?}"),
    }
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    assert_gone(m).await;
    assert_eq!(t.exited("echo next").await, (0, "next\n".into()));
    t.finish().await;
}

async fn signal_ignoring_processes(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    let program = format!(
        "trap '' HUP INT QUIT TERM USR1 USR2 ALRM PIPE
         (trap '' HUP INT QUIT TERM USR1 USR2 ALRM PIPE; exec sleep {m}) &
         echo before
         while :; do :; done"
    );
    assert_times_out(&t, &program, "before\n").await;
    assert_gone(m).await;
    t.finish().await;
}

async fn closed_stdout_and_stderr_running_on(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    let program = format!("echo before; exec >&- 2>&-; sleep {m} & while :; do :; done");
    assert_times_out(&t, &program, "before\n").await;
    assert_gone(m).await;
    t.finish().await;
}

async fn detached_session_outlives_nothing(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    let program = format!("setsid sleep {m} </dev/null >/dev/null 2>&1 & echo started");
    assert_eq!(t.exited(&program).await, (0, "started\n".into()));
    assert_gone(m).await;
    t.finish().await;
}

/// Free bytes of the filesystem holding `path`.
fn free_bytes(path: &str) -> u64 {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail * s.f_frsize
}

async fn filling_tmp_shm_and_more(kind: Kind) {
    let t = Target::open(kind).await;
    let host_free = (free_bytes("/"), free_bytes("/var/lib/docker"));
    let program = r#"
        dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null; echo "tmp dd=$?"
        fallocate -l 8G /tmp/huge 2>/dev/null; echo "tmp fallocate=$?"
        dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; echo "shm dd=$?"
        for d in /var/tmp /run/lock /run / /home /etc /dev /proc /sys; do
            (echo x > $d/planted) 2>/dev/null && echo "wrote $d/planted"
            fallocate -l 8G $d/huge 2>/dev/null && echo "fallocated $d/huge"
        done
        echo done
    "#;
    let (status, out) = t.exited(program).await;
    assert_eq!(status, 0, "{out}");
    assert!(
        out.contains("tmp dd=1"),
        "a 64 MiB write fits an 8 MiB /tmp:\n{out}"
    );
    assert!(!out.contains("tmp fallocate=0"), "{out}");
    assert!(
        !out.contains("shm dd=0"),
        "a 64 MiB write fits /dev/shm:\n{out}"
    );
    assert!(
        !out.contains("wrote") && !out.contains("fallocated"),
        "{out}"
    );
    assert!(out.ends_with("done\n"), "{out}");
    let after = (free_bytes("/"), free_bytes("/var/lib/docker"));
    // Other work on the host moves these a little; an escaped 8 GiB allocation would not.
    assert!(
        after.0 + (1 << 30) > host_free.0 && after.1 + (1 << 30) > host_free.1,
        "host disk shrank: {host_free:?} -> {after:?}"
    );

    let (_, next) = t
        .exited("ls -A /tmp /dev/shm; cat /var/tmp/planted /run/lock/planted 2>/dev/null; echo end")
        .await;
    assert!(!next.contains("fill") && !next.contains("huge"), "{next}");
    assert!(next.ends_with("end\n") && !next.contains("\nx\n"), "{next}");
    t.finish().await;
}

async fn many_small_files(kind: Kind) {
    let t = Target::open(kind).await;
    let program = r#"
        i=0
        while [ $i -lt 1000000 ] && : > /tmp/f$i 2>/dev/null; do i=$((i+1)); done
        echo "made $i"
    "#;
    // Either the tmpfs or the memory limit stops it, or the deadline does.
    match t.run(program).await {
        RunOutcome::Exited { output, .. } => {
            let out = stdout(&output);
            assert!(
                out.starts_with("made ") && !out.contains("1000000"),
                "{out}"
            );
        }
        RunOutcome::TimedOut { .. } | RunOutcome::OutOfMemory { .. } => {}
        other => panic!("{other:?}"),
    }
    let (_, next) = t.exited("ls -A /tmp | wc -l").await;
    assert_eq!(next.trim(), "0");
    t.finish().await;
}

/// The program's environment and its pid 1's (docker-init as root, or the non-dumpable relay,
/// whose environ the program cannot read at all: then it shows nothing).
async fn environment_holds_nothing_of_the_host(kind: Kind) {
    let t = Target::open(kind).await;
    let (_, out) = t
        .exited("env | cut -d= -f1 | sort | tr '\\n' ' '; echo; cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n' | cut -d= -f1 | sort | tr '\\n' ' '")
        .await;
    let allowed = [
        "PATH", "HOME", "LANG", "HOSTNAME", "PWD", "SHLVL", "OLDPWD", "_",
    ];
    for name in out.split_whitespace() {
        assert!(
            allowed.contains(&name),
            "{name} leaked into the sandbox:\n{out}"
        );
    }
    t.finish().await;
}

async fn proc_shows_only_the_run(kind: Kind) {
    let t = Target::open(kind).await;
    let program = r#"
        echo "pids $(ls /proc | grep -c '^[0-9]')"
        cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' '; echo
        head -c 1 /proc/kcore >/dev/null 2>&1 && echo "read kcore"
        (echo 1 > /proc/sys/kernel/sysrq) 2>/dev/null && echo "wrote sysrq"
        (echo c > /proc/sysrq-trigger) 2>/dev/null && echo "wrote sysrq-trigger"
        echo end
    "#;
    let (_, out) = t.exited(program).await;
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids <= 8, "{pids} processes visible:\n{out}");
    for host in [
        "dockerd",
        "containerd",
        "cargo",
        "attacks-",
        "systemd",
        "sshd",
    ] {
        assert!(!out.contains(host), "{host} visible:\n{out}");
    }
    assert!(!out.contains("read ") && !out.contains("wrote "), "{out}");
    assert!(out.ends_with("end\n"), "{out}");
    t.finish().await;
}

async fn sys_is_read_only(kind: Kind) {
    let t = Target::open(kind).await;
    let program = r#"
        for f in /sys/kernel/mm/transparent_hugepage/enabled /sys/fs/cgroup/cgroup.procs \
                 /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max /sys/power/state; do
            [ -e $f ] && (echo 1 > $f) 2>/dev/null && echo "wrote $f"
        done
        mkdir /sys/fs/cgroup/escape 2>/dev/null && echo "made a cgroup"
        touch /sys/planted 2>/dev/null && echo "wrote /sys"
        echo end
    "#;
    let (_, out) = t.exited(program).await;
    assert_eq!(out, "end\n");
    t.finish().await;
}

async fn host_sockets_and_network_unreachable(kind: Kind) {
    let t = Target::open(kind).await;
    let v4 = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let v6 = std::net::TcpListener::bind("[::]:0").unwrap();
    v4.set_nonblocking(true).unwrap();
    v6.set_nonblocking(true).unwrap();
    let (p4, p6) = (
        v4.local_addr().unwrap().port(),
        v6.local_addr().unwrap().port(),
    );
    use std::os::linux::net::SocketAddrExt;
    let name = format!("compilerd-attack-{}", std::process::id());
    let abstract_addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let _abstract = std::os::unix::net::UnixListener::bind_addr(&abstract_addr).unwrap();
    let program = format!(
        r#"
        for s in /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock /run/systemd/private; do
            [ -e $s ] && echo "exists $s"
        done
        find / -xdev -type s 2>/dev/null | sed 's/^/socket /'
        for h in 127.0.0.1 172.17.0.1 10.0.2.2 1.1.1.1; do
            nc -w 1 $h {p4} </dev/null 2>/dev/null && echo "reached $h"
        done
        nc -w 1 ::1 {p6} </dev/null 2>/dev/null && echo "reached ::1"
        wget -q -T 1 -O /dev/null http://127.0.0.1:{p4}/ 2>/dev/null && echo "wget reached"
        grep -q {name} /proc/net/unix 2>/dev/null && echo "abstract socket visible"
        ip -o link 2>/dev/null | grep -v ': lo:' | sed 's/^/link /'
        echo end
    "#
    );
    let (_, out) = t.exited(&program).await;
    assert_eq!(out, "end\n");
    for l in [&v4, &v6] {
        let e = l.accept().map(|_| ()).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::WouldBlock,
            "a connection arrived"
        );
    }
    t.finish().await;
}

async fn no_privileges_to_gain(kind: Kind) {
    let t = Target::open(kind).await;
    let program = r#"
        grep -E '^(Uid|CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' '
        grep -E ' /tmp ' /proc/mounts | grep -q nosuid || echo "tmp allows setuid"
        find / -xdev -perm -4000 2>/dev/null | sed 's/^/setuid /'
        cp /bin/busybox /tmp/busybox && chmod 4755 /tmp/busybox &&
            echo "uid via setuid copy $(/tmp/busybox id -u 2>/dev/null || echo refused)"
        su -c 'id -u' root </dev/null >/dev/null 2>&1 && echo "su worked"
        nsenter -t 1 -m -p true 2>/dev/null && echo "nsenter worked"
        chroot / true 2>/dev/null && echo "chroot worked"
        echo end
    "#;
    let (_, out) = t.exited(program).await;
    assert!(out.contains("NoNewPrivs: 1"), "{out}");
    for cap in ["CapEff", "CapPrm", "CapAmb"] {
        assert!(
            out.contains(&format!("{cap}: 0000000000000000")),
            "{cap}:\n{out}"
        );
    }
    let uid = out
        .lines()
        .find_map(|l| l.strip_prefix("Uid: "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(uid, "0", "{out}");
    for bad in [
        "tmp allows",
        "setuid /",
        "su worked",
        "nsenter worked",
        "chroot worked",
    ] {
        assert!(!out.contains(bad), "{bad}:\n{out}");
    }
    // A setuid copy of busybox owned by the run's own user either runs as that user or is not
    // run at all (Docker refuses the exec).
    let copy = out
        .lines()
        .find_map(|l| l.strip_prefix("uid via setuid copy "))
        .unwrap_or_else(|| panic!("no setuid copy made:\n{out}"));
    assert!(copy == uid || copy == "refused", "{out}");
    assert!(out.ends_with("end\n"), "{out}");
    t.finish().await;
}

/// The syscall filter refuses every namespace on both backends (bwrap: also --disable-userns), so
/// the nested root from which the nf_tables and io_uring escalations were run is out of reach.
async fn nested_namespaces_are_refused(kind: Kind) {
    let t = Target::open(kind).await;
    let m = marker();
    let program = format!(
        r#"
        unshare -U -r -n -m -p -f sh -c '
            echo "inner uid $(id -u)"
            mount -t tmpfs -o size=1G none /tmp && echo "mounted tmpfs"
            sleep {m}
        '
        echo "nested=$?"
        for ns in -U -n -m -p -i -u; do unshare $ns true; echo "unshare $ns=$?"; done
        echo end
    "#
    );
    let (status, out) = t.exited(&program).await;
    assert_eq!(status, 0, "{out}");
    assert!(
        !out.contains("inner uid"),
        "a nested namespace was made:\n{out}"
    );
    assert!(!out.contains("mounted tmpfs"), "{out}");
    assert!(out.contains("nested=1\n"), "{out}");
    for ns in ["-U", "-n", "-m", "-p", "-i", "-u"] {
        assert!(out.contains(&format!("unshare {ns}=1\n")), "{ns}:\n{out}");
    }
    // The kernel's answer, not a missing tool: every refusal is EPERM.
    let complaints: Vec<&str> = out.lines().filter(|l| l.starts_with("unshare:")).collect();
    assert_eq!(complaints.len(), 7, "{out}");
    assert!(
        complaints
            .iter()
            .all(|l| l.contains("Operation not permitted")),
        "{out}"
    );
    assert!(out.ends_with("end\n"), "{out}");
    assert_gone(m).await;
    t.finish().await;
}

async fn concurrent_runs_never_see_each_other(kind: Kind) {
    let t = Arc::new(Target::open(kind).await);
    let markers: Vec<u32> = (0..4).map(|_| marker()).collect();
    let mut runs = Vec::new();
    for (i, m) in markers.iter().copied().enumerate() {
        let t = t.clone();
        let program = format!(
            r#"
            echo run{i} > /tmp/who
            sleep {m} &
            n=0; while [ $n -lt 10 ]; do echo "run{i}-$n"; n=$((n+1)); sleep 0.05; done
            echo "who $(cat /tmp/who)"
            echo "tmp $(ls -A /tmp | tr '\n' ' ')"
            echo "procs $(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ')"
            "#
        );
        runs.push(tokio::spawn(async move {
            // Docker: the pool holds one container; the others start cold, at the same time.
            let outcome = t
                .sandbox()
                .run(Bytes::from(program), None)
                .await
                .expect("run");
            (i, outcome)
        }));
    }
    for run in runs {
        let (i, outcome) = run.await.unwrap();
        let RunOutcome::Exited { status: 0, output } = outcome else {
            panic!("run {i}: {outcome:?}");
        };
        let out = stdout(&output);
        assert!(out.contains(&format!("who run{i}\n")), "{out}");
        assert!(out.contains("tmp who \n"), "{out}");
        for (j, m) in markers.iter().enumerate() {
            if j != i {
                assert!(
                    !out.contains(&format!("run{j}")),
                    "run {i} saw run {j}:\n{out}"
                );
                assert!(
                    !out.contains(&m.to_string()),
                    "run {i} saw run {j}'s process:\n{out}"
                );
            }
        }
    }
    for m in markers {
        assert_gone(m).await;
    }
    match Arc::try_unwrap(t) {
        Ok(t) => t.finish().await,
        Err(_) => panic!("a run still holds the target"),
    }
}

/// The daemon reads nothing from a run's filesystem: output comes over pipes (bwrap) or the
/// engine's attach stream (Docker), and clean-up is an rmdir of the run's cgroup (bwrap) or the
/// container's removal (Docker). So links and FIFOs a run plants where a daemon might look (its
/// /tmp, its cgroup, its stdout) are never followed: the run ends normally, the next run is clean.
async fn planted_links_and_fifos_are_never_followed(kind: Kind) {
    let t = Target::open(kind).await;
    let program = r#"
        ln -s / /tmp/root; ln -s /etc/shadow /tmp/shadow; mkfifo /tmp/fifo
        ln -s /proc/1/root /tmp/init-root
        mkdir /sys/fs/cgroup/planted 2>/dev/null && echo "made a cgroup"
        ln -s / /sys/fs/cgroup/link 2>/dev/null && echo "linked in the cgroup"
        mkfifo /dev/shm/fifo 2>/dev/null
        exec 1>/tmp/fifo &
        echo planted
    "#;
    let (status, out) = t.exited(program).await;
    assert_eq!((status, out.as_str()), (0, "planted\n"));
    let (_, next) = t.exited("ls -A /tmp /dev/shm | tr '\\n' ' '; echo").await;
    assert!(!next.contains("root") && !next.contains("fifo"), "{next}");
    t.finish().await;
}

/// A program that prints what a backend's own failure looks like, or exits with the status a
/// memory kill has, gets its own answer: the daemon decides from signals a program cannot forge.
async fn spoofing_the_daemon(kind: Kind) {
    let t = Target::open(kind).await;
    let cases = [
        (
            "echo \"bwrap: Can't mount proc on /newroot/proc: fake\" >&2; exit 1",
            1,
        ),
        (
            "echo 'Error response from daemon: OCI runtime create failed: fake' >&2; exit 1",
            1,
        ),
        ("echo 'Killed' >&2; echo before; exit 137", 137),
    ];
    for (program, want) in cases {
        let (status, _) = t.exited(program).await;
        assert_eq!(status, want, "{program}");
    }
    t.finish().await;
}

/// Text a program prints can never make its answer a daemon failure: on bwrap, stderr beginning
/// `bwrap:`; on Docker, an exit 137 that was no memory kill.
mod spoofing_the_daemon {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn docker() {
        super::spoofing_the_daemon(super::Kind::Docker).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bwrap() {
        super::spoofing_the_daemon(super::Kind::Bwrap).await
    }
}
