//! The performance benchmark of the README's "Performance" section. It starts the real compilerd
//! binary on loopback and measures, in one run and on one machine, each figure next to its
//! reference, because absolute times on shared machines drift while ratios hold:
//!   (a) cache hits: requests/s and latency at 32 connections (wrk), vs a minimal hyper server
//!       that reads the body and returns a fixed JSON answer;
//!   (b) 20 sequential cold runs, p50/p90, vs `docker run` of the same image per program;
//!   (c) 40 distinct programs 8 at a time: wall time and errors, vs `docker run` and vs the
//!       engine's floor (a minimal container per program straight through the API);
//!   (d) RSS after caching 2 000 answers of ~32 KiB, and again after replaying them all;
//!   (w) the same on bubblewrap: light load, sparse, back to back, vs a bare bwrap spawn, and
//!       sustained distinct programs (wrk) vs bare bwrap spawns 8 at a time, with CPU per run;
//!   (g, h) Go hello world, cold, vs `docker run` and the image's own commands under bare bwrap;
//!   (s) live output: the time from a program's first write to a WebSocket client of /socket
//!       receiving it, on Docker and on bubblewrap.
//!   (p) Go as on the playground, on bubblewrap: hello world (fake time) vs the bare spawn of the
//!       image's run command, a two-package txtar, and hello world with vet.
//!   (v) Docker under gVisor (runsc) vs runc: cold runs and 40 programs 8 at a time (gvisor.rs).
//!   (i) programs with input: Piston's execute vs /compile, the cost of measuring a run, C compile
//!       + run vs a bare gcc + run (runs.rs).
//!   (j) Judge0: a batch of test cases with one compile, and the Redis queue of two daemons vs
//!       wait=true on one (judge.rs).
//! Run: `cargo bench --bench load` (root, Docker engine, wrk, bubblewrap, the test image, the
//! language roots, runsc and redis-server as scripts/setup-test-host.sh installs them).
//! `BENCH_QUICK=1` shortens every phase for a smoke test; `BENCH_PHASES=c` (any of
//! `abcwdghpsvij`, w for bubblewrap, g for Go, h for Go without Docker, p for the Go playground's
//! features, s for /socket, v for gVisor, i for programs with input, j for Judge0) runs only the
//! phases named.

mod gvisor;
mod judge;
mod runs;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_compilerd");

fn quick() -> bool {
    std::env::var_os("BENCH_QUICK").is_some()
}

/// Whether the phase `p` is to run (`BENCH_PHASES`, default all).
fn phase(p: char) -> bool {
    std::env::var("BENCH_PHASES").map_or(true, |s| s.contains(p))
}

fn image() -> String {
    std::env::var("COMPILERD_TEST_IMAGE").unwrap_or_else(|_| "compilerd-test".into())
}

fn rootfs() -> String {
    std::env::var("COMPILERD_TEST_ROOTFS")
        .unwrap_or_else(|_| "/var/lib/compilerd-test/rootfs".into())
}

/// A compilerd child process; its address is read back from its own log line.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .args([
                "--address",
                "127.0.0.1:0",
                "--shutdown",
                "false",
                "--drain",
                "0s",
                "--log-format",
                "text",
            ])
            .args(extra)
            .env("COMPILERD_LOG", "warn,compilerd=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("compilerd starts");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("compilerd exited before serving")
                .unwrap();
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its stderr so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/compile", self.addr)
    }

    /// Waits until `n` pre-started containers are ready and armed for the fastest hand-over, as
    /// the daemon's metrics say (a pool at rest is armed).
    fn wait_pool(&self, n: usize) {
        self.wait_gauge("compilerd_pool_armed", n);
    }

    /// Waits until the daemon's gauge `name` reaches `n`.
    fn wait_gauge(&self, name: &str, n: usize) {
        let url = format!("http://{}/metrics", self.addr);
        let prefix = format!("{name} ");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = reqwest::blocking::get(&url)
                .and_then(|r| r.text())
                .unwrap_or_default();
            let ready = text
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            if ready >= n as f64 || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// CPU time of the daemon itself and of the sandboxes it waited for (bwrap and everything
    /// under it), in clock ticks.
    fn cpu_ticks(&self) -> (u64, u64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command's closing parenthesis; utime is field 14 of the whole line.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        (f[11] + f[12], f[13] + f[14])
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn post(client: &reqwest::blocking::Client, url: &str, program: String) -> (u16, String) {
    match client.post(url).body(program).send() {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// `docker run` of the image with the program on stdin: what the Go server paid per request.
fn docker_run(program: &str) -> (bool, String) {
    docker_run_image(&image(), program)
}

/// `docker run -i` of `image` with the program on stdin; (success, stdout).
fn docker_run_image(image: &str, program: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("docker")
        .args(["run", "--rm", "-i", "--network", "none", image])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker CLI");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The engine's own floor for one program in its own container: create, start, wait for and
/// remove a minimal container of `image` (`/bin/sh -c true`, no network, no log), straight through
/// the API, with none of the CLI's or compilerd's work. A pool cannot make a container cheaper
/// than this for the engine, so under sustained load no backend that gives every program its
/// own container gets further ahead of `docker run` than this does.
fn engine_floor(
    rt: &tokio::runtime::Runtime,
    docker: &bollard::Docker,
    image: &str,
    i: usize,
) -> bool {
    use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
    use bollard::query_parameters::{
        CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptions,
    };
    use futures_util::StreamExt;
    let name = format!("compilerd-bench-floor-{}-{i}", std::process::id());
    rt.block_on(async {
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), "true".into()]),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let create = CreateContainerOptionsBuilder::new().name(&name).build();
        let mut ok = docker.create_container(Some(create), body).await.is_ok()
            && docker.start_container(&name, None).await.is_ok();
        if ok {
            let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
            ok = matches!(wait.next().await, Some(Ok(r)) if r.status_code == 0);
        }
        let remove = RemoveContainerOptionsBuilder::new().force(true).build();
        ok & docker.remove_container(&name, Some(remove)).await.is_ok()
    })
}

/// A bare `bwrap` spawn, without compilerd, of `command` in `root` with the program on stdin: the
/// namespaces, the read-only root, /proc, /dev, a /tmp tmpfs, as nobody without capabilities — the
/// floor a sandboxed run is compared with. (success, stdout).
fn bwrap_direct(root: &str, command: &[&str], program: &str) -> (bool, String) {
    bwrap_spawn(root, command, program, None)
}

/// A memfd holding `bytes`, read from offset 0, closed on exec (the child gets a dup2 of it),
/// numbered 10 or above, clear of the numbers a child's copies take.
fn memfd_with(bytes: &[u8]) -> std::os::fd::OwnedFd {
    use std::io::{Seek, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a fresh descriptor from memfd_create, owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"bench-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes).unwrap();
    file.rewind().unwrap();
    // SAFETY: duplicates a descriptor we own; the copy is owned by the returned value.
    let high = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(
        high >= 0,
        "F_DUPFD_CLOEXEC: {}",
        std::io::Error::last_os_error()
    );
    unsafe { std::os::fd::OwnedFd::from_raw_fd(high) }
}

/// `bwrap_direct`, with `filters` installed as the daemon installs them (each program from a
/// descriptor of its own, from 3 up, and `--disable-userns`) when there are some.
fn bwrap_spawn(
    root: &str,
    command: &[&str],
    program: &str,
    filters: Option<&compilerd::sandbox::syscalls::Filters>,
) -> (bool, String) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fds: Vec<std::os::fd::OwnedFd> = filters
        .map(|f| f.programs().iter().map(|p| memfd_with(p)).collect())
        .unwrap_or_default();
    let mut cmd = Command::new("bwrap");
    let mut filter_args: Vec<String> = Vec::new();
    if !fds.is_empty() {
        filter_args.push("--disable-userns".into());
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        for target in 3..3 + raw.len() as i32 {
            filter_args.extend(["--add-seccomp-fd".into(), target.to_string()]);
        }
        // SAFETY: only dup2 between fork and exec. The sources are 10 and above, the targets 3
        // and 4, so no dup2 overwrites a source still to be placed, and each copy is a new
        // descriptor, inheritable.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &src) in raw.iter().enumerate() {
                    if libc::dup2(src, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .args([
            "--unshare-all",
            "--unshare-user",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--ro-bind",
            root,
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            "268435456",
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--chdir",
            "/tmp",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--cap-drop",
            "ALL",
        ])
        .args(&filter_args)
        .arg("--")
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bwrap");
    drop(fds);
    let _ = child.stdin.take().unwrap().write_all(program.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// (g): what the Go image's run command did before it called the compiler and linker itself:
/// `go build` of the program, then the program.
const GO_BUILD_RUN: &str = "export GOROOT=/usr/lib/go-1.19 GOCACHE=/tmp/.cache GOPATH=/tmp/.go \
CGO_ENABLED=0 GO111MODULE=off GOFLAGS=; mkdir -p /tmp/prog && cd /tmp/prog && cat >prog.go && \
GOMAXPROCS=2 /usr/lib/go-1.19/bin/go build -o prog prog.go && exec ./prog";

/// (g): Go hello world, a distinct program each time (a comment differs) so that every one is
/// compiled and run, never answered from the cache.
fn go_hello(tag: &str, i: usize) -> String {
    format!(
        "package main\n\nimport \"fmt\"\n\n// {tag} {i} {}\nfunc main() {{\n\tfmt.Println(\"Hello, 世界\")\n}}\n",
        std::process::id()
    )
}

/// (g): latencies of `n` sequential Go hello worlds through `run`, which says whether the
/// greeting came back.
fn go_sequential(
    n: usize,
    tag: &str,
    before_each: impl Fn(),
    run: impl Fn(String) -> bool,
) -> (Vec<Duration>, usize) {
    let mut times = Vec::new();
    let mut errors = 0;
    for i in 0..n {
        before_each();
        let program = go_hello(tag, i);
        let t = Instant::now();
        if !run(program) {
            errors += 1;
        }
        times.push(t.elapsed());
    }
    times.sort();
    (times, errors)
}

/// (b): latencies of `n` sequential distinct programs.
fn sequential(
    n: usize,
    tag: &str,
    before_each: impl Fn(),
    run: impl Fn(String) -> bool,
) -> (Vec<Duration>, usize) {
    let mut times = Vec::new();
    let mut errors = 0;
    for i in 0..n {
        before_each();
        let program = format!("echo cold {tag} {i} {}", std::process::id());
        let t = Instant::now();
        if !run(program) {
            errors += 1;
        }
        times.push(t.elapsed());
    }
    times.sort();
    (times, errors)
}

/// (c): `n` distinct programs (`run(i)` sends the i-th), `width` at a time; wall time and errors.
fn concurrent(n: usize, width: usize, run: impl Fn(usize) -> bool + Sync) -> (Duration, usize) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let errors = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..width {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    if !run(i) {
                        errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (t.elapsed(), errors.into_inner())
}

/// `run(i)` from `width` threads until `seconds` have passed: (runs, errors, seconds taken).
fn for_a_while(
    width: usize,
    seconds: u32,
    run: impl Fn(usize) -> bool + Sync,
) -> (usize, usize, f64) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (next, errors) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let t = Instant::now();
    let until = t + Duration::from_secs(u64::from(seconds));
    std::thread::scope(|s| {
        for _ in 0..width {
            s.spawn(|| {
                while Instant::now() < until {
                    if !run(next.fetch_add(1, Ordering::SeqCst)) {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (
        next.into_inner(),
        errors.into_inner(),
        t.elapsed().as_secs_f64(),
    )
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// The round with the median requests/s.
fn median_round(mut rounds: Vec<Wrk>) -> Wrk {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    rounds.swap_remove(rounds.len() / 2)
}

fn wrk(url: &str, body: &str, seconds: u32) -> Wrk {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!("wrk.method = \"POST\"\nwrk.body = {body:?}\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n"),
    )
    .unwrap();
    // See `split_cores`: one wrk thread on the last core, or two threads anywhere.
    let mut cmd = match split_cores() {
        Some((_, load)) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &load, "wrk", "-t1"]);
            c
        }
        None => {
            let mut c = Command::new("wrk");
            c.arg("-t2");
            c
        }
    };
    wrk_parse(
        cmd.args(["-c32", &format!("-d{seconds}s"), "--latency", "-s"])
            .arg(&script)
            .arg(url),
    )
}

/// Runs a wrk command and reads its summary.
fn wrk_parse(cmd: &mut Command) -> Wrk {
    let out = cmd
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    let latency = |s: String| -> f64 {
        let s = s.trim();
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().unwrap() / 1000.0
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().unwrap()
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().unwrap() * 1000.0
        } else {
            f64::NAN
        }
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    Wrk {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
        p50_ms: field("50%").map(latency).unwrap_or(f64::NAN),
        p99_ms: field("99%").map(latency).unwrap_or(f64::NAN),
        errors,
    }
}

/// wrk with `connections` connections in one thread, each request a program never sent before.
fn wrk_distinct(url: &str, connections: u32, seconds: u32) -> Wrk {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("distinct.lua");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(
        &script,
        format!(
            "local n = 0\n\
             request = function()\n\
               n = n + 1\n\
               return wrk.format(\"POST\", nil, {{[\"Content-Type\"] = \"text/plain\"}}, \"echo sustained {stamp} \" .. n)\n\
             end\n"
        ),
    )
    .unwrap();
    wrk_parse(
        Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(&script)
            .arg(url),
    )
}

/// Clock ticks per second, the unit of /proc's CPU times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).unwrap_or(100)
}

/// The reference for (a): the least a hyper server can do for this request, in its own process.
fn reference_server() {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let body = bytes::Bytes::from_static(br#"{"Errors":"","Events":[{"Message":"hit\n","Kind":"stdout","Delay":0}],"Status":0}"#);
                    let mut r = hyper::Response::new(Full::new(body));
                    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// With two cores or more, (a) gives the server under test the first core(s) and wrk the last
/// one, so that neither preempts the other: on shared cores the scheduler's time slices (~4 ms)
/// set both servers' p99, whatever they do. `(server cpus, load cpu)` for taskset.
fn split_cores() -> Option<(String, String)> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n >= 2).then(|| (format!("0-{}", n - 2), (n - 1).to_string()))
}

/// Moves every thread of process `pid` to `cpus` (taskset syntax).
fn pin(pid: u32, cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset could not pin process {pid} to CPUs {cpus}");
}

fn start_reference() -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--reference-server")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().unwrap())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "meets target" } else { "MISSES target" }
}

fn main() {
    if std::env::args().any(|a| a == "--reference-server") {
        reference_server();
        return;
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (cold_n, wide_n, fill_n, wrk_s, rounds) = if quick() {
        (5, 16, 100, 2, 1)
    } else {
        (20, 40, 2000, 4, 5)
    };
    println!(
        "machine: {cpus} CPUs; image {}; rootfs {}",
        image(),
        rootfs()
    );

    // (a) cache hits vs a minimal hyper server.
    // A pool deep enough for back-to-back runs: a refill takes longer than a pooled run.
    let d = (phase('a') || phase('b') || phase('c')).then(|| {
        Daemon::start(&[
            "--backend",
            "docker",
            "--image",
            &image(),
            "--pool-size",
            "8",
            "--max-concurrent-runs",
            "8",
        ])
    });
    let wide = |tag: &str, i: usize| format!("echo wide {tag} {i} {}", std::process::id());
    if let Some(d) = &d {
        let url = d.url();
        if phase('a') {
            let (s, body) = post(&client, &d.url(), "echo hit".into());
            assert_eq!(s, 200, "{body}");
            // Rounds alternate between the two servers and each side reports its median round,
            // so that a slow spell of the shared machine does not land on one side only.
            let (mut refc, refaddr) = start_reference();
            let split = split_cores();
            if let Some((server, _)) = &split {
                pin(d.child.id(), server);
                pin(refc.id(), server);
            }
            let refurl = format!("http://{refaddr}/compile");
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                ours.push(wrk(&d.url(), "echo hit", wrk_s));
                reference.push(wrk(&refurl, "echo hit", wrk_s));
            }
            let _ = refc.kill();
            let _ = refc.wait();
            if split.is_some() {
                pin(d.child.id(), &format!("0-{}", cpus - 1));
            }
            let (ours, reference) = (median_round(ours), median_round(reference));
            let how = match &split {
                Some((server, load)) => format!("servers on CPU {server}, wrk -t1 on CPU {load}"),
                None => "wrk -t2 on the same CPUs".to_owned(),
            };
            println!(
                "\n(a) cache hits, 32 connections, median of {rounds} rounds of {wrk_s}s ({how}):"
            );
            println!(
                "    compilerd       {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
                ours.rps, ours.p50_ms, ours.p99_ms, ours.errors
            );
            println!(
                "    minimal hyper   {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
                reference.rps, reference.p50_ms, reference.p99_ms
            );
            let ratio = ours.rps / reference.rps;
            println!(
                "    ratio {:.0}% of the minimal server; p99 {:.2} ms: {}",
                ratio * 100.0,
                ours.p99_ms,
                verdict(ratio >= 0.8 && ours.p99_ms < 5.0)
            );
        }
        if phase('b') {
            // (b) sequential cold runs.
            let run_ours = |p: String| post(&client, &url, p).0 == 200;
            // A playground at light load: each program arrives once the pool has refilled (awaited on
            // the daemon's own pool gauge). Back to back, runs outpace refills and wait for them.
            let (ours_cold, ours_err) = sequential(cold_n, "docker", || d.wait_pool(8), run_ours);
            let (burst, burst_err) = sequential(cold_n, "burst", || (), run_ours);
            let (docker_cold, docker_err) = sequential(cold_n, "cli", || (), |p| docker_run(&p).0);
            let (p50, p90) = (percentile(&ours_cold, 0.5), percentile(&ours_cold, 0.9));
            let (dp50, dp90) = (percentile(&docker_cold, 0.5), percentile(&docker_cold, 0.9));
            println!(
                "\n(b) {cold_n} sequential cold runs (distinct programs), pool refilled before each:"
            );
            println!(
                "    compilerd docker  p50 {:>7.1} ms  p90 {:>7.1} ms  errors {ours_err}",
                ms(p50),
                ms(p90)
            );
            println!(
                "    ...back to back   p50 {:>7.1} ms  p90 {:>7.1} ms  errors {burst_err}",
                ms(percentile(&burst, 0.5)),
                ms(percentile(&burst, 0.9))
            );
            println!(
                "    docker run        p50 {:>7.1} ms  p90 {:>7.1} ms  errors {docker_err}",
                ms(dp50),
                ms(dp90)
            );
            let speedup = dp50.as_secs_f64() / p50.as_secs_f64();
            println!(
                "    p50 {speedup:.1}x faster than docker run: {}",
                verdict(speedup >= 10.0)
            );
        }
        if phase('c') {
            // (c) 40 distinct programs 8 at a time.
            let (wall, errs) = concurrent(wide_n, 8, |i| {
                post(&client, &url, wide("docker", i)).0 == 200
            });
            let (dwall, derrs) = concurrent(wide_n, 8, |i| docker_run(&wide("cli", i)).0);
            let rt = tokio::runtime::Runtime::new().unwrap();
            let engine = rt
                .block_on(
                    bollard::Docker::connect_with_local_defaults()
                        .unwrap()
                        .negotiate_version(),
                )
                .expect("the Docker engine");
            let img = image();
            let (fwall, ferrs) = concurrent(wide_n, 8, |i| engine_floor(&rt, &engine, &img, i));
            println!("\n(c) {wide_n} distinct programs, 8 at a time:");
            println!("    compilerd docker  {:>7.0} ms  errors {errs}", ms(wall));
            println!(
                "    docker run        {:>7.0} ms  errors {derrs}",
                ms(dwall)
            );
            println!(
                "    engine floor      {:>7.0} ms  errors {ferrs}  (create, start, wait, remove of a minimal container through the API)",
                ms(fwall)
            );
            let speedup = dwall.as_secs_f64() / wall.as_secs_f64();
            let ceiling = dwall.as_secs_f64() / fwall.as_secs_f64();
            println!(
                "    {speedup:.1}x faster than docker run (target 3x); the engine floor is {ceiling:.1}x, compilerd takes {:.0}% of the floor's time: {}",
                wall.as_secs_f64() / fwall.as_secs_f64() * 100.0,
                verdict(errs == 0 && speedup >= 3.0)
            );
        }
    }
    drop(d);

    if phase('w') {
        // The bubblewrap backend: light load (each program once the pool has refilled), sparse
        // (programs 100-300 ms apart), back to back, next to a bare bwrap spawn; then sustained.
        let root = rootfs();
        let b = Daemon::start(&[
            "--backend",
            "bwrap",
            "--rootfs",
            &root,
            "--pool-size",
            "2",
            "--max-concurrent-runs",
            "8",
        ]);
        let burl = b.url();
        let run_ours = |p: String| post(&client, &burl, p).0 == 200;
        let n = cold_n.max(100);
        let (light, light_err) = sequential(
            n,
            "bwrap",
            || b.wait_gauge("compilerd_pool_ready", 2),
            run_ours,
        );
        let gap = std::cell::Cell::new(0u64);
        let (sparse, sparse_err) = sequential(
            if quick() { 10 } else { 30 },
            "sparse",
            || {
                // A fixed spread of gaps (no randomness: the same run to run).
                gap.set((gap.get() + 37) % 200);
                std::thread::sleep(Duration::from_millis(100 + gap.get()));
            },
            run_ours,
        );
        let (burst, burst_err) = sequential(n, "burst", || (), run_ours);
        // The floor: a bare bwrap spawn of `sh -c true` in the same root, as many, just after;
        // then as many with the daemon's syscall filters (compiled once, as the daemon does),
        // which says what the filters cost a spawn.
        let (bare, bare_err) = sequential(
            n,
            "bare",
            || (),
            |_| bwrap_direct(&root, &["/bin/sh", "-c", "true"], "").0,
        );
        let filters = compilerd::sandbox::syscalls::Filters::compile().unwrap();
        let (filtered, filtered_err) = sequential(
            n,
            "bare+filter",
            || (),
            |_| bwrap_spawn(&root, &["/bin/sh", "-c", "true"], "", Some(&filters)).0,
        );
        let (bwall, berrs) = concurrent(wide_n, 8, |i| {
            post(&client, &burl, wide("bwrap", i)).0 == 200
        });
        let line = |what: &str, t: &[Duration], errs: usize| {
            println!(
                "    {what:<34} p50 {:>5.1} ms  p90 {:>5.1} ms  errors {errs}",
                ms(percentile(t, 0.5)),
                ms(percentile(t, 0.9)),
            );
        };
        println!("\n(b, c) bubblewrap backend, 2 pre-spawned sandboxes:");
        line(
            &format!("{} cold runs, pool refilled", light.len()),
            &light,
            light_err,
        );
        line(
            &format!("{} cold runs, 100-300 ms apart", sparse.len()),
            &sparse,
            sparse_err,
        );
        line(
            &format!("{} cold runs, back to back", burst.len()),
            &burst,
            burst_err,
        );
        line("bare `bwrap ... /bin/sh -c true`", &bare, bare_err);
        line("the same with the syscall filters", &filtered, filtered_err);
        let (p50, bare50) = (percentile(&light, 0.5), percentile(&bare, 0.5));
        println!(
            "    light-load p50 {:.1} ms vs bare spawn {:.1} ms: {}",
            ms(p50),
            ms(bare50),
            verdict(p50 <= Duration::from_millis(2) && p50 <= bare50)
        );
        println!(
            "    {wide_n} programs 8 at a time: {:.0} ms  errors {berrs}",
            ms(bwall)
        );
        // Sustained: distinct programs from 8 wrk connections; CPU per run from the daemon's
        // own time, its waited-for children's (bwrap and the sandboxes) and the machine's.
        let seconds = if quick() { 3 } else { 10 };
        let machine = || -> u64 {
            let stat = std::fs::read_to_string("/proc/stat").unwrap();
            let cpu = stat.lines().next().unwrap();
            // user nice system idle iowait irq softirq: all but idle and iowait.
            let f: Vec<u64> = cpu
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            f[0] + f[1] + f[2] + f[5] + f[6]
        };
        let ((own0, kids0), all0) = (b.cpu_ticks(), machine());
        let sustained = wrk_distinct(&burl, 8, seconds);
        let ((own1, kids1), all1) = (b.cpu_ticks(), machine());
        let runs = (sustained.rps * f64::from(seconds)).max(1.0);
        let tick_ms = 1000.0 / clock_ticks() as f64;
        let per = |t: u64| t as f64 * tick_ms / runs;
        println!(
            "    sustained, 8 connections, distinct programs: {:.0} programs/s  p50 {:.1} ms  p99 {:.1} ms  errors {}: {}",
            sustained.rps,
            sustained.p50_ms,
            sustained.p99_ms,
            sustained.errors,
            verdict(sustained.rps >= 500.0 && sustained.errors == 0)
        );
        println!(
            "    CPU per run: daemon {:.2} ms, bwrap and sandbox {:.2} ms, the rest of the machine (kernel threads, wrk) {:.2} ms",
            per(own1 - own0),
            per(kids1 - kids0),
            per((all1 - all0).saturating_sub((own1 - own0) + (kids1 - kids0)))
        );
        // The floor of the sustained figure: bare bwrap spawns of `sh -c true`, 8 at a time, as
        // long, with no daemon, cgroup, relay or HTTP.
        let all0 = machine();
        let (bare_n, bare_errs, bare_s) = for_a_while(8, seconds, |i| {
            bwrap_direct(&root, &["/bin/sh", "-c", "true"], &format!("{i}")).0
        });
        let all1 = machine();
        let bare_rps = bare_n as f64 / bare_s;
        println!(
            "    bare `bwrap ... /bin/sh -c true`, 8 at a time: {bare_rps:.0} spawns/s  errors {bare_errs}  CPU per spawn {:.2} ms; compilerd sustains {:.0}% of it",
            (all1 - all0) as f64 * tick_ms / bare_n.max(1) as f64,
            sustained.rps / bare_rps * 100.0
        );
        // The same with the filters, as long: the CPU a spawn pays for them.
        let all0 = machine();
        let (fil_n, fil_errs, fil_s) = for_a_while(8, seconds, |i| {
            let p = format!("{i}");
            bwrap_spawn(&root, &["/bin/sh", "-c", "true"], &p, Some(&filters)).0
        });
        let all1 = machine();
        println!(
            "    the same with the syscall filters: {:.0} spawns/s  errors {fil_errs}  CPU per spawn {:.2} ms",
            fil_n as f64 / fil_s,
            (all1 - all0) as f64 * tick_ms / fil_n.max(1) as f64,
        );
        drop(b);
    }

    if phase('g') || phase('h') {
        // Go hello world, cold (compiled and run every time), with Debian's Go 1.19 from
        // scripts/build-image.sh go: compilerd on both backends next to `docker run -i`, and
        // compilerd on bwrap next to bare bwrap spawns of the image's run command and of the
        // `go build` it replaced. `h` is this phase without Docker.
        let n = if quick() { 5 } else { 20 };
        let go_image = std::env::var("BENCH_GO_IMAGE").unwrap_or_else(|_| "compilerd-go".into());
        let go_image = go_image.as_str();
        let go_root = std::env::var("BENCH_GO_ROOTFS")
            .unwrap_or_else(|_| "/var/lib/compilerd/rootfs/go".into());
        let ok = |(status, body): (u16, String)| status == 200 && body.contains("Hello, 世界");
        let greeted = |(success, out): (bool, String)| success && out.contains("Hello, 世界");
        let mut rows: Vec<(&str, Vec<Duration>, usize)> = Vec::new();
        if phase('g') {
            let g = Daemon::start(&[
                "--image",
                go_image,
                "--pool-size",
                "2",
                "--max-concurrent-runs",
                "2",
            ]);
            let gurl = g.url();
            let (docker, derr) = go_sequential(
                n,
                "docker",
                || g.wait_pool(2),
                |p| ok(post(&client, &gurl, p)),
            );
            drop(g);
            rows.push(("compilerd docker", docker, derr));
        }
        let b = Daemon::start(&[
            "--backend",
            "bwrap",
            "--rootfs",
            &go_root,
            "--command",
            "/usr/lib/compilerd/run",
        ]);
        let burl = b.url();
        // Interleaved, one of each per round, so that the machine's load drifts over all three.
        let mut bw = (Vec::new(), 0);
        let mut gobuild = (Vec::new(), 0);
        let mut direct = (Vec::new(), 0);
        for i in 0..n {
            let time =
                |acc: &mut (Vec<Duration>, usize), tag: &str, run: &dyn Fn(String) -> bool| {
                    let program = go_hello(tag, i);
                    let t = Instant::now();
                    if !run(program) {
                        acc.1 += 1;
                    }
                    acc.0.push(t.elapsed());
                };
            time(&mut bw, "bwrap", &|p| ok(post(&client, &burl, p)));
            time(&mut gobuild, "gobuild", &|p| {
                greeted(bwrap_direct(&go_root, &["/bin/sh", "-c", GO_BUILD_RUN], &p))
            });
            time(&mut direct, "direct", &|p| {
                greeted(bwrap_direct(&go_root, &["/usr/lib/compilerd/run"], &p))
            });
        }
        drop(b);
        for (name, (mut t, e)) in [
            ("compilerd bwrap ", bw),
            ("bwrap + run cmd ", direct),
            ("bwrap + go build", gobuild),
        ] {
            t.sort();
            rows.push((name, t, e));
        }
        if phase('g') {
            let (cli, cerr) =
                go_sequential(n, "cli", || (), |p| greeted(docker_run_image(go_image, &p)));
            rows.push(("docker run -i   ", cli, cerr));
        }
        println!("\n(g) Go hello world, {n} sequential cold compile+run (distinct programs):");
        for (name, t, e) in &rows {
            println!(
                "    {name}  p50 {:>7.1} ms  p90 {:>7.1} ms  errors {e}",
                ms(percentile(t, 0.5)),
                ms(percentile(t, 0.9))
            );
        }
    }

    if phase('p') {
        go_playground(quick(), &client);
    }
    if phase('v') {
        gvisor::phase(cold_n, wide_n, &client);
    }
    if phase('i') {
        runs::phase(quick(), &client);
    }
    if phase('j') {
        judge::phase(quick(), &client);
    }
    if phase('s') {
        let n = if quick() { 10 } else { 50 };
        println!("\n(s) live output over /socket, {n} sequential runs: first write -> client");
        for backend in ["docker", "bwrap"] {
            let root = rootfs();
            let image = image();
            let args: Vec<&str> = if backend == "docker" {
                vec!["--backend", "docker", "--image", &image, "--pool-size", "2"]
            } else {
                vec!["--backend", "bwrap", "--rootfs", &root]
            };
            let d = Daemon::start(&args);
            let lags = socket_lags(&d, n, backend);
            println!(
                "    {backend:<7} p50 {:.2} ms  p99 {:.2} ms",
                ms(percentile(&lags, 0.5)),
                ms(percentile(&lags, 0.99))
            );
        }
    }

    if phase('d') {
        // (d) RSS with the cache full of ~32 KiB answers, then replayed.
        let d = Daemon::start(&[
            "--backend",
            "docker",
            "--image",
            &image(),
            "--max-concurrent-runs",
            "4",
        ]);
        let url = d.url();
        let rss_start = d.rss_kib();
        let program = |i: usize| format!("head -c 32000 /dev/zero | tr '\\0' a; echo {i}");
        let fill = || concurrent(fill_n, 8, |i| post(&client, &url, program(i)).0 == 200);
        let (fill_wall, fill_errs) = fill();
        let rss_full = d.rss_kib();
        let (replay_wall, replay_errs) = fill();
        let rss_replayed = d.rss_kib();
        let budget_kib = (fill_n * (32_000 + 64 + 128)) / 1024;
        println!(
            "\n(d) RSS with {fill_n} cached answers of ~32 KiB (cache bytes ~{budget_kib} KiB):"
        );
        println!(
            "    at start {rss_start} KiB; after filling {rss_full} KiB ({:.1} s, errors {fill_errs});",
            fill_wall.as_secs_f64()
        );
        println!(
            "    after replaying all {rss_replayed} KiB ({:.1} s, errors {replay_errs})",
            replay_wall.as_secs_f64()
        );
        let growth = rss_replayed as f64 / rss_full as f64 - 1.0;
        let overhead = rss_full.saturating_sub(rss_start) as f64 / budget_kib as f64;
        println!(
            "    growth over the cached bytes x{overhead:.2}; replay growth {:+.1}%: {}",
            growth * 100.0,
            verdict(growth.abs() <= 0.05)
        );
    }
}

/// (s): `n` distinct programs over one /socket connection, each stamping its first write with
/// the wall clock (busybox `ts`, microseconds; the sandbox shares the host's clock); the lag is
/// the client's clock on receipt minus that stamp. Runs go back to back: the lag starts at the
/// program's first write, after any wait for a container.
fn socket_lags(d: &Daemon, n: usize, tag: &str) -> Vec<Duration> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("ws://{}/socket", d.addr);
    let mut lags = Vec::new();
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("websocket");
        for i in 0..n {
            let id = i.to_string();
            let program = format!("echo {tag} {i} {} | ts %.s", std::process::id());
            let run = serde_json::json!({"Id": id, "Kind": "run", "Body": program});
            ws.send(Message::text(run.to_string())).await.unwrap();
            let mut first = None;
            loop {
                let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await
                    .expect("a message in time")
                    .expect("connection open")
                    .unwrap();
                let Message::Text(t) = m else { continue };
                let received = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["Kind"].as_str().unwrap() {
                    "stdout" if first.is_none() => {
                        let stamp: f64 = v["Body"]
                            .as_str()
                            .unwrap()
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .parse()
                            .expect("a ts stamp");
                        first = Some(received.saturating_sub(Duration::from_secs_f64(stamp)));
                    }
                    "end" => {
                        assert_eq!(v["Body"], "", "{t}");
                        break;
                    }
                    _ => {}
                }
            }
            lags.push(first.expect("the program's output"));
        }
    });
    lags.sort();
    lags
}

/// (p): a distinct two-package txtar archive (go.mod and a package of its own).
fn go_txtar(i: usize) -> String {
    format!(
        "package main\n\nimport \"play.ground/greet\"\n\n// txtar {i} {}\nfunc main() {{\n\tgreet.Print()\n}}\n-- go.mod --\nmodule play.ground\n-- greet/greet.go --\npackage greet\n\nimport \"fmt\"\n\nfunc Print() {{\n\tfmt.Println(\"Hello, 世界\")\n}}\n",
        std::process::id()
    )
}

/// (p): the Go playground's form, as its page posts it.
fn post_form(
    client: &reqwest::blocking::Client,
    url: &str,
    program: &str,
    vet: bool,
) -> (u16, String) {
    let body = format!(
        "version=2&body={}&withVet={vet}",
        program
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' =>
                    (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    match client
        .post(url)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(body)
        .send()
    {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// (p): Go programs as on the playground, on bubblewrap, interleaved one of each per round so
/// that the machine's load drifts over all of them: hello world (fake time on) next to the bare
/// spawn of the image's run command with the same program (the reference), a two-package txtar
/// archive (the go command), and hello world with vet (the go command and vet).
fn go_playground(quick: bool, client: &reqwest::blocking::Client) {
    let n = if quick { 5 } else { 20 };
    let go_root =
        std::env::var("BENCH_GO_ROOTFS").unwrap_or_else(|_| "/var/lib/compilerd/rootfs/go".into());
    let b = Daemon::start(&[
        "--backend",
        "bwrap",
        "--rootfs",
        &go_root,
        "--command",
        "/usr/lib/compilerd/run",
        "--timeout",
        "10s",
    ]);
    let url = b.url();
    let greeted = |(status, body): (u16, String)| status == 200 && body.contains("Hello, 世界");
    let mut rows: Vec<(&str, Vec<Duration>, usize)> = vec![
        ("compilerd hello      ", Vec::new(), 0),
        ("bwrap + run cmd hello", Vec::new(), 0),
        ("compilerd txtar      ", Vec::new(), 0),
        ("compilerd hello + vet", Vec::new(), 0),
    ];
    for i in 0..n {
        let runs: [&dyn Fn() -> bool; 4] = [
            &|| greeted(post_form(client, &url, &go_hello("pg", i), false)),
            &|| {
                let (ok, out) = bwrap_direct(
                    &go_root,
                    &["/usr/lib/compilerd/run"],
                    &go_hello("pgdirect", i),
                );
                ok && out.contains("Hello")
            },
            &|| greeted(post_form(client, &url, &go_txtar(i), false)),
            &|| {
                let (status, body) = post_form(client, &url, &go_hello("pgvet", i), true);
                greeted((status, body.clone())) && body.contains("\"VetOK\":true")
            },
        ];
        for (row, run) in rows.iter_mut().zip(runs) {
            let t = Instant::now();
            if !run() {
                row.2 += 1;
            }
            row.1.push(t.elapsed());
        }
    }
    drop(b);
    println!("\n(p) Go as on the playground, bubblewrap, {n} rounds of distinct programs:");
    for (name, t, e) in &mut rows {
        t.sort();
        println!(
            "    {name}  p50 {:>7.1} ms  p90 {:>7.1} ms  errors {e}",
            ms(percentile(t, 0.5)),
            ms(percentile(t, 0.9))
        );
    }
}
