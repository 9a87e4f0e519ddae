//! /socket, the Go playground's WebSocket protocol, from a real WebSocket client: the protocol's
//! logic on the scripted sandbox (fast), and live output, kill and a vanished client on Docker
//! and bubblewrap, where what a killed run leaves behind is checked on the host.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::ws::{Ws, summary, wait_gone, wait_marked};
use common::{TestDaemon, config};
use compilerd::config::{AllowOrigin, Backend, Config};
use compilerd::sandbox::scripted::ScriptedSandbox;

fn scripted_config() -> Config {
    let mut c = config(Backend::Bwrap);
    c.limits.timeout = Duration::from_secs(10);
    c.limits.max_output_bytes = 4096;
    c
}

async fn scripted(c: Config) -> (TestDaemon, Arc<ScriptedSandbox>) {
    let sb = Arc::new(ScriptedSandbox::new(c.limits.clone()));
    let metrics = Arc::new(compilerd::metrics::Metrics::new());
    (TestDaemon::start_with(c, sb.clone(), metrics).await, sb)
}

#[tokio::test]
async fn run_sends_output_while_the_program_runs() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("0", "out first\nsleep 400\nerr second\nexit 3")
        .await;
    let msgs = ws.until_end("0").await;
    assert_eq!(
        summary(&msgs, "0"),
        ("first\n".into(), "second\n".into(), "exit status 3".into())
    );
    let first = msgs.iter().find(|m| m.kind == "stdout").unwrap();
    let end = msgs.last().unwrap();
    assert!(
        end.at - first.at >= Duration::from_millis(300),
        "output came only {:?} before the end",
        end.at - first.at
    );
    d.stop().await;
}

#[tokio::test]
async fn end_says_how_the_run_ended() {
    let mut c = scripted_config();
    c.limits.timeout = Duration::from_millis(300);
    c.max_program_bytes = 8000;
    let (d, _) = scripted(c).await;
    let mut ws = Ws::connect(d.addr).await;
    let flood = format!("out {}", "x".repeat(5000));
    let too_large = "out ".to_string() + &"y".repeat(9000);
    let cases: [(&str, &str, &str); 5] = [
        ("ok", "out fine", ""),
        ("timeout", "out so far\nhang", "process took too long"),
        ("flood", &flood, "Program output too large."),
        (
            "oom",
            "oom",
            "out of memory: the program used more than its 64 MiB",
        ),
        ("big", &too_large, "Program too large."),
    ];
    for (id, program, end) in cases {
        ws.run(id, program).await;
        let msgs = ws.until_end(id).await;
        assert_eq!(summary(&msgs, id).2, end, "{id}");
    }
    d.stop().await;
}

#[tokio::test]
async fn kill_ends_the_run_at_once() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("k", "out started\nhang").await;
    let started = ws.next().await.unwrap();
    assert_eq!(
        (started.kind.as_str(), started.body.as_str()),
        ("stdout", "started\n")
    );
    ws.kill("k").await;
    let end = ws.next().await.unwrap();
    assert_eq!(
        (end.kind.as_str(), end.body.as_str()),
        ("end", "signal: killed")
    );
    assert!(end.at - started.at < Duration::from_secs(2));
    d.wait_metric("compilerd_runs_in_flight", |v| v == 0.0)
        .await;
    // The connection serves the next run.
    ws.run("k2", "out next").await;
    assert_eq!(summary(&ws.until_end("k2").await, "k2").0, "next\n");
    d.stop().await;
}

#[tokio::test]
async fn two_runs_share_a_connection() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("slow", "out s1\nsleep 300\nout s2").await;
    ws.run("fast", "err f1\nexit 1").await;
    let mut msgs = ws.until_end("fast").await;
    assert!(
        !msgs.iter().any(|m| m.id == "slow" && m.kind == "end"),
        "the fast run ended after the slow one: {msgs:?}"
    );
    msgs.extend(ws.until_end("slow").await);
    assert_eq!(
        summary(&msgs, "fast"),
        (String::new(), "f1\n".into(), "exit status 1".into())
    );
    assert_eq!(
        summary(&msgs, "slow"),
        ("s1\ns2\n".into(), String::new(), String::new())
    );
    d.stop().await;
}

#[tokio::test]
async fn a_second_run_with_the_same_id_kills_the_first() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("1", "out old\nhang").await;
    assert_eq!(ws.next().await.unwrap().body, "old\n");
    ws.run("1", "out new").await;
    let mut msgs = Vec::new();
    for _ in 0..3 {
        msgs.push(ws.next().await.unwrap());
    }
    let seen: Vec<(&str, &str)> = msgs
        .iter()
        .map(|m| (m.kind.as_str(), m.body.as_str()))
        .collect();
    assert_eq!(
        seen,
        [("end", "signal: killed"), ("stdout", "new\n"), ("end", "")]
    );
    d.stop().await;
}

#[tokio::test]
async fn completed_runs_are_cached_and_replay_at_once() {
    let (d, sb) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    let program = "out a\nsleep 200\nerr b\nexit 4";
    ws.run("1", program).await;
    let first = summary(&ws.until_end("1").await, "1");
    ws.run("2", program).await;
    let started = std::time::Instant::now();
    let again = summary(&ws.until_end("2").await, "2");
    assert!(started.elapsed() < Duration::from_millis(150));
    assert_eq!(first, again);
    assert_eq!(first, ("a\n".into(), "b\n".into(), "exit status 4".into()));
    assert_eq!(sb.runs(), 1);
    // /compile answers the same program from the same cache.
    let r = d.compile(program).await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(sb.runs(), 1);
    d.stop().await;
}

#[tokio::test]
async fn a_flood_of_messages_is_cut_at_the_limit() {
    let mut c = scripted_config();
    c.limits.max_output_bytes = 1 << 20;
    let (d, _) = scripted(c).await;
    let mut ws = Ws::connect(d.addr).await;
    // Alternating streams make a message each.
    let program: String = (0..1500).map(|i| format!("out o{i}\nerr e{i}\n")).collect();
    ws.run("f", &program).await;
    let msgs = ws.until_end("f").await;
    let outputs = msgs.iter().filter(|m| m.kind != "end").count();
    assert_eq!(outputs, 1000);
    assert_eq!(summary(&msgs, "f").2, "Program output too large.");
    d.stop().await;
}

#[tokio::test]
async fn a_vanished_client_kills_its_runs() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("a", "out up\nhang").await;
    ws.run("b", "hang").await;
    assert_eq!(ws.next().await.unwrap().body, "up\n");
    d.wait_metric("compilerd_runs_in_flight", |v| v == 2.0)
        .await;
    ws.vanish();
    d.wait_metric("compilerd_runs_in_flight", |v| v == 0.0)
        .await;
    d.stop().await;
}

#[tokio::test]
async fn origin_is_checked_on_the_upgrade() {
    let mut c = scripted_config();
    c.allow_origin = AllowOrigin::List(vec!["http://good.example".into()]);
    let (d, sb) = scripted(c).await;
    let (status, body) = Ws::connect_from(d.addr, Some("http://evil.example"))
        .await
        .err()
        .expect("a foreign origin is refused");
    assert_eq!(status, 403);
    assert!(body.contains("Origin not allowed"), "{body}");
    for origin in [Some("http://good.example"), None] {
        let mut ws = Ws::connect_from(d.addr, origin).await.expect("allowed");
        ws.run("1", "out hi").await;
        assert_eq!(summary(&ws.until_end("1").await, "1").0, "hi\n");
    }
    assert_eq!(sb.runs(), 1);
    // Not a WebSocket: a clear refusal.
    let r = d.client.get(d.url("/socket")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 426);
    assert_eq!(
        d.metric(r#"compilerd_requests_total{code="403",handler="socket"}"#),
        1.0
    );
    d.stop().await;
}

#[tokio::test]
async fn bad_messages_close_the_connection_and_kill_its_runs() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("a", "hang").await;
    d.wait_metric("compilerd_runs_in_flight", |v| v == 1.0)
        .await;
    ws.send_text("{not json").await;
    assert!(
        ws.next().await.is_none(),
        "the server closes the connection"
    );
    d.wait_metric("compilerd_runs_in_flight", |v| v == 0.0)
        .await;
    d.stop().await;
}

#[tokio::test]
async fn a_stop_lets_runs_finish_then_closes() {
    let (d, _) = scripted(scripted_config()).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("a", "out before\nsleep 300\nout after").await;
    assert_eq!(ws.next().await.unwrap().body, "before\n");
    let stopping = tokio::spawn(d.stop());
    let msgs = ws.until_end("a").await;
    assert_eq!(
        summary(&msgs, "a"),
        ("after\n".into(), String::new(), String::new())
    );
    assert!(ws.next().await.is_none(), "closed after the last run");
    stopping.await.unwrap();
}

// --- on the real backends ------------------------------------------------------------------

async fn live_output_and_exit(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let mut ws = Ws::connect(d.addr).await;
    ws.run("0", "echo first; sleep 0.5; echo second >&2; exit 3")
        .await;
    let msgs = ws.until_end("0").await;
    assert_eq!(
        summary(&msgs, "0"),
        ("first\n".into(), "second\n".into(), "exit status 3".into())
    );
    let first = msgs.iter().find(|m| m.kind == "stdout").unwrap();
    let end = msgs.last().unwrap();
    assert!(
        end.at - first.at >= Duration::from_millis(400),
        "output came only {:?} before the end",
        end.at - first.at
    );
    // A deadline ends it with the Go server's words.
    ws.run("1", "echo looping; while :; do :; done").await;
    let msgs = ws.until_end("1").await;
    assert_eq!(
        summary(&msgs, "1"),
        (
            "looping\n".into(),
            String::new(),
            "process took too long".into()
        )
    );
    d.stop().await;
}

/// Kills a long run with `kill`, or by vanishing; the program's process and cgroup must be gone
/// at once (well before its deadline).
async fn killed_runs_leave_nothing(backend: Backend, vanish: bool) {
    let mut c = config(backend);
    c.limits.timeout = Duration::from_secs(30);
    let d = TestDaemon::start(c).await;
    let mut ws = Ws::connect(d.addr).await;
    let marker = format!("{}.{}", 40 + vanish as u32, std::process::id());
    ws.run("k", &format!("echo ready; exec sleep {marker}"))
        .await;
    assert_eq!(ws.next().await.unwrap().body, "ready\n");
    let (pid, cgroup) = wait_marked(&format!("sleep {marker}")).await;
    assert!(cgroup.exists(), "{}", cgroup.display());
    if vanish {
        ws.vanish();
    } else {
        ws.kill("k").await;
        let end = ws.next().await.unwrap();
        assert_eq!(
            (end.kind.as_str(), end.body.as_str()),
            ("end", "signal: killed")
        );
    }
    let took = wait_gone(pid, &cgroup, Duration::from_secs(10)).await;
    eprintln!("{backend} (vanish: {vanish}): process and cgroup gone {took:?} after the kill");
    d.wait_metric("compilerd_runs_in_flight", |v| v == 0.0)
        .await;
    d.stop().await;
    if backend == Backend::Docker {
        let left = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", "label=compilerd.managed"])
            .output()
            .unwrap();
        let left = String::from_utf8_lossy(&left.stdout).into_owned();
        let id = cgroup.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !left
                .lines()
                .any(|l| !l.trim().is_empty() && id.contains(l.trim())),
            "container {id} is left"
        );
    }
}

macro_rules! on_backend {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            #[tokio::test]
            async fn live_output_and_exit() {
                super::live_output_and_exit($backend).await
            }
            #[tokio::test]
            async fn kill_leaves_nothing() {
                super::killed_runs_leave_nothing($backend, false).await
            }
            #[tokio::test]
            async fn vanished_client_leaves_nothing() {
                super::killed_runs_leave_nothing($backend, true).await
            }
        }
    };
}

on_backend!(docker, Backend::Docker);
on_backend!(bwrap, Backend::Bwrap);
