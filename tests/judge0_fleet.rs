//! The Judge0 queue on a real redis-server shared by several daemons: a token created on one
//! daemon is answered by another; a daemon in lameduck takes no submissions and another runs
//! them; a daemon (the real binary) that holds six running submissions is SIGKILLed and another
//! takes them over after the claim timeout and finishes all six with the right output.
//!
//! Needs redis-server and /var/lib/compilerd/rootfs/python; a missing one fails the test.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::TestDaemon;
use compilerd::config::{Backend, Config, LanguageSettings};
use redis_server::Redis;
use serde_json::{Value, json};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_compilerd");
const PYTHON_TABLE: &str = "rootfs = \"/var/lib/compilerd/rootfs/python\"\nmain-file = \"main.py\"\n\
                            run-command = \"/usr/bin/python3 -B main.py\"\ntimeout = \"10s\"\n";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fleet_config(redis: &Redis) -> Config {
    let mut c = common::config(Backend::Bwrap);
    c.pool_size = 1;
    c.language_tables = BTreeMap::from([(
        "python".to_owned(),
        toml::from_str::<LanguageSettings>(PYTHON_TABLE).unwrap(),
    )]);
    c.default_language = Some("python".to_owned());
    c.judge0.queue = Some(redis.settings());
    c.judge0.claim_after = Duration::from_secs(2);
    c
}

async fn submit(client: &reqwest::Client, base: &str, source: &str) -> String {
    let r = client
        .post(format!("{base}/judge0/submissions"))
        .json(&json!({"source_code": source, "language_id": 71}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn status(client: &reqwest::Client, base: &str, token: &str) -> Value {
    let r = client
        .get(format!(
            "{base}/judge0/submissions/{token}?fields=status,stdout,token"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Polls until `token` has a status `done` accepts; the server's states, not a guessed delay.
async fn until(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    limit: Duration,
    done: impl Fn(u64) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let v = status(client, base, token).await;
        if done(v["status"]["id"].as_u64().unwrap()) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verdicts(d: &TestDaemon) -> f64 {
    common::find_metric(
        &d.metrics.render(),
        "compilerd_judge0_verdicts_total{status=\"Accepted\"}",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn any_daemon_answers_for_any_token() {
    let _g = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let mut ca = fleet_config(&redis);
    ca.drain = Duration::from_secs(60);
    let a = TestDaemon::start(ca).await;
    let b = TestDaemon::start(fleet_config(&redis)).await;
    let client = reqwest::Client::new();
    let (base_a, base_b) = (a.url(""), b.url(""));
    let (base_a, base_b) = (base_a.trim_end_matches('/'), base_b.trim_end_matches('/'));
    let token = submit(&client, base_a, "print('from A')").await;
    let v = until(&client, base_b, &token, Duration::from_secs(30), |s| s > 2).await;
    assert_eq!(v["stdout"], "from A\n", "{v}");
    assert_eq!(v["status"]["id"], 3);
    // wait=true on B, read on A.
    let r: Value = client
        .post(format!("{base_b}/judge0/submissions?wait=true"))
        .json(&json!({"source_code": "print(6 * 7)", "language_id": 71}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let v = status(&client, base_a, r["token"].as_str().unwrap()).await;
    assert_eq!(v["stdout"], "42\n", "{v}");
    // A in lameduck (its drain is long): it still answers, but B runs what A accepts.
    a.stops.request();
    a.wait_metric("compilerd_lameduck", |v| v == 1.0).await;
    let a_before = verdicts(&a);
    let b_before = verdicts(&b);
    let tokens: Vec<String> = {
        let mut t = Vec::new();
        for i in 0..4 {
            t.push(submit(&client, base_a, &format!("print('late', {i})")).await);
        }
        t
    };
    for (i, t) in tokens.iter().enumerate() {
        let v = until(&client, base_a, t, Duration::from_secs(30), |s| s > 2).await;
        assert_eq!(v["stdout"], format!("late {i}\n"), "{v}");
    }
    assert_eq!(verdicts(&b) - b_before, 4.0);
    assert_eq!(
        verdicts(&a),
        a_before,
        "a daemon in lameduck claims nothing"
    );
    // The queue is drained: its length gauge says so.
    b.wait_metric("compilerd_judge0_queue_length", |n| n == 0.0)
        .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemons_submissions_finish_elsewhere() {
    let _g = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let (mut a, base_a, _dir) = spawn_daemon(
        &redis,
        "shutdown = false\ndrain = \"0s\"\nmax-concurrent-runs = 6",
    )
    .await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for i in 0..6 {
        let program = format!("import time\ntime.sleep(4)\nprint('slow', {i})");
        tokens.push(submit(&client, &base_a, &program).await);
    }
    // A holds all six: each is Processing.
    for t in &tokens {
        until(&client, &base_a, t, Duration::from_secs(30), |s| s == 2).await;
    }
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let b = TestDaemon::start(fleet_config(&redis)).await;
    let base_b = b.url("");
    let base_b = base_b.trim_end_matches('/');
    for (i, t) in tokens.iter().enumerate() {
        let v = until(&client, base_b, t, Duration::from_secs(60), |s| s > 2).await;
        assert_eq!(v["status"]["id"], 3, "{v}");
        assert_eq!(v["stdout"], format!("slow {i}\n"), "{v}");
    }
    assert_eq!(
        b.metric("compilerd_judge0_claims_taken_over_total"),
        6.0,
        "B took all six over"
    );
    // Nothing is left in the stream: every entry was acknowledged after its result.
    let len: usize = redis.cmd(redis::cmd("XLEN").arg("compilerd:judge0:{compilerd-judge0}:queue"));
    assert_eq!(len, 0);
    b.stop().await;
}

/// The real binary with `settings`, on the queue of `redis`, serving on a loopback port: the
/// child, its base URL and the directory of its config file (kept while it runs).
async fn spawn_daemon(
    redis: &Redis,
    settings: &str,
) -> (tokio::process::Child, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    let port = redis_server::free_port();
    std::fs::write(
        &file,
        format!(
            "address = \"127.0.0.1:{port}\"\nbackend = \"bwrap\"\n{settings}\n\
             pool-size = 0\nlog-format = \"text\"\n\
             judge0-queue = \"{}\"\njudge0-claim-after = \"2s\"\ndefault-language = \"python\"\n\
             [languages.python]\n{PYTHON_TABLE}",
            redis.url()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{base}/judge0/languages"))
        .send()
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, base, dir)
}

/// Under a stream of submissions one daemon (the real binary) halts itself at the random time its
/// lifetime gives it: it fails /healthz, stops claiming, finishes what it holds, runs its halt
/// command and exits. Every submission either daemon accepted is judged once, with its own output.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_halting_itself_under_load_loses_nothing() {
    let _g = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let (mut a, base_a, dir) = spawn_daemon(
        &redis,
        "shutdown = true\nlifetime = \"6s\"\ndrain = \"1s\"\nhalt-command = \"/bin/true\"",
    )
    .await;
    let b = TestDaemon::start(fleet_config(&redis)).await;
    let base_b = b.url("");
    let base_b = base_b.trim_end_matches('/').to_owned();
    let client = reqwest::Client::new();
    let program = |i: usize| format!("import time\ntime.sleep(0.1)\nprint('n', {i})");
    let mut tokens: Vec<String> = Vec::new();
    let (mut on_a, mut a_status) = (0, None);
    // Bounded by count: A halts within 6 s, long before 400 submissions at most 8 in flight.
    for i in 0..400 {
        if a_status.is_none() {
            a_status = a.try_wait().unwrap();
        }
        let created = if a_status.is_none() && i % 2 == 0 {
            client
                .post(format!("{base_a}/judge0/submissions"))
                .json(&json!({"source_code": program(i), "language_id": 71}))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 201)
        } else {
            None
        };
        let token = match created {
            Some(r) => {
                on_a += 1;
                r.json::<Value>().await.unwrap()["token"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
            // A refused or is gone: the load goes on through B.
            None => submit(&client, &base_b, &program(i)).await,
        };
        tokens.push(token);
        // At most 8 in flight: wait for the one submitted 8 earlier to be judged.
        if tokens.len() > 8 {
            until(
                &client,
                &base_b,
                &tokens[tokens.len() - 9],
                Duration::from_secs(60),
                |s| s > 2,
            )
            .await;
        }
        if a_status.is_some() && tokens.len() >= 20 {
            break;
        }
    }
    let exit = match a_status {
        Some(s) => s,
        None => tokio::time::timeout(Duration::from_secs(30), a.wait())
            .await
            .expect("A halts within its lifetime")
            .unwrap(),
    };
    assert!(
        exit.success(),
        "the halt command ran and A exited 0: {exit:?}"
    );
    assert!(on_a > 0, "A took submissions before it halted");
    drop(dir);
    let mut judged = 0;
    for (i, t) in tokens.iter().enumerate() {
        let v = until(&client, &base_b, t, Duration::from_secs(60), |s| s > 2).await;
        assert_eq!(v["status"]["id"], 3, "{v}");
        assert_eq!(v["stdout"], format!("n {i}\n"), "{v}");
        judged += 1;
    }
    assert_eq!(judged, tokens.len(), "every accepted submission judged");
    eprintln!("{judged} submissions judged, {on_a} of them accepted by the daemon that halted");
    b.wait_metric("compilerd_judge0_queue_length", |n| n == 0.0)
        .await;
    b.stop().await;
}

/// Under a stream of submissions one daemon stops (lameduck, then its drain): every submission
/// is judged once, with its own output; none is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_stopping_under_load_loses_nothing() {
    let _g = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let a = TestDaemon::start(fleet_config(&redis)).await;
    let b = TestDaemon::start(fleet_config(&redis)).await;
    let client = reqwest::Client::new();
    let (base_a, base_b) = (a.url(""), b.url(""));
    let (base_a, base_b) = (base_a.trim_end_matches('/'), base_b.trim_end_matches('/'));
    const N: usize = 30;
    let mut tokens = Vec::new();
    for i in 0..N / 2 {
        let base = if i % 2 == 0 { base_a } else { base_b };
        let program = format!("import time\ntime.sleep(0.2)\nprint('n', {i})");
        tokens.push(submit(&client, base, &program).await);
    }
    // A stops while it holds submissions; B keeps taking new ones.
    let stopping = tokio::spawn(a.stop());
    for i in N / 2..N {
        let program = format!("import time\ntime.sleep(0.2)\nprint('n', {i})");
        tokens.push(submit(&client, base_b, &program).await);
    }
    stopping.await.unwrap();
    let mut judged = 0;
    for (i, t) in tokens.iter().enumerate() {
        let v = until(&client, base_b, t, Duration::from_secs(60), |s| s > 2).await;
        assert_eq!(v["status"]["id"], 3, "{v}");
        assert_eq!(v["stdout"], format!("n {i}\n"), "{v}");
        judged += 1;
    }
    assert_eq!(judged, N);
    b.wait_metric("compilerd_judge0_queue_length", |n| n == 0.0)
        .await;
    b.stop().await;
}

/// On Redis the queue counts what waits and what runs; past `judge0-max-queue`, 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_redis_queue_answers_503() {
    let _g = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    let mut c = fleet_config(&redis);
    c.judge0.max_queue = 2;
    c.max_concurrent_runs = 1;
    let d = TestDaemon::start(c).await;
    let client = reqwest::Client::new();
    let base = d.url("");
    let base = base.trim_end_matches('/');
    let first = submit(&client, base, "import time\ntime.sleep(2)").await;
    until(&client, base, &first, Duration::from_secs(30), |s| s == 2).await;
    let second = submit(&client, base, "print('second')").await;
    let r = client
        .post(format!("{base}/judge0/submissions"))
        .json(&json!({"source_code": "print(3)", "language_id": 71}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "queue is full"})
    );
    let v = until(&client, base, &second, Duration::from_secs(30), |s| s > 2).await;
    assert_eq!(v["stdout"], "second\n");
    d.stop().await;
}

/// Redis restarts with its data (an RDB snapshot) while a submission runs and three wait: the
/// stream, its consumer group and the records come back, and all four are judged.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_survives_a_redis_restart_with_persistence() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut redis = Redis::start();
    let mut c = fleet_config(&redis);
    c.max_concurrent_runs = 1;
    let d = TestDaemon::start(c).await;
    let client = reqwest::Client::new();
    let base = d.url("");
    let base = base.trim_end_matches('/');
    let mut tokens = Vec::new();
    tokens.push(submit(&client, base, "import time\ntime.sleep(2)\nprint('first')").await);
    until(&client, base, &tokens[0], Duration::from_secs(30), |s| {
        s == 2
    })
    .await;
    for i in 0..3 {
        tokens.push(submit(&client, base, &format!("print('waiting', {i})")).await);
    }
    let _: () = redis.cmd(&mut redis::cmd("SAVE"));
    redis.stop();
    redis.restart();
    let want = ["first\n", "waiting 0\n", "waiting 1\n", "waiting 2\n"];
    for (t, want) in tokens.iter().zip(want) {
        let v = until(&client, base, t, Duration::from_secs(60), |s| s > 2).await;
        assert_eq!(
            (&v["status"]["id"], &v["stdout"]),
            (&json!(3), &json!(want)),
            "{v}"
        );
    }
    d.stop().await;
}

/// Three redis-server nodes made into a Cluster (no replicas), on ports of their own; stopped
/// when dropped.
struct Cluster {
    ports: Vec<u16>,
    children: Vec<std::process::Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| redis_server::free_port()).collect();
        let children = ports
            .iter()
            .map(|p| {
                let node_dir = dir.path().join(p.to_string());
                std::fs::create_dir(&node_dir).unwrap();
                std::process::Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server runs")
            })
            .collect();
        let c = Cluster {
            ports,
            children,
            _dir: dir,
        };
        for p in &c.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{p}")).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while client.get_connection().is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {p} did not start"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let nodes: Vec<String> = c.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node agrees the cluster is up before a client uses it.
        for p in &c.ports {
            let mut conn = redis::Client::open(format!("redis://127.0.0.1:{p}"))
                .unwrap()
                .get_connection()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        c
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis-cluster://{}", nodes.join(","))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The queue on a Redis Cluster: a token created on one daemon is judged and answered by another.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_redis_cluster() {
    let _g = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    let redis = Redis::start();
    let settings = redis_server::settings(&cluster.url());
    let config = || {
        let mut c = fleet_config(&redis);
        c.judge0.queue = Some(settings.clone());
        c
    };
    let a = TestDaemon::start(config()).await;
    let b = TestDaemon::start(config()).await;
    let client = reqwest::Client::new();
    let (base_a, base_b) = (a.url(""), b.url(""));
    let (base_a, base_b) = (base_a.trim_end_matches('/'), base_b.trim_end_matches('/'));
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(submit(&client, base_a, &format!("print('cluster', {i})")).await);
    }
    for (i, t) in tokens.iter().enumerate() {
        let v = until(&client, base_b, t, Duration::from_secs(30), |s| s > 2).await;
        assert_eq!(v["stdout"], format!("cluster {i}\n"), "{v}");
    }
    a.stop().await;
    b.stop().await;
}

/// A submission whose daemons kept stopping while it ran (three takeovers already) is answered
/// as an internal error when taken over once more, not run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_submission_taken_over_too_often_is_given_up() {
    let _g = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start();
    // A daemon in lameduck stores and queues, and claims nothing.
    let mut ca = fleet_config(&redis);
    ca.drain = Duration::from_secs(60);
    let a = TestDaemon::start(ca).await;
    a.stops.request();
    a.wait_metric("compilerd_lameduck", |v| v == 1.0).await;
    let client = reqwest::Client::new();
    let base_a = a.url("");
    let base_a = base_a.trim_end_matches('/');
    let token = submit(&client, base_a, "print('never')").await;
    // A consumer that claims the entry and dies; the record says three daemons did so before.
    let stream = "compilerd:judge0:{compilerd-judge0}:queue";
    // The group, unless a daemon made it already (BUSYGROUP).
    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg(&["CREATE", stream, "compilerd", "0", "MKSTREAM"][..])
        .query(&mut redis.client().get_connection().unwrap());
    let _: redis::Value = redis.cmd(redis::cmd("XREADGROUP").arg(
        &[
            "GROUP",
            "compilerd",
            "ghost",
            "COUNT",
            "1",
            "STREAMS",
            stream,
            ">",
        ][..],
    ));
    let key = format!("compilerd:judge0:{{compilerd-judge0}}:submission:{token}");
    let raw: String = redis.cmd(redis::cmd("GET").arg(&key));
    let mut rec: Value = serde_json::from_str(&raw).unwrap();
    rec["takeovers"] = json!(3);
    let _: () = redis.cmd(redis::cmd("SET").arg(&key).arg(rec.to_string()));
    let b = TestDaemon::start(fleet_config(&redis)).await;
    let base_b = b.url("");
    let v = until(
        &client,
        base_b.trim_end_matches('/'),
        &token,
        Duration::from_secs(30),
        |s| s > 2,
    )
    .await;
    assert_eq!(v["status"]["id"], 13, "{v}");
    assert_eq!(v["stdout"], Value::Null);
    let (s, m) = {
        let r = client
            .get(format!(
                "{base_b}/judge0/submissions/{token}?fields=message"
            ))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(
        m["message"],
        "the daemons that ran this submission stopped 4 times"
    );
    a.stop().await;
    b.stop().await;
}
