//! The HTTP contract of /compile, /healthz and CORS, proven against real sandboxes: every test
//! runs once on Docker and once on bubblewrap, with adversarial programs among them.

mod common;

use std::time::{Duration, Instant};

use common::{Reply, TestDaemon, config};
use compilerd::config::{AllowOrigin, Backend, Config};

const TIMEOUT_NOTICE: &str = "\nTime exceeded, killing...\n";

async fn hello(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    // Pauses between stream switches: the bwrap backend reads two pipes, whose writes have no order
    // between them closer than the daemon can observe.
    let program = "echo hello; sleep 0.05; echo oops >&2; sleep 0.05; echo again; exit 3";
    let r = d.compile(program).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.text,
        r#"{"Errors":"","Events":[{"Message":"hello\n","Kind":"stdout","Delay":0},{"Message":"oops\n","Kind":"stderr","Delay":0},{"Message":"again\n","Kind":"stdout","Delay":0}],"Status":3}"#
    );
    let again = d.compile(program).await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(again.text, r.text);
    d.stop().await;
}

async fn program_size_limit(backend: Backend) {
    let mut c = config(backend);
    c.max_program_bytes = 1000;
    let d = TestDaemon::start(c).await;
    let exact = format!("echo fits\n#{}", "x".repeat(1000 - 11));
    assert_eq!(exact.len(), 1000);
    let r = d.compile(exact.clone()).await;
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "fits\n"),
        "{}",
        r.text
    );
    let r = d.compile(format!("{exact}x")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text, r#"{"Errors":"Program too large.","Events":null}"#);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // A body far over the limit, streamed without a length: answered without reading it all.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < (64 << 20) && tx.send(Ok(vec![b'#'; 65536])).await.is_ok() {
            sent += 65536;
        }
        sent
    });
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    // The daemon stops reading and closes; the client sees a 400 or, if it was still writing, a
    // reset. Either way it must not have been able to push the whole body.
    match d.client.post(d.url("/compile")).body(body).send().await {
        Ok(r) => {
            let r = Reply::read(r).await;
            assert_eq!((r.status, r.errors()), (400, "Program too large."));
        }
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let sent = sender.await.unwrap();
    assert!(
        sent < (8 << 20),
        "the daemon read {sent} bytes of a body over the limit"
    );
    // A declared length over the limit gets its answer before any of the body is read.
    let r = d
        .client
        .post(d.url("/compile"))
        .body(vec![b'#'; 300_000])
        .send()
        .await
        .unwrap();
    assert_eq!(Reply::read(r).await.errors(), "Program too large.");
    assert_eq!(d.metric("compilerd_program_too_large_total"), 3.0);
    let r = d.compile("echo still serving").await;
    assert_eq!(r.output(), "still serving\n");
    d.stop().await;
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn output_flood(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let started = Instant::now();
    let r = d.compile("yes").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"Errors":"Program output too large.","Events":null}"#
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "killed late: {:?}",
        started.elapsed()
    );
    // Deterministic, so cached.
    assert_eq!(d.compile("yes").await.header("x-cache"), Some("HIT"));
    // Exactly the cap is still an answer.
    let r = d.compile("head -c 65536 /dev/zero | tr '\\0' a").await;
    assert_eq!(
        (r.status, r.output().len()),
        (200, 65536),
        "{}",
        &r.text[..200.min(r.text.len())]
    );
    d.stop().await;
}

async fn deadline(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    for program in ["echo before; while :; do :; done", "echo before; sleep 30"] {
        let started = Instant::now();
        let r = d.compile(program).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.output(), format!("before\n{TIMEOUT_NOTICE}"));
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
            "{took:?}"
        );
        // Timeouts are never cached.
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    assert_eq!(
        d.compile("echo before; sleep 30").await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(d.metric("compilerd_run_timeouts_total"), 3.0);
    d.stop().await;
}

async fn memory_hog(backend: Backend) {
    // Room to reach the memory limit when the machine is loaded (the doubling loop needs CPU):
    // under a load average of 20 on 2 cores, 1.5 s was sometimes not enough.
    let mut c = config(backend);
    c.limits.timeout = Duration::from_secs(6);
    let d = TestDaemon::start(c).await;
    let r = d
        .compile("echo start; a=xxxxxxxx; while :; do a=\"$a$a\"; done")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.output();
    assert!(
        out.starts_with("start\n") && out.contains("Out of memory"),
        "{out}"
    );
    assert_eq!(d.metric("compilerd_memory_limit_kills_total"), 1.0);
    d.stop().await;
}

async fn fork_bomb(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let bomb = d.spawn_compile("f() { f | f & }; f; wait");
    // While the bomb runs, the daemon and other runs stay healthy.
    let r = d.compile("echo still fine").await;
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "still fine\n"),
        "{}",
        r.text
    );
    let r = bomb.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = d.client.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    d.stop().await;
}

async fn isolation(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    // The daemon itself listens on loopback; the sandbox must not reach it, or anything else.
    let program = format!(
        "echo net: $(ls /sys/class/net 2>/dev/null); if nc {} {} </dev/null; then echo REACHED; else echo unreachable; fi",
        d.addr.ip(),
        d.addr.port()
    );
    let r = d.compile(program).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.output();
    assert!(
        out.contains("unreachable") && !out.contains("REACHED"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "net: lo" || l == "net:"),
        "an interface besides lo: {out}"
    );

    let r = d.compile("echo x > /etc/x && echo WROTE-ETC; echo x > /x && echo WROTE-ROOT; echo ok > /tmp/f && cat /tmp/f").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let out = r.output();
    assert!(!out.contains("WROTE"), "{out}");
    assert!(out.contains("ok\n"), "{out}");

    let r = d.compile("env | sort").await;
    let out = r.output();
    for leaked in [
        "NOTIFY_SOCKET",
        "LISTEN_",
        "CARGO",
        "RUST",
        "DOCKER",
        "JOURNAL",
        "INVOCATION_ID",
    ] {
        assert!(
            !out.contains(leaked),
            "{leaked} leaked into the sandbox: {out}"
        );
    }
    let r = d.compile("grep CapEff /proc/self/status; id -u").await;
    let out = r.output();
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(!out.ends_with("\n0\n"), "runs as root: {out}");
    d.stop().await;
}

async fn early_closed_stdout(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let r = d.compile("exec 1>&-; echo to-stderr >&2; exit 0").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["Events"][0]["Kind"], "stderr");
    assert_eq!(r.output(), "to-stderr\n");
    assert_eq!(r.json["Status"], 0);
    // And the program sees EOF on stdin after its own text.
    let r = d.compile("cat; echo after-eof").await;
    assert_eq!(r.output(), "after-eof\n");
    d.stop().await;
}

async fn many_at_once(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let replies =
        futures_util::future::join_all((0..20).map(|i| d.compile(format!("echo program {i}"))))
            .await;
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(
            (r.status, r.output()),
            (200, format!("program {i}\n")),
            "{}",
            r.text
        );
    }
    d.stop().await;
}

async fn identical_requests_run_once(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let replies =
        futures_util::future::join_all((0..6).map(|_| d.compile("sleep 0.3; echo once"))).await;
    for r in &replies {
        assert_eq!(r.output(), "once\n");
    }
    assert_eq!(
        d.metric("compilerd_runs_total{language=\"default\",outcome=\"ok\"}"),
        1.0
    );
    d.stop().await;
}

async fn overload(backend: Backend) {
    let mut c = config(backend);
    c.max_concurrent_runs = 1;
    c.max_queued = 0;
    c.pool_size = 1;
    let d = TestDaemon::start(c).await;
    let slow = d.spawn_compile("sleep 1; echo slow");
    d.wait_metric("compilerd_runs_in_flight", |v| v == 1.0)
        .await;
    let r = d.compile("echo turned away").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert!(r.errors().contains("busy"), "{}", r.text);
    assert_eq!(slow.await.unwrap().output(), "slow\n");
    assert_eq!(d.metric("compilerd_overload_rejections_total"), 1.0);
    // Not cached: the same program runs once a slot is free.
    let r = d.compile("echo turned away").await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    d.stop().await;
}

async fn routes_and_cors(backend: Backend) {
    let mut c: Config = config(backend);
    c.allow_origin = AllowOrigin::List(vec!["https://play.example".into()]);
    let d = TestDaemon::start(c).await;
    let pre = d
        .client
        .request(reqwest::Method::OPTIONS, d.url("/compile"))
        .header("Origin", "https://play.example")
        .send()
        .await
        .unwrap();
    assert!(pre.status() == 204 || pre.status() == 200);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "https://play.example");
    assert_eq!(h["access-control-allow-methods"], "POST, OPTIONS");
    assert_eq!(
        h["access-control-allow-headers"],
        "Content-Type, Content-Length, Accept-Encoding"
    );
    let r = d
        .client
        .post(d.url("/compile"))
        .header("Origin", "https://evil.example")
        .body("true")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.headers()["vary"], "Origin");

    let r = d.client.get(d.url("/compile")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST, OPTIONS");
    assert_eq!(
        d.client.get(d.url("/nope")).send().await.unwrap().status(),
        404
    );
    let r = d.client.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    d.stop().await;
}

async fn non_utf8_output(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let r = d.compile("printf 'a\\377b'").await;
    assert_eq!(r.output(), "a\u{fffd}b");
    d.stop().await;
}

macro_rules! on_backend {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            #[tokio::test]
            async fn hello() {
                super::hello($backend).await
            }
            #[tokio::test]
            async fn program_size_limit() {
                super::program_size_limit($backend).await
            }
            #[tokio::test]
            async fn output_flood() {
                super::output_flood($backend).await
            }
            #[tokio::test]
            async fn deadline() {
                super::deadline($backend).await
            }
            #[tokio::test]
            async fn memory_hog() {
                super::memory_hog($backend).await
            }
            #[tokio::test]
            async fn fork_bomb() {
                super::fork_bomb($backend).await
            }
            #[tokio::test]
            async fn isolation() {
                super::isolation($backend).await
            }
            #[tokio::test]
            async fn early_closed_stdout() {
                super::early_closed_stdout($backend).await
            }
            #[tokio::test]
            async fn many_at_once() {
                super::many_at_once($backend).await
            }
            #[tokio::test]
            async fn identical_requests_run_once() {
                super::identical_requests_run_once($backend).await
            }
            #[tokio::test]
            async fn overload() {
                super::overload($backend).await
            }
            #[tokio::test]
            async fn routes_and_cors() {
                super::routes_and_cors($backend).await
            }
            #[tokio::test]
            async fn non_utf8_output() {
                super::non_utf8_output($backend).await
            }
        }
    };
}

on_backend!(docker, Backend::Docker);
on_backend!(bwrap, Backend::Bwrap);

/// A sandbox that breaks after startup: 503 with a message that says what failed (and nothing of
/// the operator's: `secret` is a name or path only the log may carry), never cached, and the
/// daemon keeps serving.
async fn assert_sandbox_failure_answer(d: &TestDaemon, secret: &str) {
    for _ in 0..2 {
        let r = d.compile("echo never runs").await;
        assert_eq!(r.status, 503, "{}", r.text);
        assert_eq!(
            r.header("x-cache"),
            Some("MISS"),
            "failures are never cached"
        );
        assert!(r.errors().starts_with("Sandbox failed: "), "{}", r.text);
        assert!(r.errors().contains("sandbox"), "{}", r.text);
        assert!(!r.errors().contains(secret), "{}", r.text);
        assert_eq!(r.json["Events"], serde_json::Value::Null);
    }
    assert_eq!(
        d.client
            .get(d.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        d.metric("compilerd_runs_total{language=\"default\",outcome=\"sandbox_error\"}") >= 2.0
    );
}

#[tokio::test]
async fn docker_image_removed_after_startup() {
    let tag = format!("compilerd-doomed-{}", std::process::id());
    let ok = std::process::Command::new("docker")
        .args(["tag", &common::test_image(), &tag])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut c = config(Backend::Docker);
    c.image = tag.clone();
    c.pool_size = 0;
    let d = TestDaemon::start(c).await;
    let ok = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .status()
        .unwrap();
    assert!(ok.success());
    assert_sandbox_failure_answer(&d, &tag).await;
    d.stop().await;
}

#[tokio::test]
async fn bwrap_rootfs_removed_after_startup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::test_rootfs())
        .arg(&root)
        .status()
        .unwrap();
    assert!(ok.success());
    let mut c = config(Backend::Bwrap);
    c.rootfs = Some(root.clone());
    // A pooled sandbox may already run its shell from the rootfs when it is removed, and may then
    // serve a program: a fresh sandbox per run is the one that meets the removed rootfs.
    c.pool_size = 0;
    let d = TestDaemon::start(c).await;
    std::fs::remove_dir_all(&root).unwrap();
    assert_sandbox_failure_answer(&d, &root.display().to_string()).await;
    d.stop().await;
}

/// Slow clients: a stalled body gets 408 and a stalled head is cut off, both at the read timeout,
/// while other clients are served.
#[tokio::test]
async fn slow_clients_cannot_hold_the_daemon() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = config(Backend::Bwrap);
    c.read_timeout = Duration::from_millis(500);
    let d = TestDaemon::start(c).await;

    let mut body_staller = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    body_staller
        .write_all(b"POST /compile HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\necho")
        .await
        .unwrap();
    let mut head_staller = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    head_staller
        .write_all(b"POST /compile HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(d.compile("echo served").await.output(), "served\n");

    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        body_staller.read_to_end(&mut answer),
    )
    .await
    .expect("the stalled body is answered")
    .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), head_staller.read_to_end(&mut rest))
        .await
        .expect("the stalled head is cut off")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(400));
    d.stop().await;
}
