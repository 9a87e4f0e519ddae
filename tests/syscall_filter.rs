//! The syscall filter, through the daemon, on both backends: a C program (`syscall_filter/probe.c`)
//! sent to the C language calls what kernel exploits start from (namespaces, mounts, io_uring,
//! bpf, keyrings, userfaultfd, perf, another process's memory, odd execution domains and ABIs) and
//! every call is refused; the same program's threads, fork and exec, pipes and sockets still work,
//! and so do Python's threads and subprocesses. Under gVisor (COMPILERD_TEST_RUNTIME=runsc) the
//! probe checks instead that its calls reach gVisor's kernel, not the host's.
//!
//! Needs the images and rootfs directories `scripts/build-image.sh c python` builds
//! (compilerd-LANGUAGE, /var/lib/compilerd/rootfs/LANGUAGE); a missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Reply, TestDaemon};
use compilerd::config::{Backend, Config, LanguageSettings};

const PROBE: &str = include_str!("syscall_filter/probe.c");

const EPERM: &str = "1";
const ENOSYS: &str = "38";
const SIGSYS: &str = "signal 31";

/// Every call the probe makes, and what the filter answers it.
const REFUSED: &[(&str, &[&str])] = &[
    ("unshare_user", &[EPERM]),
    ("unshare_ns", &[EPERM]),
    ("unshare_net", &[EPERM]),
    ("unshare_pid", &[EPERM]),
    ("unshare_uts", &[EPERM]),
    ("unshare_ipc", &[EPERM]),
    ("unshare_cgroup", &[EPERM]),
    // unshare is refused whole, whatever it would unshare.
    ("unshare_files", &[EPERM]),
    ("clone_newuser", &[EPERM]),
    ("clone_newnet", &[EPERM]),
    ("clone_newns", &[EPERM]),
    ("clone_newpid", &[EPERM]),
    // libc falls back to clone, whose flags the filter reads.
    ("clone3", &[ENOSYS]),
    ("clone3_newuser", &[ENOSYS]),
    ("setns", &[EPERM]),
    ("mount_tmpfs", &[EPERM]),
    ("umount2", &[EPERM]),
    ("pivot_root", &[EPERM]),
    ("chroot", &[EPERM]),
    ("open_tree", &[EPERM]),
    ("move_mount", &[EPERM]),
    ("fsopen", &[EPERM]),
    ("mount_setattr", &[EPERM]),
    ("socket_packet", &[EPERM]),
    ("socket_vsock", &[EPERM]),
    // AF_VSOCK with a high bit set, which the kernel ignores.
    ("socket_vsock_high", &[EPERM]),
    ("socket_alg", &[EPERM]),
    ("io_uring_setup", &[EPERM]),
    ("io_uring_enter", &[EPERM]),
    ("io_uring_register", &[EPERM]),
    ("bpf", &[EPERM]),
    ("keyctl", &[EPERM]),
    ("add_key", &[EPERM]),
    ("request_key", &[EPERM]),
    ("userfaultfd", &[EPERM]),
    ("perf_event_open", &[EPERM]),
    ("open_by_handle_at", &[EPERM]),
    ("kcmp", &[EPERM]),
    ("process_vm_readv", &[EPERM]),
    ("process_vm_writev", &[EPERM]),
    ("ptrace", &[EPERM]),
    ("pidfd_getfd", &[EPERM]),
    ("personality_rie", &[EPERM]),
    ("personality_norandom", &[EPERM]),
    ("kexec_load", &[EPERM]),
    ("init_module", &[EPERM]),
    ("finit_module", &[EPERM]),
    ("delete_module", &[EPERM]),
    ("reboot", &[EPERM]),
    ("swapon", &[EPERM]),
    ("syslog", &[EPERM]),
    ("acct", &[EPERM]),
    ("settimeofday", &[EPERM]),
    ("iopl", &[EPERM]),
    ("set_mempolicy", &[EPERM]),
    // Other ABIs: refused by the numbers (no x32 number is allowed), or the caller is killed
    // (bwrap's filter kills a non-x86_64 architecture; the engine's treats x32 as one too).
    ("x32_getpid", &[EPERM, ENOSYS, SIGSYS]),
    ("i386_getpid", &[EPERM, ENOSYS, SIGSYS]),
];

const WORKS: &[&str] = &[
    "threads",
    "fork_exec",
    "popen",
    "sockets",
    "personality_query",
];

fn config(backend: Backend) -> Config {
    let table = |toml: &str| -> LanguageSettings { toml::from_str(toml).unwrap() };
    let mut c = common::config(backend);
    // gcc, then some sixty forks: well within this on a loaded CI machine.
    c.limits.timeout = Duration::from_secs(10);
    c.limits.memory_bytes = 128 << 20;
    c.pool_size = 1;
    c.language_tables = BTreeMap::from([
        ("c".to_owned(), table("")),
        ("python".to_owned(), table("")),
    ]);
    c.default_language = Some("c".to_owned());
    c
}

async fn compile(d: &TestDaemon, lang: &str, program: &str) -> Reply {
    let r = d
        .client
        .post(d.url(&format!("/compile?lang={lang}")))
        .body(program.to_owned())
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

fn stream(r: &Reply, kind: &str) -> String {
    r.json["Events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .filter(|e| e["Kind"] == kind)
                .map(|e| e["Message"].as_str().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// "probe NAME RESULT" and "works NAME ok" lines, by kind and name.
fn results(stdout: &str) -> BTreeMap<(String, String), String> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.splitn(3, ' ');
            let (kind, name, result) = (words.next()?, words.next()?, words.next()?);
            Some(((kind.to_owned(), name.to_owned()), result.to_owned()))
        })
        .collect()
}

/// The host's kernel release, which a program under gVisor must not see.
fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_owned()
}

async fn the_probe_is_refused_everything(backend: Backend) {
    let config = config(backend);
    let gvisor = backend == Backend::Docker && config.runtime.as_deref() == Some("runsc");
    let d = TestDaemon::start(config).await;
    let r = compile(&d, "c", PROBE).await;
    assert_eq!(r.json["Status"].as_i64(), Some(0), "{}", r.text);
    let out = stream(&r, "stdout");
    let results = results(&out);
    let release = results
        .get(&("kernel".to_owned(), "release".to_owned()))
        .unwrap_or_else(|| panic!("no kernel release:\n{out}"));
    if gvisor {
        // The program's calls go to gVisor's kernel, never the host's: what it answers them is
        // gVisor's business (the engine's profile applies inside only with runsc --oci-seccomp).
        assert_ne!(
            release,
            &host_release(),
            "runsc, yet the host's kernel:\n{out}"
        );
        for name in ["threads", "fork_exec", "popen", "sockets"] {
            let got = results.get(&("works".to_owned(), name.to_owned()));
            assert_eq!(got.map(String::as_str), Some("ok"), "{name}:\n{out}");
        }
        d.stop().await;
        return;
    }
    assert_eq!(release, &host_release(), "{out}");
    let mut wrong = Vec::new();
    for (name, expected) in REFUSED {
        match results.get(&("probe".to_owned(), (*name).to_owned())) {
            Some(got) if expected.contains(&got.as_str()) => {}
            got => wrong.push(format!("{name}: {got:?}, expected one of {expected:?}")),
        }
    }
    for name in WORKS {
        match results.get(&("works".to_owned(), (*name).to_owned())) {
            Some(got) if got == "ok" => {}
            got => wrong.push(format!("{name} does not work: {got:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{backend:?}:\n{}\n\nthe probe said:\n{out}\n{}",
        wrong.join("\n"),
        stream(&r, "stderr")
    );
    assert_eq!(results.len(), 1 + REFUSED.len() + WORKS.len(), "{out}");

    // What Python's runtime does under the filter: threads, a subprocess, a fork.
    let python = r#"
import os, subprocess, threading
done = []
threads = [threading.Thread(target=done.append, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("threads", len(done))
print(subprocess.run(["sh", "-c", "echo sub $((6 * 7))"], capture_output=True, text=True).stdout, end="")
pid = os.fork()
if pid == 0:
    os._exit(3)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"#;
    let r = compile(&d, "python", python).await;
    assert_eq!(
        (r.json["Status"].as_i64(), stream(&r, "stdout").as_str()),
        (Some(0), "threads 4\nsub 42\nfork 3\n"),
        "{}",
        r.text
    );
    d.stop().await;
}

mod the_probe_is_refused_everything {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn docker() {
        super::the_probe_is_refused_everything(compilerd::config::Backend::Docker).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bwrap() {
        super::the_probe_is_refused_everything(compilerd::config::Backend::Bwrap).await
    }
}
