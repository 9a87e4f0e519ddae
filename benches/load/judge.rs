//! (j) Judge0, on bubblewrap: a batch of test cases of one C program (one compile, a run per case)
//! next to a single `/compile` run of the same program; then submissions per second through the
//! Redis queue shared by two daemons, next to `wait=true` on one daemon.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::runs::{c_hello, config_file};
use super::{Daemon, concurrent, ms, percentile};

/// Reads a number and prints its double: each case has its own input and expected output.
fn c_double(i: usize) -> String {
    format!(
        "#include <stdio.h>\nint main(void) {{ long n; if (scanf(\"%ld\", &n) != 1) return 1; \
         printf(\"%ld\\n\", 2 * n); return 0; }} /* {i} {} */\n",
        std::process::id()
    )
}

fn py_hello(tag: &str, i: usize) -> String {
    format!("print('hello {tag} {i} {}')\n", std::process::id())
}

/// Polls the batch until no submission is queued or running; whether all were accepted.
fn await_batch(client: &reqwest::blocking::Client, base: &str, tokens: &[String]) -> bool {
    let url = format!(
        "{base}/submissions/batch?tokens={}&fields=status_id",
        tokens.join(",")
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let v: Value = match client.get(&url).send().and_then(|r| r.json()) {
            Ok(v) => v,
            Err(_) => return false,
        };
        let ids: Vec<u64> = v["submissions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s["status_id"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() == tokens.len() && ids.iter().all(|&s| s >= 3) {
            return ids.iter().all(|&s| s == 3);
        }
        // A client's poll: the API has no push but the callback, which needs a listener.
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

fn create_batch(
    client: &reqwest::blocking::Client,
    base: &str,
    submissions: Vec<Value>,
) -> Option<Vec<String>> {
    let r = client
        .post(format!("{base}/submissions/batch"))
        .json(&json!({ "submissions": submissions }))
        .send()
        .ok()?;
    if r.status() != 201 && r.status() != 200 {
        return None;
    }
    let v: Value = r.json().ok()?;
    v.as_array()?
        .iter()
        .map(|t| t["token"].as_str().map(str::to_owned))
        .collect()
}

fn wait_true(client: &reqwest::blocking::Client, base: &str, submission: &Value) -> bool {
    client
        .post(format!("{base}/submissions?base64_encoded=false&wait=true"))
        .json(submission)
        .send()
        .ok()
        .filter(|r| r.status().is_success())
        .and_then(|r| r.json::<Value>().ok())
        .is_some_and(|v| v["status"]["id"].as_u64() == Some(3))
}

pub fn phase(quick: bool, client: &reqwest::blocking::Client) {
    let rounds = if quick { 2 } else { 7 };
    let cases = 20;
    let config = config_file("backend = \"bwrap\"\ndefault-language = \"c\"");
    let d = Daemon::start(&["--config", config.path().to_str().unwrap()]);
    let base = format!("http://{}/judge0", d.addr);
    let compile = format!("http://{}/compile?lang=c", d.addr);
    let (mut batches, mut singles, mut errors) = (Vec::new(), Vec::new(), 0);
    for r in 0..rounds {
        let source = c_double(r);
        let submissions = (0..cases)
            .map(|i| {
                json!({
                    "source_code": source,
                    "language_id": 50,
                    "stdin": format!("{i}\n"),
                    "expected_output": format!("{}\n", 2 * i),
                })
            })
            .collect();
        let t = Instant::now();
        match create_batch(client, &base, submissions) {
            Some(tokens) if await_batch(client, &base, &tokens) => {}
            _ => errors += 1,
        }
        batches.push(t.elapsed());
        let t = Instant::now();
        let hello = c_hello("judge-single", r);
        if !client
            .post(&compile)
            .body(hello)
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            errors += 1;
        }
        singles.push(t.elapsed());
    }
    drop(d);
    batches.sort();
    singles.sort();
    let (batch, single) = (percentile(&batches, 0.5), percentile(&singles, 0.5));
    let per_case = batch / cases as u32;
    println!(
        "\n(j) Judge0, bubblewrap: a batch of {cases} test cases of one C program, {rounds} rounds:"
    );
    println!(
        "    batch end to end  p50 {:>7.1} ms  per case {:.1} ms  errors {errors}",
        ms(batch),
        ms(per_case)
    );
    println!(
        "    /compile, one C program compiled and run  p50 {:>7.1} ms",
        ms(single)
    );
    let share = per_case.as_secs_f64() / single.as_secs_f64();
    println!(
        "    per case {:.0}% of a single compile + run (target at most 33%): {}",
        share * 100.0,
        super::verdict(errors == 0 && share <= 1.0 / 3.0)
    );
    queue_throughput(quick, client);
}

/// A redis-server of the bench's own on a free loopback port, stopped when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        // Up when it answers PING.
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Redis {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same submissions (distinct Python programs, so that no cache answers them) through the
/// Redis queue of two daemons, created half on each and awaited by polling, next to `wait=true`
/// on one daemon with its in-process queue; both 8 clients at a time.
fn queue_throughput(quick: bool, client: &reqwest::blocking::Client) {
    let n = if quick { 16 } else { 60 };
    let submission = |tag: &str, i: usize| json!({ "source_code": py_hello(tag, i), "language_id": 71, "stdin": "" });
    let one = config_file("backend = \"bwrap\"\ndefault-language = \"python\"");
    let d = Daemon::start(&["--config", one.path().to_str().unwrap()]);
    let base = format!("http://{}/judge0", d.addr);
    let (wall_wait, err_wait) = concurrent(n, 8, |i| wait_true(client, &base, &submission("w", i)));
    drop(d);

    let redis = Redis::start();
    let fleet = config_file(&format!(
        "backend = \"bwrap\"\ndefault-language = \"python\"\njudge0-queue = \"redis://127.0.0.1:{}\"",
        redis.port
    ));
    let a = Daemon::start(&["--config", fleet.path().to_str().unwrap()]);
    let b = Daemon::start(&["--config", fleet.path().to_str().unwrap()]);
    let bases = [
        format!("http://{}/judge0", a.addr),
        format!("http://{}/judge0", b.addr),
    ];
    let (wall_queue, err_queue) = concurrent(n, 8, |i| {
        let base = &bases[i % 2];
        create_batch(client, base, vec![submission("q", i)])
            .is_some_and(|tokens| await_batch(client, base, &tokens))
    });
    drop((a, b));
    let rate = |wall: Duration| n as f64 / wall.as_secs_f64();
    println!("    {n} Python submissions, 8 clients at a time:");
    println!(
        "    wait=true, one daemon           {:>6.1} submissions/s  errors {err_wait}",
        rate(wall_wait)
    );
    println!(
        "    Redis queue, two daemons, polled {:>6.1} submissions/s  errors {err_queue}",
        rate(wall_queue)
    );
}
