//! The soak driver behind scripts/soak.sh: starts the compilerd binary on 127.0.0.1, sends a mixed
//! load from N concurrent clients for a bounded time (cache hits, misses, attacks, oversize
//! programs, malformed requests, slow and stalled clients, health checks), then stops it and
//! checks: no 5xx but explicit 503 overload, every answer well-formed, RSS flat after warm-up,
//! the daemon's fds back to their idle count, no container, cgroup or process of it left.
//! Prints its figures; exits 1 when a check fails.
//!
//! usage: soak --bin PATH --backend docker|bwrap [--image NAME] [--rootfs DIR]
//!             [--duration 60s] [--concurrency 32] [--requests N]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    bin: String,
    backend: String,
    image: String,
    rootfs: String,
    duration: Duration,
    concurrency: usize,
    requests: u64,
}

fn args() -> Args {
    let mut a = Args {
        bin: "target/release/compilerd".into(),
        backend: "bwrap".into(),
        image: "compilerd-test".into(),
        rootfs: "/var/lib/compilerd-test/rootfs".into(),
        duration: Duration::from_secs(60),
        concurrency: 32,
        requests: u64::MAX,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--bin" => a.bin = value,
            "--backend" => a.backend = value,
            "--image" => a.image = value,
            "--rootfs" => a.rootfs = value,
            "--duration" => a.duration = humantime::parse_duration(&value).expect("duration"),
            "--concurrency" => a.concurrency = value.parse().expect("concurrency"),
            "--requests" => a.requests = value.parse().expect("requests"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

const READ_TIMEOUT: &str = "2s";
const MAX_PROGRAM: usize = 16 << 10;

/// What one request was and what it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Hit,
    Miss,
    Attack,
    Oversize,
    Malformed,
    Slow,
    Stalled,
    Health,
}

#[derive(Default)]
struct Tally {
    /// (class, status or "closed") -> count
    answers: BTreeMap<(Class, String), u64>,
    /// what was wrong, first few
    bad: Vec<String>,
    bad_count: u64,
    latencies: BTreeMap<Class, Vec<Duration>>,
}

impl Tally {
    fn record(&mut self, class: Class, got: &str, latency: Duration, problem: Option<String>) {
        *self.answers.entry((class, got.to_owned())).or_default() += 1;
        self.latencies.entry(class).or_default().push(latency);
        if let Some(p) = problem {
            self.bad_count += 1;
            if self.bad.len() < 20 {
                self.bad.push(format!("{class:?}: {p}"));
            }
        }
    }
}

/// Checks a /compile answer: JSON with `Errors` and `Events`, and a status that is a run's answer
/// or a client error, or an explicit overload 503.
fn check_compile(status: u16, body: &str) -> Option<String> {
    let json: serde_json::Value = match serde_json::from_str(body) {
        Ok(j) => j,
        Err(e) => return Some(format!("{status}: not JSON ({e}): {body:.200}")),
    };
    let errors = json["Errors"].as_str();
    let events_ok = json["Events"].is_null()
        || json["Events"].as_array().is_some_and(|evs| {
            evs.iter().all(|e| {
                e["Message"].is_string()
                    && matches!(e["Kind"].as_str(), Some("stdout" | "stderr"))
                    && e["Delay"].is_number()
            })
        });
    if errors.is_none() || !events_ok {
        return Some(format!("{status}: malformed answer {body:.200}"));
    }
    let errors = errors.unwrap_or_default();
    match status {
        200 if json["Events"].is_array() => None,
        400 | 408 | 413 | 431 if !errors.is_empty() => None,
        503 if errors.starts_with("Server busy") => None,
        _ => Some(format!("{status}: {body:.200}")),
    }
}

struct Load {
    base: String,
    addr: String,
    client: reqwest::Client,
    marker: u32,
    next: AtomicU64,
    tally: Mutex<Tally>,
}

impl Load {
    fn attack(&self, n: u64) -> String {
        let m = self.marker;
        let attacks = [
            format!("sleep {m} & echo before; sh -c 'kill -STOP 0'; echo after"),
            format!("sleep {m} & echo before; kill -9 -1; echo after"),
            format!(
                "trap '' TERM INT HUP; (trap '' TERM INT HUP; exec sleep {m}) & while :; do :; done"
            ),
            format!("echo before; exec >&- 2>&-; sleep {m} & while :; do :; done"),
            "f() { f | f & }; f; sleep 5".to_owned(),
            "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; ls -A /tmp".to_owned(),
            "yes flood".to_owned(),
            "head -c 300000000 /dev/zero | tail -c 1 >/dev/null; echo survived".to_owned(),
            format!("setsid sleep {m} </dev/null >/dev/null 2>&1 & echo detached"),
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; env".to_owned(),
            "nc -w 1 127.0.0.1 22 </dev/null; echo nc=$?".to_owned(),
            "i=0; while [ $i -lt 100000 ] && : > /tmp/f$i; do i=$((i+1)); done; echo $i".to_owned(),
        ];
        attacks[n as usize % attacks.len()].clone()
    }

    async fn post(&self, class: Class, body: Vec<u8>) {
        let started = Instant::now();
        let r = self
            .client
            .post(format!("{}/compile", self.base))
            .body(body)
            .send()
            .await;
        let (got, problem) = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let json_type = r
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
                match r.text().await {
                    Ok(text) => {
                        let mut p = check_compile(status, &text);
                        if p.is_none() && !json_type {
                            p = Some(format!("{status} without a JSON content type"));
                        }
                        if class == Class::Hit && status != 200 && status != 503 {
                            p = Some(format!("a cached program got {status}: {text:.200}"));
                        }
                        if class == Class::Oversize && status != 400 {
                            p = Some(format!("an oversize program got {status}"));
                        }
                        (status.to_string(), p)
                    }
                    Err(e) => ("broken".into(), Some(format!("body: {e}"))),
                }
            }
            Err(e) => ("error".into(), Some(format!("request: {e}"))),
        };
        self.tally
            .lock()
            .unwrap()
            .record(class, &got, started.elapsed(), problem);
    }

    /// Sends `chunks` with `pause` between them on a raw connection; returns the status line's
    /// code, "closed", or "hung" (no answer and no close within `limit`).
    async fn raw(&self, chunks: &[&[u8]], pause: Duration, limit: Duration) -> String {
        let Ok(mut s) = TcpStream::connect(&self.addr).await else {
            return "connect failed".into();
        };
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            if s.write_all(c).await.is_err() {
                break;
            }
        }
        let mut got = Vec::new();
        let read = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
        let text = String::from_utf8_lossy(&got);
        match text.strip_prefix("HTTP/1.1 ").and_then(|t| t.get(..3)) {
            Some(code) => code.to_owned(),
            None if read.is_ok() || !got.is_empty() => "closed".into(),
            None => "hung".into(),
        }
    }

    async fn one(&self, n: u64) {
        let roll = n.wrapping_mul(2654435761) % 100;
        match roll {
            0..35 => {
                let program = format!("echo hit-{}", n % 16);
                self.post(Class::Hit, program.into_bytes()).await
            }
            35..55 => {
                let program = format!("echo miss-{}-{n}", self.marker);
                self.post(Class::Miss, program.into_bytes()).await
            }
            55..70 => self.post(Class::Attack, self.attack(n).into_bytes()).await,
            70..76 => {
                let program = vec![b'#'; MAX_PROGRAM + 1 + (n as usize % 4096)];
                self.post(Class::Oversize, program).await
            }
            76..84 => {
                let garbage: [&[u8]; 5] = [
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage",
                    b"POST /compile HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\necho\r\n0\r\n\r\n",
                    b"POST /compile HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",
                    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
                ];
                let started = Instant::now();
                let got = self
                    .raw(
                        &[garbage[n as usize % garbage.len()]],
                        Duration::ZERO,
                        Duration::from_secs(10),
                    )
                    .await;
                let problem = (!(got.starts_with('4') || got == "closed"))
                    .then(|| format!("malformed request got {got}"));
                self.tally.lock().unwrap().record(
                    Class::Malformed,
                    &got,
                    started.elapsed(),
                    problem,
                );
            }
            84..90 => {
                // A head dribbled over ~1 s, then a body: a slow but honest client is served.
                let body = format!("echo slow-{}", n % 8);
                let head = format!(
                    "POST /compile HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let pieces: Vec<&[u8]> =
                    head.as_bytes().chunks(8).chain([body.as_bytes()]).collect();
                let started = Instant::now();
                let got = self
                    .raw(&pieces, Duration::from_millis(60), Duration::from_secs(20))
                    .await;
                let problem =
                    (got != "200" && got != "503").then(|| format!("slow client got {got}"));
                self.tally
                    .lock()
                    .unwrap()
                    .record(Class::Slow, &got, started.elapsed(), problem);
            }
            90..92 => {
                // A body that never finishes: 408 at the read timeout.
                let started = Instant::now();
                let got = self
                    .raw(
                        &[b"POST /compile HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\necho"],
                        Duration::ZERO,
                        Duration::from_secs(20),
                    )
                    .await;
                let problem = (got != "408").then(|| format!("stalled body got {got}"));
                self.tally
                    .lock()
                    .unwrap()
                    .record(Class::Stalled, &got, started.elapsed(), problem);
            }
            _ => {
                let started = Instant::now();
                let r = self
                    .client
                    .get(format!("{}/healthz", self.base))
                    .send()
                    .await;
                let got = r.map_or("error".to_owned(), |r| r.status().as_u16().to_string());
                let problem = (got != "200").then(|| format!("healthz got {got}"));
                self.tally
                    .lock()
                    .unwrap()
                    .record(Class::Health, &got, started.elapsed(), problem);
            }
        }
    }
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmRSS:").unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// utime + stime of the daemon itself, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(a: &Args, port: u16) -> Child {
    let mut cmd = Command::new(&a.bin);
    cmd.args([
        "--backend",
        &a.backend,
        "--address",
        &format!("127.0.0.1:{port}"),
    ])
    .args(["--shutdown", "false", "--drain", "0s", "--timeout", "1s"])
    .args([
        "--read-timeout",
        READ_TIMEOUT,
        "--max-program-bytes",
        &MAX_PROGRAM.to_string(),
    ])
    .args([
        "--cache-entries",
        "64",
        "--max-concurrent-runs",
        "4",
        "--max-queued",
        "64",
    ])
    .args(["--memory", "64MiB", "--pids", "32", "--tmpfs-size", "8MiB"])
    .args(["--log-format", "text"])
    .env("COMPILERD_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    if a.backend == "docker" {
        cmd.args(["--image", &a.image, "--pool-size", "4"]);
    } else {
        cmd.args(["--rootfs", &a.rootfs]);
    }
    cmd.spawn().expect("start compilerd")
}

/// Containers, run cgroups and marked processes of daemon `pid` still on the host.
fn leftovers(pid: u32, marker: u32) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(out) = Command::new("docker")
        .args(["ps", "-a", "--filter", "label=compilerd.managed"])
        .args(["--format", "{{.Names}} {{.Label \"compilerd.owner\"}}"])
        .output()
    {
        let needle = format!("/{pid}/");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.contains(&needle) {
                left.push(format!("container {l}"));
            }
        }
    }
    let prefix = format!("compilerd-{pid}-");
    let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > 20_000 {
            break;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    left.push(format!("cgroup {}", e.path().display()));
                }
                stack.push(e.path());
            }
        }
    }
    let needle = marker.to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.split_whitespace().any(|w| w == needle) {
                left.push(format!("process {}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    left
}

#[tokio::main]
async fn main() {
    let a = args();
    let port = free_port();
    let mut child = start(&a, port);
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let up = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            eprintln!("soak: compilerd exited at start: {status}");
            std::process::exit(1);
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "compilerd did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fds_idle = fds(pid);
    let marker = 9_000_000 + pid % 1_000_000;
    let load = Arc::new(Load {
        base: base.clone(),
        addr: format!("127.0.0.1:{port}"),
        client,
        marker,
        next: AtomicU64::new(0),
        tally: Mutex::new(Tally::default()),
    });

    // RSS every 500 ms while the load runs.
    let samples = Arc::new(Mutex::new(Vec::<(Duration, u64)>::new()));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, running) = (samples.clone(), running.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            while running.load(Ordering::SeqCst) {
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed(), rss_kib(pid)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let deadline = started + a.duration;
    let workers: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let load = load.clone();
            let requests = a.requests;
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = load.next.fetch_add(1, Ordering::SeqCst);
                    if n >= requests {
                        break;
                    }
                    load.one(n).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let cpu = cpu_seconds(pid) - cpu_before;

    // Let the daemon settle: no run in flight, no connection but ours.
    let settle = Instant::now();
    let mut metrics = String::new();
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/metrics")).await {
            metrics = r.text().await.unwrap_or_default();
            let busy = metric(&metrics, "compilerd_runs_in_flight").unwrap_or(1.0)
                + metric(&metrics, "compilerd_runs_queued").unwrap_or(1.0);
            let conns = metric(&metrics, "compilerd_connections_open").unwrap_or(99.0);
            if busy == 0.0 && conns <= 1.0 && fds(pid) <= fds_idle + 2 {
                break;
            }
        }
        if settle.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds_after = fds(pid);
    // SIGTERM, and wait for the daemon to remove its sandboxes and exit.
    // SAFETY: kill has no memory preconditions; `pid` is our child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    // Processes are reaped by the engine or the kernel just after; give them a bounded moment.
    let mut left = leftovers(pid, marker);
    let reap = Instant::now();
    while !left.is_empty() && reap.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = leftovers(pid, marker);
    }

    let tally = load.tally.lock().unwrap();
    let total: u64 = tally.answers.values().sum();
    let samples = samples.lock().unwrap();
    let warm_at = elapsed / 5;
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= warm_at)
        .map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let growth = if warm > 0 {
        (last as f64 - warm as f64) / warm as f64
    } else {
        f64::NAN
    };

    println!(
        "== soak: backend {} for {elapsed:.1?} at {}-way",
        a.backend, a.concurrency
    );
    println!(
        "requests {total} ({:.1}/s)",
        total as f64 / elapsed.as_secs_f64()
    );
    for ((class, got), n) in &tally.answers {
        println!("  {class:?} {got}: {n}");
    }
    for (class, lat) in &tally.latencies {
        let mut lat = lat.clone();
        lat.sort();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        println!(
            "  latency {class:?}: p50 {:.1?} p99 {:.1?} max {:.1?}",
            q(0.5),
            q(0.99),
            lat.last().unwrap()
        );
    }
    println!(
        "rss: after warm-up {warm} KiB, end {last} KiB ({:+.1}%), peak {peak} KiB",
        growth * 100.0
    );
    println!("fds: idle {fds_idle}, after the load {fds_after}");
    println!(
        "daemon cpu: {cpu:.2} s, {:.3} ms per request",
        cpu * 1000.0 / total.max(1) as f64
    );
    for series in [
        "compilerd_runs_total{language=\"default\",outcome=\"ok\"}",
        "compilerd_runs_total{language=\"default\",outcome=\"timeout\"}",
        "compilerd_runs_total{language=\"default\",outcome=\"oom\"}",
        "compilerd_runs_total{language=\"default\",outcome=\"output_too_large\"}",
        "compilerd_runs_total{language=\"default\",outcome=\"sandbox_error\"}",
        "compilerd_overload_rejections_total",
        "compilerd_connections_refused_total",
    ] {
        println!(
            "  {series} {}",
            metric(&metrics, series).unwrap_or(f64::NAN)
        );
    }
    println!("exit: {exit:?}");

    let mut failures = Vec::new();
    if tally.bad_count > 0 {
        failures.push(format!(
            "{} bad answers, e.g.:\n    {}",
            tally.bad_count,
            tally.bad.join("\n    ")
        ));
    }
    if metric(
        &metrics,
        "compilerd_runs_total{language=\"default\",outcome=\"sandbox_error\"}",
    )
    .unwrap_or(0.0)
        > 0.0
    {
        failures.push("sandbox errors during the soak".into());
    }
    if growth.is_nan() || growth.abs() > 0.10 {
        failures.push(format!("RSS not flat after warm-up: {warm} -> {last} KiB"));
    }
    if fds_after > fds_idle + 2 {
        failures.push(format!("fds leaked: {fds_idle} idle, {fds_after} after"));
    }
    if !exit.as_ref().is_ok_and(|s| s.success()) {
        failures.push(format!("compilerd exit: {exit:?}"));
    }
    if !left.is_empty() {
        failures.push(format!("left behind: {left:?}"));
    }
    if failures.is_empty() {
        println!("soak: OK");
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        std::process::exit(1);
    }
}
