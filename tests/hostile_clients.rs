//! Slow and hostile clients against a daemon on 127.0.0.1:0 (bubblewrap backend, real runs):
//! connections that send nothing or dribble, thousands held open at once, a connection limit,
//! and malformed requests of every kind. Each ends with a clear 4xx, a 503, or a closed
//! connection; never a panic, and the daemon keeps answering.

mod common;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestDaemon, config};
use compilerd::config::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// A malformed-request case answered 200 or by closing the connection.
const SERVED_OR_CLOSED: &str = "200 or closed";

/// Counts the panics of this process outside the tests' own assertions (the daemon's code and
/// its libraries), before the default report.
fn count_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_none_or(|l| !l.file().starts_with("tests/"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info)
        }));
    });
}

async fn daemon(read_timeout: Duration, max_connections: Option<usize>) -> TestDaemon {
    count_panics();
    let mut c = config(Backend::Bwrap);
    c.read_timeout = read_timeout;
    c.max_connections = max_connections;
    TestDaemon::start(c).await
}

/// Everything the server sends until it closes, or what came before `limit` passed (`Err`).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

/// The daemon still answers: /healthz and a real run.
async fn assert_healthy(d: &TestDaemon) {
    let health = d.client.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let r = d.compile("echo still here").await;
    assert_eq!((r.status, r.output().as_str()), (200, "still here\n"));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the daemon panicked");
}

/// A connection that sends nothing, one that stops inside the HTTP/2 preface, one that dribbles a
/// head, one idle after a keep-alive answer: each is closed at the read timeout, not later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_dribbling_connections_are_closed_at_the_read_timeout() {
    let timeout = Duration::from_millis(600);
    let d = daemon(timeout, None).await;

    async fn closed_after(d: &TestDaemon, first: &'static [u8], dribble: bool) -> Duration {
        let started = Instant::now();
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let dribbler = tokio::spawn(async move {
            // One header byte every 100 ms: never a complete head, always something new.
            while dribble && wr.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            wr
        });
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut sink)).await;
        dribbler.abort();
        assert!(closed.is_ok(), "{first:?} was never closed");
        started.elapsed()
    }

    let cases: [(&[u8], bool); 4] = [
        (b"", false),
        (b"PRI * HTTP/2.0\r\n", false),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", true),
        (b"P", true),
    ];
    for (first, dribble) in cases {
        let took = closed_after(&d, first, dribble).await;
        assert!(
            took >= timeout - Duration::from_millis(100) && took < timeout * 4,
            "{:?} closed after {took:?}",
            String::from_utf8_lossy(first)
        );
    }

    // Idle between two requests of a keep-alive connection.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < timeout * 4, "{:?}", started.elapsed());

    // A body that never finishes: one byte every 100 ms is answered 408 at the read timeout.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /compile HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let dribbler = tokio::spawn(async move {
        while wr.write_all(b"#").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut head))
        .await
        .expect("a dribbled body is answered")
        .unwrap();
    dribbler.abort();
    assert_eq!(&head, b"HTTP/1.1 408");
    assert!(started.elapsed() < timeout * 4, "{:?}", started.elapsed());

    assert_healthy(&d).await;
    d.stop().await;
}

/// Each malformed request and what it may get: a status below 500 (or the one given), or a
/// closed connection; never a hang or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_or_a_closed_connection() {
    let d = daemon(Duration::from_secs(2), None).await;
    let long_line = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let mut garbage = vec![0u8; 4096];
    for (i, b) in garbage.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    // An HTTP/2 SETTINGS frame sent without the connection preface.
    let h2_without_preface = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    let post = |extra: &str, body: &str| {
        format!("POST /compile HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n{body}")
            .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> =
        vec![
        ("100 KiB header line", long_line.into_bytes(), Some("431")),
        ("200 headers", many_headers.into_bytes(), Some("431")),
        ("binary garbage", garbage, None),
        ("h2 frame without preface", h2_without_preface, None),
        // Served as HTTP/1.1 (curl --http2 gets its 200; checked by hand), or, from a client
        // that half-closes at once as this one does, closed: connections accept upgrades (for
        // /socket), and hyper then stops at the end of the input.
        (
            "h2c upgrade",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
                .to_vec(),
            Some(SERVED_OR_CLOSED),
        ),
        (
            "Content-Length past u64",
            post("Content-Length: 99999999999999999999999\r\n", ""),
            None,
        ),
        ("negative Content-Length", post("Content-Length: -1\r\n", ""), None),
        (
            "two Content-Lengths",
            post("Content-Length: 4\r\nContent-Length: 5\r\n", "echo"),
            None,
        ),
        (
            "terabyte Content-Length",
            post("Content-Length: 1000000000000\r\n", "echo hi"),
            Some("400"),
        ),
        (
            "chunk size not hex",
            post("Transfer-Encoding: chunked\r\n", "zz\r\necho\r\n0\r\n\r\n"),
            None,
        ),
        (
            "chunk size overflowing",
            post(
                "Transfer-Encoding: chunked\r\n",
                "FFFFFFFFFFFFFFFFFFFF\r\necho\r\n0\r\n\r\n",
            ),
            None,
        ),
        (
            "chunk longer than its data, then close",
            post("Transfer-Encoding: chunked\r\n", "100\r\necho hi\r\n"),
            None,
        ),
        (
            "chunked and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "4\r\necho\r\n0\r\n\r\n",
            ),
            None,
        ),
        ("bad method token", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), None),
        ("HTTP/9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), None),
        ("NUL in a header", b"GET / HTTP/1.1\r\nHost: x\0y\r\n\r\n".to_vec(), None),
    ];
    for (what, bytes, want) in cases {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        // The server may close while we still write (that is one of the allowed answers).
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let got = match read_until_closed(&mut s, Duration::from_secs(8)).await {
            Ok(got) => got,
            Err(got) => panic!(
                "{what}: not closed in time; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        };
        let text = String::from_utf8_lossy(&got);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .map(str::to_owned);
        match (want, status.as_deref()) {
            (Some(SERVED_OR_CLOSED), s) => {
                assert!(s == Some("200") || got.is_empty(), "{what}: {text:?}")
            }
            (Some(want), Some(s)) => assert_eq!(s, want, "{what}: {text}"),
            (Some(want), None) => panic!("{what}: wanted {want}, got {text:?}"),
            (None, Some(s)) => assert!(s.starts_with('4'), "{what}: {text}"),
            (None, None) => assert!(got.is_empty(), "{what}: not HTTP: {text:?}"),
        }
    }
    assert_healthy(&d).await;
    d.stop().await;
}

/// Past `--max-connections`, a new connection reads a 503 with a JSON error and is closed; when
/// connections close, new ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_the_excess_cleanly() {
    let d = daemon(Duration::from_secs(30), Some(20)).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(d.addr).await.unwrap());
    }
    d.wait_metric("compilerd_connections_open", |n| n == 20.0)
        .await;

    let mut excess = TcpStream::connect(d.addr).await.unwrap();
    excess
        .write_all(b"POST /compile HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\necho")
        .await
        .unwrap();
    let got = read_until_closed(&mut excess, Duration::from_secs(5))
        .await
        .expect("the refused connection is closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap())
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(body["Errors"], "Server busy: too many connections.");
    assert_eq!(d.metric("compilerd_connections_refused_total"), 1.0);
    assert_eq!(d.metric("compilerd_connections_open"), 20.0);

    idle.truncate(10);
    d.wait_metric("compilerd_connections_open", |n| n == 10.0)
        .await;
    assert_healthy(&d).await;
    // The client keeps one or two connections of its own from that check (whether it reused the
    // first depends on when that went back to its pool); they can only close, never add.
    let with_client = d.metric("compilerd_connections_open");
    drop(idle);
    d.wait_metric("compilerd_connections_open", |n| n <= with_client - 10.0)
        .await;
    d.stop().await;
}

/// Raises this test process's own fd limit: it holds both ends of every connection.
fn raise_own_fd_limit(need: u64) {
    let (soft, hard) = compilerd::fdlimit::nofile().unwrap();
    if soft >= need {
        return;
    }
    let lim = libc::rlimit {
        rlim_cur: need,
        rlim_max: hard.max(need),
    };
    // SAFETY: setrlimit only reads the struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(
        rc,
        0,
        "cannot raise RLIMIT_NOFILE to {need} (now {soft}:{hard}): {}",
        std::io::Error::last_os_error()
    );
}

const IDLE: usize = 5000;
const SLOWLORIS: usize = 500;

/// 5 000 connections that never send a byte and 500 that send their head one byte a second do
/// not slow a normal client down: its cache hits stay fast and its runs are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_idle_and_slowloris_do_not_starve_a_normal_client() {
    raise_own_fd_limit(2 * (IDLE + SLOWLORIS) as u64 + 2048);
    let d = daemon(Duration::from_secs(60), None).await;
    assert_eq!(d.compile("echo warm").await.status, 200);

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE / 100 {
        let batch = (0..100).map(|_| TcpStream::connect(d.addr));
        for s in futures_util::future::join_all(batch).await {
            idle.push(s.expect("connect an idle client"));
        }
    }
    let mut slow = Vec::with_capacity(SLOWLORIS);
    for _ in 0..SLOWLORIS {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        s.write_all(b"POST /compile HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let loris = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop_rx => return slow,
            }
            for s in &mut slow {
                s.write_all(b"a")
                    .await
                    .expect("a slowloris client was cut off");
            }
        }
    });
    d.wait_metric("compilerd_connections_open", |n| {
        n >= (IDLE + SLOWLORIS) as f64
    })
    .await;

    let mut hits = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let r = d.compile("echo warm").await;
        hits.push(started.elapsed());
        assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));
    }
    for i in 0..5 {
        let started = Instant::now();
        let r = d.compile(format!("echo run {i}")).await;
        assert_eq!(r.output(), format!("run {i}\n"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    hits.sort();
    let p50 = hits[hits.len() / 2];
    assert!(p50 < Duration::from_millis(50), "hits under load: {hits:?}");
    println!(
        "{} connections held; cache hit p50 {p50:?}, max {:?}",
        d.metric("compilerd_connections_open"),
        hits.last().unwrap()
    );

    let _ = stop_tx.send(());
    let slow = loris
        .await
        .expect("every slowloris client kept its connection");
    // What stays open is the test client's own keep-alive pool, whose size depends on how often
    // it reused a connection; it can only shrink now.
    let with_client = d.metric("compilerd_connections_open");
    drop(slow);
    drop(idle);
    d.wait_metric("compilerd_connections_open", |n| {
        n <= with_client - (IDLE + SLOWLORIS) as f64
    })
    .await;
    assert_eq!(d.metric("compilerd_connections_refused_total"), 0.0);
    assert_healthy(&d).await;
    d.stop().await;
}

/// The real binary, started with a soft fd limit of 1024, raises it to the hard limit.
#[tokio::test]
async fn binary_raises_its_open_file_limit_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    use tokio::io::AsyncBufReadExt;

    let (_, hard) = compilerd::fdlimit::nofile().unwrap();
    assert!(hard > 1024, "this test needs a hard limit above 1024");
    let rootfs = common::test_rootfs().display().to_string();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_compilerd"));
    cmd.args([
        "--backend",
        "bwrap",
        "--rootfs",
        &rootfs,
        "--shutdown",
        "false",
    ])
    .args(["--address", "127.0.0.1:0", "--log-format", "text"])
    .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: libc::RLIM_INFINITY,
            };
            let mut now = lim;
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
            let lim = libc::rlimit {
                rlim_max: now.rlim_max,
                ..lim
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let serving = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("serving") {
                return;
            }
        }
    })
    .await;
    assert!(serving.is_ok(), "the daemon did not start:\n{log}");
    assert!(
        log.contains("open file limit") && log.contains("before=1024"),
        "{log}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, [hard.to_string(), hard.to_string()], "{line}");
    child.kill().await.unwrap();
}
