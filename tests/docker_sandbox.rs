//! The Docker backend against the real engine (no mocks): what a program can and cannot do
//! inside, how runs end (exit, deadline, output cap, memory limit), the pre-started pool, startup
//! checks, and that no container of ours is left after any test.
//!
//! Needs a running dockerd and the test image (`scripts/build-test-image.sh`, or set
//! COMPILERD_TEST_IMAGE). Each test ends with `finish`, which shuts the sandbox down and checks
//! the engine for containers carrying its instance label.

// By path, so that this suite needs no tests/common/mod.rs shared with the other suites.
#[path = "common/docker.rs"]
mod common_docker;
#[path = "common/order.rs"]
mod common_order;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, WaitContainerOptions,
    WaitContainerOptionsBuilder,
};
use common_docker::*;
use compilerd::hooks::NoHooks;
use compilerd::sandbox::docker::sweep::{LABEL_MANAGED, LABEL_OWNER, current_owner};
use compilerd::sandbox::docker::{DockerOptions, DockerSandbox};
use compilerd::sandbox::{Limits, RunOutcome, SANDBOX_ENV, Sandbox, SandboxErrorKind, StreamKind};
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_keeps_streams_apart_and_in_order() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        // The pauses are part of the program: the engine copies stdout and stderr on separate
        // paths, so only writes further apart than its copy latency have a defined order.
        let program = "echo out1; echo out2; sleep 0.2; echo err1 >&2; sleep 0.2; echo out3";
        match sb.run(program).await {
            RunOutcome::Exited { status, output } => {
                assert_eq!(status, 0);
                let chunks: Vec<(StreamKind, String)> = output
                    .iter()
                    .map(|c| (c.kind, String::from_utf8_lossy(&c.data).into_owned()))
                    .collect();
                assert_eq!(
                    chunks,
                    vec![
                        (StreamKind::Stdout, "out1\nout2\n".to_owned()),
                        (StreamKind::Stderr, "err1\n".to_owned()),
                        (StreamKind::Stdout, "out3\n".to_owned()),
                    ]
                );
            }
            other => panic!("expected an exit, got {other:?}"),
        }
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_is_reported() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        assert_eq!(
            exited(sb.run("echo bye; exit 3").await),
            (3, "bye\n".into(), "".into())
        );
        // Killed by a signal: 128 + N. (SIGKILL is the exception: it counts as the memory limit,
        // see `memory_hog_is_killed_by_the_limit`.)
        let (status, _, _) = exited(sb.run("kill -TERM $$").await);
        assert_eq!(status, 143);
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_reading_stdin_gets_eof() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        // The shell has already read the whole (small) script; what is left on stdin is EOF.
        // A `cat` that waited for input would meet the deadline, which counts from the hand-over
        // (not from a cold container's start, seconds under gVisor on a loaded host) and answers
        // TimedOut: the exit is the proof, as no clock here can be.
        let (status, out, _) = exited(sb.run("cat; read x; echo \"read=$? x=[$x]\"").await);
        assert_eq!((status, out.as_str()), (0, "read=1 x=[]\n"));
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out_with_output_so_far() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        for program in [
            "echo started; while :; do :; done",
            "echo started; sleep 100",
        ] {
            let (outcome, took) = sb.timed_run(program).await;
            match outcome {
                RunOutcome::TimedOut { output } => {
                    assert_eq!(text(&output, StreamKind::Stdout), "started\n")
                }
                other => panic!("{program}: expected a timeout, got {other:?}"),
            }
            assert!(took >= limits().timeout, "{program}: ended early, {took:?}");
            assert!(
                took < limits().timeout + Duration::from_secs(1),
                "{program}: took {took:?}"
            );
        }
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_is_cut_at_the_cap_at_once() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        // The clock measures the flood from its hand-over (not the pool's filling nor a cold
        // container's start); a run of `true` in the same mode is the floor it is measured from.
        let (_, floor) = sb.timed_run("true").await;
        let (outcome, took) = sb.timed_run("yes").await;
        assert!(
            matches!(outcome, RunOutcome::OutputTooLarge { .. }),
            "{mode:?}: {outcome:?}"
        );
        assert!(
            took < floor + limits().timeout / 2,
            "flood took {took:?} (a run of true: {floor:?})"
        );
        // Exactly the cap is still an answer; both streams count.
        let cap = limits().max_output_bytes;
        let program = format!(
            "head -c {} /dev/zero; head -c {} /dev/zero >&2",
            cap / 2,
            cap / 2
        );
        match sb.run(&program).await {
            RunOutcome::Exited { status: 0, output } => {
                assert_eq!(output.iter().map(|c| c.data.len()).sum::<usize>(), cap)
            }
            other => panic!("expected an exit, got {other:?}"),
        }
        let program = format!("head -c {} /dev/zero; echo x >&2", cap);
        assert!(matches!(
            sb.run(&program).await,
            RunOutcome::OutputTooLarge { .. }
        ));
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_is_contained() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (outcome, took) = sb.timed_run("f() { f | f & }; f; sleep 5").await;
        assert!(
            took < limits().timeout + Duration::from_secs(1),
            "took {took:?}"
        );
        // Either the deadline ends it, or the shell gives up when it cannot fork any more.
        assert!(
            matches!(
                outcome,
                RunOutcome::TimedOut { .. } | RunOutcome::Exited { .. }
            ),
            "got {outcome:?}"
        );
        // The limit is per run: the next program can still fork.
        let (status, out, _) = exited(sb.run("echo $(echo a)$(echo b)").await);
        assert_eq!((status, out.as_str()), (0, "ab\n"));
        // And it is the configured number: the pids cgroup's, or under gVisor (no cgroup files,
        // and the engine's limit counts gVisor's own threads) the program's RLIMIT_NPROC.
        let probe = match gvisor() {
            true => "ulimit -u",
            false => "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
        };
        let (_, out, _) = exited(sb.run(probe).await);
        assert_eq!(out.trim(), limits().pids.to_string());
        sb.finish().await;
    }
}

/// The tests' limits, with time for a hog to reach the memory limit under gVisor, whose ptrace
/// platform runs a program several times slower.
fn memory_limits() -> Limits {
    let mut l = limits();
    if gvisor() {
        l.timeout = Duration::from_secs(10);
    }
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_killed_by_the_limit() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect_with(mode, memory_limits()).await;
        let outcome = sb
            .run("echo eating; a=x; while :; do a=\"$a$a\"; done")
            .await;
        match outcome {
            RunOutcome::OutOfMemory { output } => {
                assert_eq!(text(&output, StreamKind::Stdout), "eating\n")
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_killed_by_the_limit_counts_as_oom() {
    // The program outlives its child and fails in its own way; the answer is still the memory
    // limit (and so not cached), with or without the pool.
    for mode in MODES {
        let sb = ModeSandbox::connect_with(mode, memory_limits()).await;
        let program = "echo eating; (a=x; while :; do a=\"$a$a\"; done); echo \"after=$?\"; exit 5";
        // Under gVisor the limit kills the whole sandbox, its kernel included.
        let expected = match gvisor() {
            true => "eating\n",
            false => "eating\nafter=137\n",
        };
        match sb.run(program).await {
            RunOutcome::OutOfMemory { output } => {
                assert_eq!(text(&output, StreamKind::Stdout), expected)
            }
            other => panic!("{mode:?}: expected OutOfMemory, got {other:?}"),
        }
        // A plain failure is not mistaken for one.
        assert_eq!(exited(sb.run("exit 5").await), (5, "".into(), "".into()));
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let program = "ls /sys/class/net; \
        echo hi | nc -w 1 1.1.1.1 80; echo \"out=$?\"; \
        echo hi | nc -w 1 127.0.0.1 80; echo \"lo=$?\"";
        let (status, out, err) = exited(sb.run(program).await);
        assert_eq!(status, 0);
        // gVisor's netstack has no route at all.
        let refusal = match gvisor() {
            true => "No route to host",
            false => "Network is unreachable",
        };
        assert_eq!(out, "lo\nout=1\nlo=1\n", "stderr: {err}");
        assert!(err.contains(refusal), "{err}");
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_read_only_and_tmp_is_small() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let program = "echo x > /x 2>/dev/null; echo \"root=$?\"; \
        echo x > /etc/x 2>/dev/null; echo \"etc=$?\"; \
        echo hi > /tmp/f && cat /tmp/f; \
        head -c 20000000 /dev/zero > /tmp/big 2>/dev/null; echo \"big=$?\"; \
        grep ' / ' /proc/mounts | grep -c ' ro,'";
        let (status, out, _) = exited(sb.run(program).await);
        assert_eq!(status, 0);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("root=") && lines[0] != "root=0",
            "{out}"
        );
        assert!(lines[1].starts_with("etc=") && lines[1] != "etc=0", "{out}");
        assert_eq!(lines[2], "hi");
        assert!(lines[3] != "big=0", "a 20 MB file fit in /tmp: {out}");
        assert_eq!(lines[4], "1", "root not mounted read-only: {out}");
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_holds_nothing_of_the_daemon() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (status, out, _) = exited(sb.run("env").await);
        assert_eq!(status, 0);
        let env: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
        for (key, value) in SANDBOX_ENV {
            assert_eq!(env.get(key), Some(&value), "{out}");
        }
        assert_eq!(env.get("HOSTNAME"), Some(&"sandbox"), "{out}");
        // Variables the engine or the shell itself sets; anything else came from somewhere else.
        let expected: Vec<&str> = SANDBOX_ENV
            .iter()
            .map(|(k, _)| *k)
            .chain(["HOSTNAME", "PWD", "SHLVL"])
            .collect();
        let unexpected: Vec<&&str> = env.keys().filter(|k| !expected.contains(k)).collect();
        assert!(
            unexpected.is_empty(),
            "unexpected variables {unexpected:?} in {out}"
        );
        // None of this (test) process's own variables got through, whatever they are called.
        for (key, value) in std::env::vars() {
            if env.get(key.as_str()) == Some(&value.as_str()) {
                assert!(expected.contains(&key.as_str()), "{key} leaked");
            }
        }
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_as_nobody_without_capabilities() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (status, out, _) = exited(
        sb.run(
            "id -u; id -g; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; \
             grep -E '^Seccomp:' /proc/1/status | sed 's/^/init/'",
        )
        .await,
    );
        assert_eq!(status, 0);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("65534"));
        assert_eq!(lines.next(), Some("65534"));
        let fields: HashMap<&str, &str> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            // gVisor's /proc has no CapAmb line.
            if gvisor() && cap == "CapAmb" && !fields.contains_key(cap) {
                continue;
            }
            assert_eq!(fields.get(cap), Some(&"0000000000000000"), "{cap} in {out}");
        }
        // gVisor's /proc has no NoNewPrivs line (the engine sets it all the same).
        if !gvisor() || fields.contains_key("NoNewPrivs") {
            assert_eq!(fields.get("NoNewPrivs"), Some(&"1"), "{out}");
        }
        // The program (an exec, or a child of the container's init) is filtered exactly as the
        // container's init is.
        assert!(fields.contains_key("Seccomp"), "{out}");
        assert_eq!(fields.get("Seccomp"), fields.get("initSeccomp"), "{out}");
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_stdout_early_is_fine() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (_, out, err) = exited(sb.run("exec >&-; echo x >&2; echo lost").await);
        assert_eq!(out, "");
        assert!(err.starts_with("x\n"), "{err}");
        // Both streams closed while the program goes on: the status still comes from its exit.
        let began = Instant::now();
        let (status, out, err) = exited(sb.run("exec >&- 2>&-; sleep 0.5; exit 4").await);
        assert_eq!((status, out.as_str(), err.as_str()), (4, "", ""));
        assert!(began.elapsed() >= Duration::from_millis(500));
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ends_when_the_program_exits_despite_background_processes() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        // The background sleep keeps the program's stdout open long after the program exits; the
        // run still ends with the program, as it would if the program were the container's main
        // process.
        // A run that waited for the background process would meet the deadline (it counts from
        // the hand-over) and answer TimedOut: the exit is the proof. A clock around the run would
        // also count a cold container's start, which under gVisor on a loaded host can pass the
        // deadline's length by itself.
        let (status, out, _) = exited(sb.run("sleep 30 & echo done; exit 5").await);
        assert_eq!((status, out.as_str()), (5, "done\n"));
        sb.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_programs_at_once() {
    let (sb, hooks) = connect(2).await;
    let sb = Arc::new(sb);
    let runs = (0..20).map(|i| {
        let sb = sb.clone();
        tokio::spawn(async move {
            (
                i,
                run(
                    &sb,
                    &format!("echo run {i}; echo err {i} >&2; exit {}", i % 3),
                )
                .await,
            )
        })
    });
    for joined in futures_util::future::join_all(runs).await {
        let (i, outcome) = joined.unwrap();
        assert_eq!(
            exited(outcome),
            (i % 3, format!("run {i}\n"), format!("err {i}\n")),
            "run {i}"
        );
    }
    // More runs than pool slots: some had to start their own container.
    assert!(hooks.empty.load(Ordering::SeqCst) > 0);
    let sb = Arc::into_inner(sb).unwrap();
    finish(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pool_container_is_not_handed_out() {
    // Both kinds of pooled container: how a dead one is told apart from a run that was killed
    // differs (see `run`).
    for mode in [Mode::Armed, Mode::Unarmed] {
        eprintln!("mode {mode:?}");
        let ModeSandbox { sb, hooks, .. } = ModeSandbox::connect(mode).await;
        assert_eq!(sb.status(), "pool 1/1");
        let pooled = containers_of(sb.instance()).await;
        assert_eq!(pooled.len(), 1, "{pooled:?}");
        let name = pooled[0].trim_start_matches('/').to_owned();
        let docker = engine();
        let kill = KillContainerOptionsBuilder::new().signal("KILL").build();
        docker.kill_container(&name, Some(kill)).await.unwrap();
        // Synchronise on the engine, not on time: the container is dead once its wait returns.
        let _ = docker
            .wait_container(&name, None::<WaitContainerOptions>)
            .next()
            .await;
        let (status, out, _) = exited(run(&sb, "echo alive").await);
        assert_eq!((status, out.as_str()), (0, "alive\n"));
        // The pool heals itself: the dead one is replaced, and nothing of it is left.
        hooks.wait_ready(1).await;
        assert_eq!(sb.status(), "pool 1/1");
        assert!(
            !containers_of(sb.instance())
                .await
                .iter()
                .any(|n| n.trim_start_matches('/') == name)
        );
        finish(sb).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_refills_after_each_run() {
    let (sb, hooks) = connect(1).await;
    let first_fill = hooks.refills.load(Ordering::SeqCst);
    assert_eq!(first_fill, 1);
    for i in 0..3 {
        // Refilled, and armed once the pool is quiet again.
        hooks.wait_ready(1).await;
        hooks.wait_armed(1).await;
        let began = Instant::now();
        let (_, out, _) = exited(run(&sb, &format!("echo {i}")).await);
        assert_eq!(out, format!("{i}\n"));
        eprintln!("pooled run {i}: {:?}", began.elapsed());
    }
    hooks.wait_ready(1).await;
    assert_eq!(
        hooks.empty.load(Ordering::SeqCst),
        0,
        "a run found the pool empty"
    );
    assert!(hooks.refills.load(Ordering::SeqCst) >= 4);
    finish(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_before_the_program_is_kept_with_or_without_the_pool() {
    // An image whose command greets before it reads the program, made from the test image. The
    // greeting comes from whichever process takes the program (printed while the container waits
    // in the pool, or at the start of a cold run); an armed container's main process greets
    // too, but that greeting is nobody's run and is dropped.
    let docker = engine();
    let suffix = format!("{:08x}", rand::random::<u32>());
    let base = format!("compilerd-test-banner-base-{suffix}");
    let tag = format!("compilerd-test-banner-{suffix}");
    let body = ContainerCreateBody {
        image: Some(image()),
        ..Default::default()
    };
    let create = CreateContainerOptionsBuilder::new().name(&base).build();
    docker.create_container(Some(create), body).await.unwrap();
    let commit = CommitContainerOptionsBuilder::new()
        .container(&base)
        .repo(&tag)
        .build();
    let config = ContainerConfig {
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "echo banner; exec sh".into(),
        ]),
        ..Default::default()
    };
    let committed = docker.commit_container(commit, config).await;
    let force = RemoveContainerOptionsBuilder::new().force(true).build();
    docker.remove_container(&base, Some(force)).await.unwrap();
    committed.unwrap();

    for mode in MODES {
        let mut opts = DockerOptions::new(tag.clone(), usize::from(mode != Mode::Cold));
        opts.arm = mode == Mode::Armed;
        let (sb, hooks) = connect_opts(opts, limits()).await;
        let (status, out, _) = exited(run(&sb, "echo program").await);
        assert_eq!((status, out.as_str()), (0, "banner\nprogram\n"), "{mode:?}");
        if mode != Mode::Cold {
            // Served by the pool: a greeting is not mistaken for a dead container.
            assert_eq!(hooks.empty.load(Ordering::SeqCst), 0);
            hooks.wait_ready(1).await;
        }
        finish(sb).await;
    }
    let force = RemoveImageOptionsBuilder::new().force(true).build();
    docker.remove_image(&tag, Some(force), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_names_backend_image_id_and_limits() {
    let (sb, _) = connect(0).await;
    let fp = sb.fingerprint();
    assert!(fp.starts_with("backend=docker;"), "{fp}");
    assert!(fp.contains(&format!("image={}@sha256:", image())), "{fp}");
    assert!(fp.ends_with(&limits().fingerprint()), "{fp}");
    // The engine's default when none is named: a program can tell runtimes apart.
    let runtime = runtime().unwrap_or_else(|| "runc".to_owned());
    assert!(fp.contains(&format!(";runtime={runtime};")), "{fp}");
    assert_eq!(sb.status(), "pool off");
    finish(sb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_runtime_fails_at_connect() {
    let mut opts = DockerOptions::new(image(), 1);
    opts.runtime = Some("compilerd-no-such-runtime".to_owned());
    let err = DockerSandbox::connect(opts, limits(), Arc::new(NoHooks))
        .await
        .err()
        .expect("connect must fail");
    assert_eq!(err.kind, SandboxErrorKind::Start, "{err}");
    for said in ["compilerd-no-such-runtime", "runc", "daemon.json"] {
        assert!(err.message.contains(said), "{said}: {err}");
    }
}

/// Under gVisor a program's system calls go to gVisor's kernel: it sees that kernel, not the
/// host's. Under runc it sees the host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_sees_the_runtimes_kernel() {
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let host = host.trim();
    let sb = ModeSandbox::connect(Mode::Cold).await;
    let (status, out, err) = exited(
        sb.run("uname -r; cat /proc/version; dmesg 2>&1 | head -3; exit 0")
            .await,
    );
    assert_eq!(status, 0, "{err}");
    let release = out.lines().next().unwrap_or_default();
    if runtime().as_deref() == Some("runsc") {
        assert_ne!(release, host, "{out}");
        assert!(!out.contains(host), "{out}");
        assert!(out.contains("gVisor"), "{out}");
    } else {
        assert_eq!(release, host, "{out}");
    }
    sb.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_at_connect() {
    let opts = DockerOptions::new("compilerd-no-such-image-for-tests", 1);
    let err = DockerSandbox::connect(opts, limits(), Arc::new(NoHooks))
        .await
        .err()
        .expect("connect must fail");
    assert_eq!(err.kind, SandboxErrorKind::ImageMissing, "{err}");
    assert!(
        err.message.contains("compilerd-no-such-image-for-tests"),
        "{err}"
    );
    assert!(err.message.contains("build-test-image.sh"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_the_engine_rejects_fail_at_connect() {
    // More CPUs than any test machine has: the engine refuses to create the container.
    let mut too_many_cpus = limits();
    too_many_cpus.cpus = 4096.0;
    for pool_size in [0, 1] {
        let opts = with_runtime(DockerOptions::new(image(), pool_size));
        let err = DockerSandbox::connect(opts, too_many_cpus.clone(), Arc::new(NoHooks))
            .await
            .err()
            .expect("connect must fail");
        assert_eq!(err.kind, SandboxErrorKind::Start, "pool {pool_size}: {err}");
        assert!(err.message.contains("CPU"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_engine_fails_at_connect() {
    for host in ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"] {
        let opts = DockerOptions::new(image(), 1);
        let err = DockerSandbox::connect_to(host, opts, limits(), Arc::new(NoHooks))
            .await
            .err()
            .expect("connect must fail");
        assert_eq!(err.kind, SandboxErrorKind::Unavailable, "{host}: {err}");
        assert!(err.message.contains(host), "{err}");
        assert!(err.message.contains("not reachable"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_sweeps_only_orphans() {
    let docker = engine();
    let create = |name: &str, owner: String| {
        let body = ContainerCreateBody {
            image: Some(image()),
            labels: Some(HashMap::from([
                (LABEL_MANAGED.to_owned(), "true".to_owned()),
                (LABEL_OWNER.to_owned(), owner),
            ])),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let docker = docker.clone();
        async move { docker.create_container(Some(opts), body).await.unwrap().id }
    };
    let suffix = format!("{:08x}", rand::random::<u32>());
    // Left by a daemon of another boot (or a dead process), and one owned by a live process.
    let orphan = create(
        &format!("compilerd-test-orphan-{suffix}"),
        "old-boot/1/1".into(),
    )
    .await;
    let alive = create(&format!("compilerd-test-alive-{suffix}"), current_owner()).await;

    let (sb, _) = connect(0).await;
    // Other tests' sandboxes sweep too, so the removal may be another's and still under way:
    // wait for it on the engine (a 404 means it is already gone).
    let removed = WaitContainerOptionsBuilder::new()
        .condition("removed")
        .build();
    let gone = tokio::time::timeout(
        Duration::from_secs(10),
        docker.wait_container(&orphan, Some(removed)).next(),
    )
    .await;
    assert!(gone.is_ok(), "orphan not swept");
    assert!(
        docker.inspect_container(&alive, None).await.is_ok(),
        "a live owner's container was swept"
    );
    let force = RemoveContainerOptionsBuilder::new().force(true).build();
    docker.remove_container(&alive, Some(force)).await.unwrap();
    finish(sb).await;
}

/// Writes to stdout and stderr come back in the order written, on every path to a container,
/// with five runs at a time to load the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_comes_back_in_the_order_written() {
    use futures_util::stream::{self, StreamExt};
    const RUNS: usize = 50;
    for mode in MODES {
        let pool_size = if mode == Mode::Cold { 0 } else { 5 };
        let mut opts = DockerOptions::new(image(), pool_size);
        opts.arm = mode == Mode::Armed;
        let (sb, hooks) = connect_opts(opts, limits()).await;
        match mode {
            Mode::Armed => hooks.wait_armed(5).await,
            Mode::Unarmed => hooks.wait_ready(5).await,
            Mode::Cold => {}
        }
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
        eprintln!("mode {mode:?}: {in_order}/{RUNS} in the order written");
        let first_bad = results.iter().find_map(|r| r.clone().err());
        assert_eq!(
            in_order, RUNS,
            "{mode:?}: first out of order: {first_bad:?}"
        );
        finish(sb).await;
    }
}

/// A single write far larger than a socket buffer arrives whole; stdout is no terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_write_arrives_whole() {
    let limits = Limits {
        max_output_bytes: 4 << 20,
        ..limits()
    };
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect_with(mode, limits.clone()).await;
        let (status, out, err) = exited(
            sb.run("[ -t 1 ] || echo notty >&2; dd if=/dev/zero bs=3000000 count=1 2>/dev/null; echo wrote $? >&2")
                .await,
        );
        assert_eq!(status, 0);
        assert_eq!(out.len(), 3_000_000);
        assert_eq!(err, "notty\nwrote 0\n");
        sb.finish().await;
    }
}

/// Only the memory cgroup's own count makes a memory kill: a program that exits 137 by itself
/// gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_137_is_not_a_memory_kill() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (status, out, _) = exited(sb.run("echo before; exit 137").await);
        assert_eq!((status, out.as_str()), (137, "before\n"));
        sb.finish().await;
    }
}

/// A program that kills every process it can (an armed container's idle command among them, but
/// not its relay, which runs as another user) gets its own answer: no memory kill, no 137, no
/// output lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_everything_is_not_a_memory_kill() {
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let outcome = sb.run("echo before; kill -9 -1; sleep 1; echo after").await;
        let (status, out, err) = exited(outcome);
        assert_eq!(
            (status, out.as_str()),
            (0, "before\nafter\n"),
            "{mode:?}: {err}"
        );
        sb.finish().await;
    }
}

/// Once the program runs, its relay holds nothing a flaw in its reading of the program's bytes
/// could give away: another unprivileged user than the program's (so `kill -9 -1` still misses
/// it) and no capability in any set. Only the engine's init stays root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_drops_to_a_user_of_its_own_without_capabilities() {
    let probe = "cat /proc/$PPID/cmdline | tr '\\0' ' '; echo
grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/$PPID/status | tr -d '\t'
echo roots=$(grep -h '^Uid:' /proc/[0-9]*/status | tr -d '\\t' | grep -c '^Uid:0000$')
kill -9 -1; sleep 0.2; echo after";
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (status, out, err) = exited(sb.run(probe).await);
        assert_eq!(status, 0, "{mode:?}: {err}");
        let mut lines = out.lines();
        assert!(
            lines
                .next()
                .unwrap_or_default()
                .starts_with("/.compilerd-relay "),
            "{mode:?}: {out}"
        );
        let fields: HashMap<&str, &str> = lines.filter_map(|l| l.split_once(':')).collect();
        // Tabs removed: four equal ids run together.
        for key in ["Uid", "Gid"] {
            let ids = fields.get(key).copied().unwrap_or_default();
            let one = &ids[..ids.len() / 4];
            assert!(
                !one.is_empty() && ids == one.repeat(4) && one != "0" && one != "65534",
                "{mode:?}: the relay's {key}s are {ids}: {out}"
            );
        }
        assert_eq!(fields.get("Groups").map(|g| g.trim()), Some(""), "{out}");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            if gvisor() && cap == "CapAmb" && !fields.contains_key(cap) {
                continue;
            }
            assert_eq!(fields.get(cap), Some(&"0000000000000000"), "{cap}: {out}");
        }
        // gVisor's /proc has no NoNewPrivs line (the engine sets it all the same).
        if !gvisor() || fields.contains_key("NoNewPrivs") {
            assert_eq!(fields.get("NoNewPrivs"), Some(&"1"), "{out}");
        }
        // docker-init alone; the relay and the program are not root.
        assert!(out.contains("\nroots=1\n"), "{mode:?}: {out}");
        assert!(out.ends_with("after\n"), "{mode:?}: {out}");
        sb.finish().await;
    }
}

/// The program can neither replace its relay nor reach the relay's own stdout to forge frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_is_out_of_the_programs_reach() {
    let probe = "(echo forged > /proc/$PPID/fd/1) 2>/dev/null && echo REACHED
(ls /proc/$PPID/fd) >/dev/null 2>&1 && echo LISTED
(: > /.compilerd-relay) 2>/dev/null && echo REPLACED
cat /proc/$PPID/cmdline | tr '\\0' ' '; echo";
    for mode in MODES {
        eprintln!("mode {mode:?}");
        let sb = ModeSandbox::connect(mode).await;
        let (status, out, _) = exited(sb.run(probe).await);
        assert_eq!(status, 0);
        assert!(out.starts_with("/.compilerd-relay "), "{mode:?}: {out}");
        for bad in ["REACHED", "LISTED", "REPLACED"] {
            assert!(!out.contains(bad), "{mode:?}: {out}");
        }
        sb.finish().await;
    }
}
