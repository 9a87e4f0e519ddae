//! The relay's startup race: each sandbox writes the embedded relay to a file and then execs it,
//! while other threads of the same process start children. Linux refuses to exec a file that any
//! process holds open for writing (ETXTBSY), and a child forked while the file is being written
//! inherits whatever the process holds open until that child's own exec. These tests open many
//! sandboxes at once in one process, as a daemon with several languages or a test with several
//! daemons does, while other threads keep starting children, and accept no failure.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use common::TestDaemon;
use compilerd::config::{Backend, LanguageSettings};
use compilerd::hooks::NoHooks;
use compilerd::sandbox::bwrap::{BwrapOptions, BwrapSandbox};
use compilerd::sandbox::{Limits, RunOutcome, Sandbox};

/// Threads that start `true` over and over until stopped, two in three through a fork whose child
/// lingers 20 ms before its exec: the window in which a child holds copies of every descriptor
/// its parent had open, stretched as a loaded machine (or a library's slow pre-exec code)
/// stretches it, so that such a child is almost always alive.
struct Spawners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Spawners {
    fn start(n: usize) -> Spawners {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut started = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let mut cmd = std::process::Command::new("true");
                        if i % 3 != 0 {
                            // SAFETY: nanosleep is async-signal-safe and the closure allocates
                            // nothing; it only delays the child's exec (a load generator, not a
                            // synchronisation).
                            unsafe {
                                cmd.pre_exec(|| {
                                    std::thread::sleep(Duration::from_millis(20));
                                    Ok(())
                                });
                            }
                        }
                        let status = cmd.status().expect("start true");
                        assert!(status.success(), "true failed: {status}");
                        started += 1;
                    }
                    started
                })
            })
            .collect();
        Spawners { stop, threads }
    }

    /// Stops the threads; how many children they started.
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).sum()
    }
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(10),
        max_output_bytes: 64 << 10,
        memory_bytes: 64 << 20,
        pids: 64,
        cpus: 1.0,
        tmpfs_bytes: 1 << 20,
    }
}

const TASKS: usize = 8;
const ROUNDS: usize = 25;

/// 8 tasks on 8 runtime threads each open a bwrap sandbox (whose startup check runs the relay
/// just written), run one program in it and drop it, 25 times, while 6 threads start children.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn bwrap_sandboxes_opened_at_once_always_start_their_relay() {
    let spawners = Spawners::start(6);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for round in 0..ROUNDS {
                    // Both ways a sandbox starts: with a pre-spawned pool on the test rootfs,
                    // and one spawn per run on the host's root.
                    let opts = if (t + round) % 2 == 0 {
                        BwrapOptions {
                            command: "/bin/sh".into(),
                            rootfs: Some(common::test_rootfs()),
                            pool_size: 1,
                        }
                    } else {
                        BwrapOptions {
                            command: "/bin/sh".into(),
                            rootfs: None,
                            pool_size: 0,
                        }
                    };
                    let sb = match BwrapSandbox::connect(opts, limits(), Arc::new(NoHooks)).await {
                        Ok(sb) => sb,
                        Err(e) => {
                            failures.push(format!("open: {}", e.message));
                            continue;
                        }
                    };
                    match sb.run(Bytes::from_static(b"echo ok"), None).await {
                        Ok(RunOutcome::Exited { status: 0, .. }) => {}
                        Ok(other) => failures.push(format!("run: {other:?}")),
                        Err(e) => failures.push(format!("run: {}", e.message)),
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    let children = spawners.finish();
    assert!(children > 0, "the spawner threads started nothing");
    assert!(
        failures.is_empty(),
        "{} of {} sandboxes failed (with {children} other children started meanwhile):\n{}",
        failures.len(),
        TASKS * ROUNDS,
        failures.join("\n")
    );
}

const DAEMONS: usize = 4;
const DAEMON_ROUNDS: usize = 8;

/// Daemons with several languages (one with a formatter: four sandboxes, opened in turn), four
/// started at once, eight times, each answering every language, while 6 threads start children.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemons_with_several_languages_start_at_once() {
    let spawners = Spawners::start(6);
    let config = || {
        let table = |toml: String| -> LanguageSettings { toml::from_str(&toml).unwrap() };
        let rootfs = common::test_rootfs();
        let sh = format!(
            "rootfs = {:?}\ncommand = \"/bin/sh\"\npool-size = 1\n",
            rootfs
        );
        let mut c = common::config(Backend::Bwrap);
        c.language_tables = BTreeMap::from([
            (
                "a".to_owned(),
                table(format!("{sh}format-command = \"/bin/cat\"\n")),
            ),
            ("b".to_owned(), table(sh.clone())),
            ("c".to_owned(), table(sh)),
        ]);
        c.default_language = Some("a".to_owned());
        c
    };
    let mut failures = Vec::new();
    for round in 0..DAEMON_ROUNDS {
        let starts: Vec<_> = (0..DAEMONS)
            .map(|_| {
                let c = config();
                tokio::spawn(async move {
                    let d = TestDaemon::start(c).await;
                    let mut wrong = Vec::new();
                    for lang in ["a", "b", "c"] {
                        let r = d
                            .client
                            .post(d.url(&format!("/compile?lang={lang}")))
                            .body("echo ok")
                            .send()
                            .await
                            .unwrap();
                        let r = common::Reply::read(r).await;
                        if r.status != 200 || r.output() != "ok\n" {
                            wrong.push(format!("{lang}: {} {}", r.status, r.json));
                        }
                    }
                    d.stop().await;
                    if wrong.is_empty() {
                        Ok(())
                    } else {
                        Err(wrong.join("; "))
                    }
                })
            })
            .collect();
        for start in starts {
            // A daemon whose sandboxes do not open panics in `TestDaemon::start`.
            let failure = match start.await {
                Ok(Ok(())) => continue,
                Ok(Err(wrong)) => wrong,
                Err(e) => match e.into_panic().downcast::<String>() {
                    Ok(message) => *message,
                    Err(_) => "panicked".to_owned(),
                },
            };
            failures.push(format!("round {round}: {failure}"));
        }
    }
    let children = spawners.finish();
    assert!(
        failures.is_empty(),
        "{} of {} daemons failed (with {children} other children started meanwhile):\n{}",
        failures.len(),
        DAEMONS * DAEMON_ROUNDS,
        failures.join("\n")
    );
}
