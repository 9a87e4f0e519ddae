//! The bubblewrap backend against real bwrap, real namespaces and real cgroups: the adversarial
//! suite of the core issue, plus what only this backend can get wrong (the daemon's environment,
//! descriptors and files leaking in, processes outliving a run). Every check runs twice: on the
//! busybox rootfs (`COMPILERD_TEST_ROOTFS`, built by scripts/build-test-image.sh) and on the
//! host's own /usr.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use compilerd::hooks::NoHooks;
use compilerd::sandbox::bwrap::{BwrapOptions, BwrapSandbox};
use compilerd::sandbox::{
    Chunk, Limits, RunOutcome, SANDBOX_ENV, Sandbox, SandboxErrorKind, StreamKind,
};
use futures_util::stream::{self, StreamExt};

#[derive(Clone, Copy, Debug)]
enum Root {
    Rootfs,
    Host,
}

#[path = "common/order.rs"]
mod common_order;

fn rootfs_dir() -> PathBuf {
    std::env::var_os("COMPILERD_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/compilerd-test/rootfs"))
}

/// With a rootfs, as a daemon is configured, runs take pre-spawned sandboxes; on the host's
/// root, each run spawns its own: every check covers both ways a run starts.
fn options(root: Root) -> BwrapOptions {
    match root {
        Root::Rootfs => BwrapOptions {
            command: "/bin/sh".into(),
            rootfs: Some(rootfs_dir()),
            pool_size: 2,
        },
        Root::Host => BwrapOptions {
            command: "/bin/sh".into(),
            rootfs: None,
            pool_size: 0,
        },
    }
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(5),
        max_output_bytes: 64 << 10,
        memory_bytes: 64 << 20,
        pids: 64,
        cpus: 1.0,
        tmpfs_bytes: 1 << 20,
    }
}

async fn open_with(root: Root, limits: Limits) -> BwrapSandbox {
    match BwrapSandbox::connect(options(root), limits, Arc::new(NoHooks)).await {
        Ok(sb) => sb,
        Err(e) => panic!("connect ({root:?}): {}", e.message),
    }
}

/// The suite proves limits that only a cgroup enforces; on this CI host one must be in use.
fn assert_cgroup(sb: &BwrapSandbox) {
    assert!(
        sb.enforcement().starts_with("cgroup") && !sb.enforcement().contains("rlimits"),
        "limits are not all enforced by cgroups here: {}",
        sb.enforcement()
    );
}

async fn run(sb: &BwrapSandbox, program: &str) -> RunOutcome {
    match sb.run(Bytes::from(program.to_string()), None).await {
        Ok(o) => o,
        Err(e) => panic!("run failed: {} ({:?})", e.message, e.kind),
    }
}

/// stdout and stderr of a finished run, failing the test for any other outcome.
async fn exited(sb: &BwrapSandbox, program: &str) -> (i64, String, String) {
    match run(sb, program).await {
        RunOutcome::Exited { status, output } => (
            status,
            text(&output, StreamKind::Stdout),
            text(&output, StreamKind::Stderr),
        ),
        other => panic!("expected an exit, got {other:?}\nprogram: {program}"),
    }
}

fn text(output: &[Chunk], kind: StreamKind) -> String {
    output
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect()
}

/// Runs a check against both roots, as two tests that can run in parallel.
macro_rules! both_roots {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn rootfs() {
                    super::$check(super::Root::Rootfs).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn host() {
                    super::$check(super::Root::Host).await
                }
            }
        )*
    };
}

both_roots!(
    hello_world_keeps_streams_apart_and_in_order,
    exit_status_is_code_or_128_plus_signal,
    stdin_ends_with_the_program,
    infinite_loop_times_out_with_output_so_far,
    closed_stdout_and_stderr_still_end_at_the_deadline,
    output_flood_is_killed_at_the_cap,
    output_of_exactly_the_cap_is_kept,
    fork_bomb_is_contained_and_leaves_nothing,
    memory_hog_is_out_of_memory,
    network_is_absent,
    only_tmp_is_writable_and_it_is_bounded,
    environment_is_only_the_sandbox_env,
    host_files_are_invisible,
    no_daemon_descriptor_is_inherited,
    early_closed_stdout,
    identity_and_privileges,
    twenty_distinct_programs_at_once,
    background_processes_die_with_the_run,
    rlimit_fallback_still_runs_and_says_so,
    output_comes_back_in_the_order_written,
    one_large_write_arrives_whole,
    bwrap_lookalike_on_stderr_is_the_programs_own,
    relay_is_out_of_the_programs_reach,
);

async fn hello_world_keeps_streams_apart_and_in_order(root: Root) {
    let sb = open_with(root, limits()).await;
    // Across two pipes, order is what the daemon observes; the pauses make the writes observable
    // one by one, so any reordering or mislabelling by the backend shows.
    let out = run(
        &sb,
        "echo hello; echo oops >&2; sleep 0.1; printf 'a'; printf 'b\\n'; sleep 0.1; echo late >&2",
    )
    .await;
    let RunOutcome::Exited { status, output } = out else {
        panic!("expected an exit, got {out:?}");
    };
    assert_eq!(status, 0);
    let kinds: Vec<StreamKind> = output.iter().map(|c| c.kind).collect();
    let all: String = output
        .iter()
        .map(|c| String::from_utf8_lossy(&c.data))
        .collect();
    assert_eq!(text(&output, StreamKind::Stdout), "hello\nab\n");
    assert_eq!(text(&output, StreamKind::Stderr), "oops\nlate\n");
    assert!(all.ends_with("ab\nlate\n"), "order lost: {output:?}");
    assert_eq!(kinds.last(), Some(&StreamKind::Stderr));
    assert_eq!(output[output.len() - 2].kind, StreamKind::Stdout);
}

async fn exit_status_is_code_or_128_plus_signal(root: Root) {
    let sb = open_with(root, limits()).await;
    assert_eq!(exited(&sb, "exit 7").await.0, 7);
    assert_eq!(exited(&sb, "echo x; false").await.0, 1);
    // The shell is pid 1 of its namespace, which ignores signals sent from inside it, but not
    // the kernel's SIGKILL at the hard CPU-time limit.
    assert_eq!(
        exited(&sb, "kill -9 $$; ulimit -t 1; while :; do :; done")
            .await
            .0,
        128 + 9
    );
}

async fn stdin_ends_with_the_program(root: Root) {
    let sb = open_with(root, limits()).await;
    // `cat` reads whatever the shell left of its input until EOF; without EOF it would hang to
    // the deadline.
    let started = Instant::now();
    let (status, out, err) = exited(&sb, "cat >/dev/null; echo done\n").await;
    assert_eq!((status, out.as_str(), err.as_str()), (0, "done\n", ""));
    assert!(started.elapsed() < Duration::from_secs(3));
    // A program that never reads its input: the unread rest (larger than a pipe) is dropped.
    let mut program = String::from("exit 3\n");
    program.push_str(&"# padding padding padding padding padding padding padding\n".repeat(6000));
    assert_eq!(exited(&sb, &program).await.0, 3);
}

async fn infinite_loop_times_out_with_output_so_far(root: Root) {
    let timeout = Duration::from_secs(1);
    let sb = open_with(
        root,
        Limits {
            timeout,
            ..limits()
        },
    )
    .await;
    let started = Instant::now();
    let out = run(&sb, "echo started; while :; do :; done").await;
    let took = started.elapsed();
    match out {
        RunOutcome::TimedOut { output } => {
            assert_eq!(text(&output, StreamKind::Stdout), "started\n")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took >= timeout, "ended before the deadline: {took:?}");
    assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
}

async fn closed_stdout_and_stderr_still_end_at_the_deadline(root: Root) {
    let timeout = Duration::from_millis(800);
    let sb = open_with(
        root,
        Limits {
            timeout,
            ..limits()
        },
    )
    .await;
    let started = Instant::now();
    let out = run(&sb, "echo bye; exec >&- 2>&-; sleep 60").await;
    assert!(matches!(out, RunOutcome::TimedOut { .. }), "got {out:?}");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
}

async fn output_flood_is_killed_at_the_cap(root: Root) {
    let sb = open_with(
        root,
        Limits {
            timeout: Duration::from_secs(20),
            ..limits()
        },
    )
    .await;
    let started = Instant::now();
    assert!(matches!(
        run(&sb, "yes").await,
        RunOutcome::OutputTooLarge { .. }
    ));
    assert!(matches!(
        run(&sb, "yes >&2").await,
        RunOutcome::OutputTooLarge { .. }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

async fn output_of_exactly_the_cap_is_kept(root: Root) {
    let cap = 64 << 10;
    let sb = open_with(root, limits()).await;
    let prog = |n: usize| {
        format!(
            "head -c {} /dev/zero; head -c {} /dev/zero >&2",
            n / 2,
            n - n / 2
        )
    };
    match run(&sb, &prog(cap)).await {
        RunOutcome::Exited { status: 0, output } => {
            assert_eq!(output.iter().map(|c| c.data.len()).sum::<usize>(), cap)
        }
        other => panic!("expected an exit, got {other:?}"),
    }
    match run(&sb, &prog(cap + 1)).await {
        RunOutcome::OutputTooLarge { output } => {
            assert_eq!(output.iter().map(|c| c.data.len()).sum::<usize>(), cap)
        }
        other => panic!("expected output too large, got {other:?}"),
    }
}

/// Whether some process on the host is in a cgroup of this name.
fn anyone_in(cgroup_name: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(cgroup_name))
        })
}

async fn fork_bomb_is_contained_and_leaves_nothing(root: Root) {
    let pids = 32;
    let sb = Arc::new(
        open_with(
            root,
            Limits {
                timeout: Duration::from_secs(4),
                pids,
                ..limits()
            },
        )
        .await,
    );
    assert_cgroup(&sb);
    let (parents, prefix) = sb.cgroup_parents().expect("cgroups in use");
    let bomb = tokio::spawn({
        let sb = sb.clone();
        async move {
            // Shells exit when a fork fails, so the main shell forks just once, before the
            // bomb goes off, and then only waits, while the bomb churns at the process limit
            // until the deadline.
            let bomb = b"(f() { f | f & }; f) 2>/dev/null & exec sleep 60";
            sb.run_traced(Bytes::from_static(bomb)).await
        }
    });
    // Wait until the bomb has hit its process limit.
    let full = Instant::now();
    let current = loop {
        // The most refused forks of any run: pre-spawned sandboxes wait beside the bomb.
        let current = parents
            .iter()
            .filter_map(|p| {
                std::fs::read_dir(p)
                    .ok()?
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if !name.starts_with(&prefix) {
                            return None;
                        }
                        // The cgroup counts every fork it refused: the bomb hit the limit.
                        std::fs::read_to_string(e.path().join("pids.events"))
                            .ok()?
                            .lines()
                            .find_map(|l| l.strip_prefix("max "))?
                            .trim()
                            .parse::<u32>()
                            .ok()
                    })
                    .max()
            })
            .max();
        if current.is_some_and(|refused| refused > 0) || full.elapsed() > Duration::from_secs(5) {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        current.is_some_and(|refused| refused > 0),
        "the bomb never reached the limit: {current:?} forks refused"
    );
    assert!(!bomb.is_finished());
    // While it rages, the host forks and another run works.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
    let quick = Instant::now();
    assert_eq!(
        exited(&sb, "echo alive").await,
        (0, "alive\n".into(), String::new())
    );
    assert!(
        quick.elapsed() < Duration::from_secs(2),
        "took {:?}",
        quick.elapsed()
    );
    if bomb.is_finished() {
        panic!(
            "the bomb should still be running: {:?}",
            bomb.await.unwrap()
        );
    }

    let (result, dirs) = bomb.await.unwrap();
    assert!(
        matches!(result, Ok(RunOutcome::TimedOut { .. })),
        "got {result:?}"
    );
    assert!(!dirs.is_empty());
    for dir in &dirs {
        // rmdir succeeds only on an empty cgroup: gone means no process was left.
        assert!(!dir.exists(), "{} is left", dir.display());
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !anyone_in(&format!("/{name}\n")),
            "a process is still in {name}"
        );
    }
}

async fn memory_hog_is_out_of_memory(root: Root) {
    let sb = open_with(
        root,
        Limits {
            memory_bytes: 32 << 20,
            ..limits()
        },
    )
    .await;
    assert_cgroup(&sb);
    let out = run(
        &sb,
        "echo start; a=xxxxxxxxxxxxxxxx; while :; do a=\"$a$a\"; done",
    )
    .await;
    match out {
        RunOutcome::OutOfMemory { output } => {
            assert_eq!(text(&output, StreamKind::Stdout), "start\n")
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
    // The limit is the run's, not each process's: two hogs of 20 MiB do not fit in 32.
    let two = "hog() { a=$(head -c 20000000 /dev/zero | tr '\\0' x); sleep 2; }; hog & hog; wait";
    assert!(matches!(
        run(&sb, two).await,
        RunOutcome::OutOfMemory { .. }
    ));
}

async fn network_is_absent(root: Root) {
    let sb = open_with(root, limits()).await;
    let (_, out, _) = exited(
        &sb,
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ls /sys/class/net 2>/dev/null",
    )
    .await;
    assert_eq!(out, "lo\n", "interfaces seen");
    let attempt = match root {
        Root::Rootfs => "nc 1.1.1.1 80 </dev/null; echo rc=$?",
        Root::Host => "bash -c 'echo > /dev/tcp/1.1.1.1/80'; echo rc=$?",
    };
    let (_, out, err) = exited(&sb, attempt).await;
    assert!(
        out.trim_end().ends_with("rc=1"),
        "the connection did not fail: {out} {err}"
    );
    assert!(err.contains("unreachable"), "{err}");
}

async fn only_tmp_is_writable_and_it_is_bounded(root: Root) {
    let sb = open_with(root, limits()).await;
    let program = r#"
        for p in /x /etc/x /usr/x /bin/x /dev/x /proc/x /proc/sys/kernel/hostname; do
            if (echo hi > $p) 2>/dev/null; then echo "wrote $p"; fi
        done
        mkdir /tmp/d && echo ok > /tmp/d/f && cat /tmp/d/f
        head -c 3000000 /dev/zero > /tmp/big 2>/dev/null || echo full
        echo "size=$(wc -c < /tmp/big)"
        head -c 3000000 /dev/zero > /dev/shm/big 2>/dev/null || echo shm full
        echo "shm=$(wc -c < /dev/shm/big)"
    "#;
    let (_, out, _) = exited(&sb, program).await;
    assert!(!out.contains("wrote"), "{out}");
    assert!(out.contains("ok\nfull\n"), "{out}");
    assert!(out.contains("shm full\n"), "{out}");
    for key in ["size=", "shm="] {
        let size: u64 = out
            .split(key)
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(size <= 1 << 20, "{key} {size} bytes");
    }
}

async fn environment_is_only_the_sandbox_env(root: Root) {
    let sb = open_with(root, limits()).await;
    let (_, out, _) = exited(&sb, "env").await;
    let seen: BTreeSet<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut expected: BTreeSet<(String, String)> = SANDBOX_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // What the shell itself exports.
    expected.insert(("PWD".into(), "/tmp".into()));
    let extra: Vec<_> = seen
        .difference(&expected)
        .filter(|(k, _)| k != "SHLVL")
        .collect();
    assert!(extra.is_empty(), "unexpected variables: {extra:?}");
    assert!(expected.is_subset(&seen), "missing variables: {seen:?}");
    // Not one of the test process's variables (CARGO_*, RUST_*, ...) reached it.
    assert!(std::env::vars().count() > SANDBOX_ENV.len());
    for (k, v) in std::env::vars() {
        let ours = SANDBOX_ENV.iter().any(|(sk, _)| *sk == k) || k == "PWD" || k == "SHLVL";
        assert!(
            ours || !seen.contains(&(k.clone(), v)),
            "the daemon's {k} is visible"
        );
    }
}

async fn host_files_are_invisible(root: Root) {
    let sb = open_with(root, limits()).await;
    // A file only the host has: the test's own source tree.
    let here = std::env::current_dir().unwrap();
    let program = format!(
        "for p in /root /work /var /srv /opt /run /mnt /boot /etc/shadow /etc/hostname /etc/resolv.conf /sys/fs /home/root {}; do [ -e \"$p\" ] && echo \"visible $p\"; done; ls -a / | sort; echo --; ls -a /etc | sort",
        here.display()
    );
    let (_, out, _) = exited(&sb, &program).await;
    assert!(!out.contains("visible"), "{out}");
    let (top, etc) = out.split_once("--\n").unwrap();
    let top: BTreeSet<&str> = top.lines().filter(|l| !l.starts_with('.')).collect();
    let etc: BTreeSet<&str> = etc.lines().filter(|l| !l.starts_with('.')).collect();
    match root {
        Root::Rootfs => {
            let mut expected: BTreeSet<String> = std::fs::read_dir(rootfs_dir())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            expected.extend(["proc", "dev", "tmp"].map(String::from));
            assert_eq!(top, expected.iter().map(String::as_str).collect());
        }
        Root::Host => {
            let mut expected: BTreeSet<&str> =
                ["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"]
                    .into_iter()
                    .filter(|d| Path::new("/").join(d).symlink_metadata().is_ok())
                    .collect();
            expected.extend(["etc", "proc", "dev", "tmp"]);
            assert_eq!(top, expected);
            let allowed: BTreeSet<&str> =
                ["ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives"].into();
            assert!(etc.is_subset(&allowed), "/etc holds {etc:?}");
        }
    }
}

/// A descriptor the test process leaks on purpose: not close-on-exec, like a socket from systemd.
fn leak_descriptor() -> i32 {
    use std::os::fd::IntoRawFd;
    let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on a descriptor this function owns and never closes.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    fd
}

async fn no_daemon_descriptor_is_inherited(root: Root) {
    let leaked = leak_descriptor();
    assert!(leaked > 2);
    let sb = open_with(root, limits()).await;
    // `ls` itself holds one more descriptor (3) for the directory it lists.
    let (_, out, _) = exited(&sb, "ls /proc/self/fd | sort -n | tr '\\n' ' '").await;
    assert_eq!(out.trim_end(), "0 1 2 3");
    let (_, out, _) = exited(
        &sb,
        "ls -l /proc/self/fd/ | grep -c -e socket -e pipe -e /dev/null",
    )
    .await;
    // stdin, stdout and stderr are the daemon's pipes; nothing else.
    assert_eq!(out.trim(), "3");
}

async fn early_closed_stdout(root: Root) {
    let sb = open_with(root, limits()).await;
    let (status, out, err) = exited(
        &sb,
        "echo first; exec >&-; echo gone; echo to-stderr >&2; exit 4",
    )
    .await;
    assert_eq!(status, 4);
    assert_eq!(out, "first\n");
    assert!(err.ends_with("to-stderr\n"), "{err}");
}

async fn identity_and_privileges(root: Root) {
    let sb = open_with(root, limits()).await;
    let (_, out, _) = exited(&sb, "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -s '\\t ' ' '; hostname; pwd; echo oom=$(cat /proc/self/oom_score_adj) nofile=$(ulimit -n) core=$(ulimit -c)").await;
    for line in [
        "Uid: 65534 65534 65534 65534",
        "Gid: 65534 65534 65534 65534",
        "CapInh: 0000000000000000",
        "CapPrm: 0000000000000000",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "CapAmb: 0000000000000000",
        "NoNewPrivs: 1",
        "sandbox",
        "/tmp",
        "oom=1000 nofile=1024 core=0",
    ] {
        assert!(
            out.lines().any(|l| l.trim() == line),
            "missing {line:?} in\n{out}"
        );
    }
    // The output relay is pid 1 of its own namespace, as an init in a container, the command
    // its child, and neither sees a host process.
    let (_, out, _) = exited(&sb, "echo $$; ls /proc | grep -c '^[0-9]'").await;
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2"));
    let procs: u32 = lines.next().unwrap().parse().unwrap();
    assert!(procs <= 4, "{procs} processes visible");
}

async fn twenty_distinct_programs_at_once(root: Root) {
    let sb = Arc::new(open_with(root, limits()).await);
    let started = Instant::now();
    let runs = (0..20).map(|i| {
        let sb = sb.clone();
        tokio::spawn(async move {
            let program = format!("echo program {i}; echo err {i} >&2; exit {}", i % 7);
            (i, exited(&sb, &program).await)
        })
    });
    for r in futures_util::future::join_all(runs).await {
        let (i, (status, out, err)) = r.unwrap();
        assert_eq!(status, i % 7);
        assert_eq!(out, format!("program {i}\n"));
        assert_eq!(err, format!("err {i}\n"));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn background_processes_die_with_the_run(root: Root) {
    let sb = open_with(root, limits()).await;
    assert_cgroup(&sb);
    let started = Instant::now();
    // The background sleeper keeps stdout open; the run still ends when the shell does.
    let (result, dirs) = sb
        .run_traced(Bytes::from_static(b"sleep 30 & echo spawned"))
        .await;
    match result.unwrap() {
        RunOutcome::Exited { status: 0, output } => {
            let texts: Vec<_> = output.iter().map(|c| (c.kind, &c.data[..])).collect();
            assert_eq!(texts, [(StreamKind::Stdout, &b"spawned\n"[..])]);
        }
        other => panic!("expected an exit, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    for dir in dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

async fn rlimit_fallback_still_runs_and_says_so(root: Root) {
    // RLIMIT_NPROC counts every process of the sandbox's host user, those of the other tests
    // running at the same time included: room for them all.
    let limits = || Limits {
        pids: 10_000,
        ..limits()
    };
    let sb = BwrapSandbox::connect_without_cgroups(options(root), limits(), Arc::new(NoHooks))
        .await
        .unwrap();
    assert_eq!(sb.enforcement(), "rlimits only");
    assert!(sb.fingerprint().contains("enforce=rlimits"));
    let (status, out, _) = exited(&sb, "echo hi; ulimit -v; ulimit -c").await;
    assert_eq!(status, 0);
    assert_eq!(out, format!("hi\n{}\n0\n", (64 << 20) / 1024));
    // Killing without a cgroup still ends the run at the deadline.
    let sb = BwrapSandbox::connect_without_cgroups(
        options(root),
        Limits {
            timeout: Duration::from_millis(500),
            ..limits()
        },
        Arc::new(NoHooks),
    )
    .await
    .unwrap();
    assert!(matches!(
        run(&sb, "while :; do :; done").await,
        RunOutcome::TimedOut { .. }
    ));
}

#[tokio::test]
async fn startup_checks_say_what_is_wrong() {
    let e = BwrapSandbox::connect(
        BwrapOptions {
            command: "/bin/no-such-interpreter -x".into(),
            rootfs: Some(rootfs_dir()),
            pool_size: 0,
        },
        limits(),
        Arc::new(NoHooks),
    )
    .await
    .err()
    .expect("a missing command must fail");
    assert_eq!(e.kind, SandboxErrorKind::ImageMissing);
    assert!(
        e.message.contains("/bin/no-such-interpreter"),
        "{}",
        e.message
    );

    let e = BwrapSandbox::connect(
        BwrapOptions {
            command: "/bin/sh".into(),
            rootfs: Some("/nonexistent/rootfs".into()),
            pool_size: 0,
        },
        limits(),
        Arc::new(NoHooks),
    )
    .await
    .err()
    .expect("a missing rootfs must fail");
    assert_eq!(e.kind, SandboxErrorKind::ImageMissing);
    assert!(e.message.contains("/nonexistent/rootfs"), "{}", e.message);

    let e = BwrapSandbox::connect(
        BwrapOptions {
            command: "  ".into(),
            rootfs: None,
            pool_size: 0,
        },
        limits(),
        Arc::new(NoHooks),
    )
    .await
    .err()
    .expect("an empty command must fail");
    assert_eq!(e.kind, SandboxErrorKind::ImageMissing);
}

#[tokio::test]
async fn fingerprint_names_backend_root_command_and_limits() {
    let a = open_with(Root::Rootfs, limits()).await;
    let b = open_with(Root::Host, limits()).await;
    let c = open_with(
        Root::Rootfs,
        Limits {
            pids: 65,
            ..limits()
        },
    )
    .await;
    assert_eq!(a.name(), "bwrap");
    for fp in [a.fingerprint(), b.fingerprint(), c.fingerprint()] {
        assert!(fp.starts_with("bwrap;bubblewrap "), "{fp}");
        assert!(fp.contains("command=/bin/sh"), "{fp}");
    }
    assert!(
        a.fingerprint()
            .contains(&rootfs_dir().display().to_string())
    );
    assert!(a.fingerprint().contains(&limits().fingerprint()));
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
}

/// A trivial program's run, as the daemon sees it: p50 of 100 sequential runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trivial_run_latency() {
    let sb = open_with(Root::Rootfs, limits()).await;
    let mut times = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        assert_eq!(exited(&sb, "echo hi").await.0, 0);
        times.push(t.elapsed());
    }
    times.sort();
    let (p50, p90) = (times[50], times[90]);
    eprintln!(
        "bwrap trivial run: p50 {p50:?}, p90 {p90:?}, min {:?}",
        times[0]
    );
    // Generous: CI shares its two cores with the rest of the suite.
    assert!(p50 < Duration::from_millis(60), "p50 {p50:?}");
}

/// Writes to stdout and stderr come back in the order written, in 50 runs, five at a time to load
/// the machine.
async fn output_comes_back_in_the_order_written(root: Root) {
    const RUNS: usize = 50;
    let sb = open_with(root, limits()).await;
    let results: Vec<Result<(), String>> = stream::iter(0..RUNS)
        .map(|_| async {
            match run(&sb, common_order::ORDER_PROGRAM).await {
                RunOutcome::Exited { status: 0, output }
                    if common_order::in_written_order(&output) =>
                {
                    Ok(())
                }
                RunOutcome::Exited { status: 0, output } => {
                    Err(common_order::first_departure(&output))
                }
                other => Err(format!("{other:?}")),
            }
        })
        .buffer_unordered(5)
        .collect()
        .await;
    let in_order = results.iter().filter(|r| r.is_ok()).count();
    eprintln!("{root:?}: {in_order}/{RUNS} in the order written");
    let first_bad = results.iter().find_map(|r| r.clone().err());
    assert_eq!(in_order, RUNS, "first out of order: {first_bad:?}");
}

/// A single write far larger than a socket buffer arrives whole; stdout is no terminal.
async fn one_large_write_arrives_whole(root: Root) {
    let limits = Limits {
        max_output_bytes: 4 << 20,
        ..limits()
    };
    let sb = open_with(root, limits).await;
    let (status, out, err) = exited(
        &sb,
        "[ -t 1 ] || echo notty >&2; dd if=/dev/zero bs=3000000 count=1 2>/dev/null; echo wrote $? >&2",
    )
    .await;
    assert_eq!(status, 0);
    assert_eq!(out.len(), 3_000_000);
    assert_eq!(err, "notty\nwrote 0\n");
}

/// A program cannot pass itself off as bwrap failing: its stderr is its own answer.
async fn bwrap_lookalike_on_stderr_is_the_programs_own(root: Root) {
    let sb = open_with(root, limits()).await;
    let (status, out, err) = exited(
        &sb,
        "echo \"bwrap: Can't mount proc on /newroot/proc: fake\" >&2; exit 1",
    )
    .await;
    assert_eq!(status, 1);
    assert_eq!(out, "");
    assert_eq!(err, "bwrap: Can't mount proc on /newroot/proc: fake\n");
}

/// The program can neither replace its relay (pid 1) nor reach the relay's own stdout to forge
/// frames.
async fn relay_is_out_of_the_programs_reach(root: Root) {
    let sb = open_with(root, limits()).await;
    let (status, out, _) = exited(
        &sb,
        "(echo forged > /proc/1/fd/1) 2>/dev/null && echo REACHED
(ls /proc/1/fd) >/dev/null 2>&1 && echo LISTED
(: > /dev/.compilerd-relay) 2>/dev/null && echo REPLACED
kill -9 1 2>/dev/null; echo $PPID",
    )
    .await;
    assert_eq!((status, out.as_str()), (0, "1\n"));
}

/// Counts what the pool reports.
#[derive(Default)]
struct PoolEvents {
    empty: std::sync::atomic::AtomicUsize,
    refills: std::sync::atomic::AtomicUsize,
    /// How many sandboxes wait, as the pool last said.
    ready: tokio::sync::watch::Sender<usize>,
}

impl compilerd::hooks::Hooks for PoolEvents {
    fn pool_empty(&self) {
        self.empty
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn pool_refill(&self, _latency: Duration) {
        self.refills
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn pool_ready(&self, n: usize) {
        self.ready.send_replace(n);
    }
}

async fn open_pooled(pool_size: usize) -> (BwrapSandbox, Arc<PoolEvents>) {
    let events = Arc::new(PoolEvents::default());
    let opts = BwrapOptions {
        pool_size,
        ..options(Root::Rootfs)
    };
    let sb = match BwrapSandbox::connect(opts, limits(), events.clone()).await {
        Ok(sb) => sb,
        Err(e) => panic!("connect: {}", e.message),
    };
    assert_cgroup(&sb);
    tokio::time::timeout(Duration::from_secs(30), sb.pool_full())
        .await
        .expect("the pool fills");
    (sb, events)
}

fn empties(events: &PoolEvents) -> usize {
    events.empty.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits, without reaping it, until the process `pid` (a child of this process) has exited.
async fn exited_pid(pid: u32) {
    tokio::task::spawn_blocking(move || {
        // SAFETY: waitid on a pid with a zeroed siginfo it fills in; WNOWAIT leaves the zombie to
        // its owner.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let ret =
            unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        assert_eq!(ret, 0, "waitid {pid}: {}", std::io::Error::last_os_error());
    })
    .await
    .unwrap();
}

/// A pre-spawned sandbox serves exactly one program: nothing a run leaves behind (files in /tmp
/// and /dev/shm, a background process) is seen by the runs after it, each of which took a sandbox
/// from the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sandbox_serves_exactly_one_program() {
    let (sb, events) = open_pooled(2).await;
    let leave = "echo secret > /tmp/left; echo secret > /dev/shm/left; \
                 (sleep 31 &); echo left";
    let look = "cat /tmp/left /dev/shm/left 2>/dev/null; ls -A /tmp /dev/shm; \
                cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo; echo looked";
    for round in 0..4 {
        sb.pool_full().await;
        let (status, out, _) = exited(&sb, leave).await;
        assert_eq!((status, out.as_str()), (0, "left\n"), "round {round}");
        sb.pool_full().await;
        let (status, out, err) = exited(&sb, look).await;
        assert_eq!(status, 0, "round {round}: {err}");
        assert!(out.ends_with("looked\n"), "round {round}: {out}");
        assert!(
            !out.contains("secret"),
            "round {round}: a file of the previous run: {out}"
        );
        assert!(
            !out.contains("left"),
            "round {round}: a file of the previous run: {out}"
        );
        assert!(
            !out.contains("sleep 31"),
            "round {round}: a process of the previous run: {out}"
        );
    }
    assert_eq!(empties(&events), 0, "every run took a pre-spawned sandbox");
}

/// A waiting sandbox killed from outside is dropped when a run would take it, and replaced: no
/// run fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_waiting_sandbox_is_replaced_unnoticed() {
    let (sb, events) = open_pooled(2).await;
    let pids = sb.pool_pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for &pid in &pids {
        // SAFETY: SIGKILL to a bwrap this test's sandbox spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    }
    for &pid in &pids {
        exited_pid(pid).await;
    }
    for i in 0..4 {
        assert_eq!(
            exited(&sb, &format!("echo run {i}")).await,
            (0, format!("run {i}\n"), String::new())
        );
    }
    // The first run found only dead sandboxes and spawned its own.
    assert!(empties(&events) >= 1);
    tokio::time::timeout(Duration::from_secs(30), sb.pool_full())
        .await
        .expect("the pool fills again");
    let fresh = sb.pool_pids();
    assert!(
        fresh.iter().all(|p| !pids.contains(p)),
        "{fresh:?} vs {pids:?}"
    );
    let before = empties(&events);
    assert_eq!(exited(&sb, "echo pooled").await.1, "pooled\n");
    assert_eq!(empties(&events), before, "the refilled pool served the run");
}

/// A refill lets the runs in flight finish first, but a long run does not keep the pool below its
/// size: the pool is full again while the run still sleeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_run_does_not_hold_back_the_refill() {
    let (sb, events) = open_pooled(2).await;
    let mut ready = events.ready.subscribe();
    assert_eq!(*ready.borrow_and_update(), 2);
    let run = exited(&sb, "sleep 3; echo done");
    tokio::pin!(run);
    let refilled = async {
        ready.wait_for(|&n| n < 2).await.unwrap();
        ready.wait_for(|&n| n == 2).await.unwrap();
    };
    tokio::select! {
        out = &mut run => panic!("the run ended before the pool refilled: {out:?}"),
        () = refilled => {}
    }
    assert_eq!(run.await, (0, "done\n".to_owned(), String::new()));
    assert_eq!(empties(&events), 0);
}

/// Spawns that fail only delay the pool's refill: runs meanwhile start their own sandboxes, and
/// the pool fills again once spawns work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pool_spawns_are_retried_unnoticed() {
    let (sb, events) = open_pooled(1).await;
    // Five failures keep the filler backing off for over a second while the runs go by.
    sb.fail_next_pool_spawns(5);
    for i in 0..3 {
        assert_eq!(
            exited(&sb, &format!("echo run {i}")).await,
            (0, format!("run {i}\n"), String::new())
        );
    }
    assert!(
        empties(&events) >= 1,
        "the failing filler left the pool empty"
    );
    tokio::time::timeout(Duration::from_secs(30), sb.pool_full())
        .await
        .expect("the pool fills again after the failures");
    let before = empties(&events);
    assert_eq!(exited(&sb, "echo pooled").await.1, "pooled\n");
    assert_eq!(empties(&events), before);
    assert!(events.refills.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}
