//! The host's temporary directory unusable (the daemon writes its output relay there at start):
//! the daemon refuses to start with a log line that names the directory and the fix, and starts
//! once the directory is usable again. Real binary, bubblewrap backend.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::test_rootfs;

const BIN: &str = env!("CARGO_BIN_EXE_compilerd");

fn daemon(tmpdir: &std::path::Path) -> std::process::Child {
    Command::new(BIN)
        .args(["--backend", "bwrap", "--rootfs"])
        .arg(test_rootfs())
        .args(["--shutdown", "false", "--address", "127.0.0.1:0"])
        .args(["--log-format", "text"])
        .env("TMPDIR", tmpdir)
        .env_remove("RUNTIME_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn an_unusable_tmpdir_is_refused_clearly_and_a_usable_one_serves() {
    // Not a directory at all: even root cannot create anything under it.
    let broken = std::path::Path::new("/dev/null/compilerd-tmp");
    let out = daemon(broken).wait_with_output().unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("/dev/null/compilerd-tmp"), "{log}");
    assert!(log.contains("TMPDIR"), "{log}");

    let fixed = tempfile::tempdir().unwrap();
    let mut child = daemon(fixed.path());
    // The log goes to stderr; a reader thread hands its lines over, so the wait is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let serving = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("serving") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "no start with a usable TMPDIR: {seen:?}");
}
