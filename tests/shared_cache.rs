//! The shared cache tier against a real redis-server: two daemons share answers; what is not
//! cacheable is never shared; Redis answering garbage, slow, full, down at start or restarted
//! never fails or stalls a request. Daemons run in this process on the bubblewrap backend.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::{TestDaemon, config};
use compilerd::config::Backend;
use redis_server::Redis;

async fn daemon(shared: &str) -> TestDaemon {
    daemon_with_budget(shared, Duration::from_millis(20)).await
}

async fn daemon_with_budget(shared: &str, budget: Duration) -> TestDaemon {
    let mut c = config(Backend::Bwrap);
    let mut settings = redis_server::settings(shared);
    settings.budget = budget;
    c.shared_cache = Some(settings);
    TestDaemon::start(c).await
}

async fn shared_up(d: &TestDaemon) {
    d.wait_metric("compilerd_shared_cache_up", |v| v == 1.0)
        .await;
}

fn unique(tag: &str) -> String {
    format!(
        "echo {tag}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn shared_keys(r: &Redis) -> Vec<String> {
    let pattern = format!("compilerd:v{}:*", compilerd::cache::value::FORMAT);
    r.cmd(redis::cmd("KEYS").arg(pattern))
}

#[tokio::test]
async fn an_answer_run_on_one_daemon_is_a_shared_hit_on_another() {
    let redis = Redis::start();
    let a = daemon(&redis.url()).await;
    let b = daemon(&redis.url()).await;
    shared_up(&a).await;
    shared_up(&b).await;
    let program = unique("shared");
    let first = a.compile(program.clone()).await;
    assert_eq!((first.status, first.header("x-cache")), (200, Some("MISS")));
    a.wait_metric("compilerd_shared_cache_writes_total", |v| v == 1.0)
        .await;
    let second = b.compile(program.clone()).await;
    assert_eq!(second.header("x-cache"), Some("SHARED-HIT"));
    assert_eq!(second.text, first.text, "the same bytes");
    let third = b.compile(program).await;
    assert_eq!(
        third.header("x-cache"),
        Some("HIT"),
        "the shared hit filled B's local cache"
    );
    assert_eq!(b.metric("compilerd_shared_cache_hits_total"), 1.0);
    assert_eq!(
        b.metric("compilerd_runs_total{language=\"default\",outcome=\"ok\"}"),
        0.0
    );
    let keys = shared_keys(&redis);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis.cmd(redis::cmd("TTL").arg(&keys[0]));
    assert!(ttl > 3500 && ttl <= 3600, "the configured TTL, got {ttl}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn timeouts_are_never_shared() {
    let redis = Redis::start();
    let a = daemon(&redis.url()).await;
    shared_up(&a).await;
    let killed = a.compile("sleep 10").await;
    assert!(killed.output().contains("Time exceeded"), "{}", killed.text);
    let ok = a.compile(unique("after-timeout")).await;
    assert_eq!(ok.status, 200);
    a.wait_metric("compilerd_shared_cache_writes_total", |v| v == 1.0)
        .await;
    assert_eq!(shared_keys(&redis).len(), 1, "only the finished run");
    a.stop().await;
}

#[tokio::test]
async fn garbage_in_redis_is_ignored_counted_and_replaced() {
    let redis = Redis::start();
    let a = daemon(&redis.url()).await;
    // A budget that lets B read a large value whole: this is about validation, not time.
    let b = daemon_with_budget(&redis.url(), Duration::from_secs(5)).await;
    shared_up(&a).await;
    shared_up(&b).await;
    let program = unique("garbage");
    let good = a.compile(program.clone()).await;
    a.wait_metric("compilerd_shared_cache_writes_total", |v| v == 1.0)
        .await;
    let key = shared_keys(&redis).pop().unwrap();
    let _: () = redis.cmd(redis::cmd("SET").arg(&key).arg("{\"Errors\":\"forged\"}"));
    let reply = b.compile(program.clone()).await;
    assert_eq!(
        reply.header("x-cache"),
        Some("MISS"),
        "the forged value is not served"
    );
    assert_eq!(reply.text, good.text);
    assert_eq!(
        b.metric("compilerd_shared_cache_errors_total{kind=\"invalid\",op=\"get\"}"),
        1.0
    );
    b.wait_metric("compilerd_shared_cache_writes_total", |v| v == 1.0)
        .await;
    // A value far over the size limit is refused without being read whole.
    let other = unique("huge");
    a.compile(other.clone()).await;
    a.wait_metric("compilerd_shared_cache_writes_total", |v| v == 2.0)
        .await;
    let keys = shared_keys(&redis);
    let huge_key = keys.iter().find(|k| **k != key).unwrap();
    let _: () = redis.cmd(redis::cmd("SET").arg(huge_key).arg(vec![b'{'; 64 << 20]));
    let reply = b.compile(other).await;
    assert_eq!((reply.status, reply.header("x-cache")), (200, Some("MISS")));
    assert_eq!(
        b.metric("compilerd_shared_cache_errors_total{kind=\"invalid\",op=\"get\"}"),
        2.0
    );
    let c = daemon(&redis.url()).await;
    shared_up(&c).await;
    assert_eq!(
        c.compile(program).await.header("x-cache"),
        Some("SHARED-HIT"),
        "B's run replaced the forged value"
    );
    for d in [a, b, c] {
        d.stop().await;
    }
}

#[tokio::test]
async fn a_slow_redis_costs_a_lookup_its_budget_and_no_more() {
    let redis = Redis::start();
    let a = daemon(&redis.url()).await;
    shared_up(&a).await;
    // Redis holds every client's commands for three seconds (it answers this one at once).
    let _: () = redis.cmd(redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("ALL"));
    let started = Instant::now();
    let reply = a.compile(unique("slow")).await;
    let took = started.elapsed();
    assert_eq!((reply.status, reply.header("x-cache")), (200, Some("MISS")));
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    assert_eq!(
        a.metric("compilerd_shared_cache_errors_total{kind=\"timeout\",op=\"get\"}"),
        1.0
    );
    let _: () = redis.cmd(redis::cmd("CLIENT").arg("UNPAUSE"));
    a.stop().await;
}

#[tokio::test]
async fn a_full_redis_is_counted_and_requests_are_answered() {
    let redis = Redis::start();
    let a = daemon(&redis.url()).await;
    shared_up(&a).await;
    let _: () = redis.cmd(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1"));
    let _: () = redis.cmd(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction"),
    );
    let reply = a.compile(unique("full")).await;
    assert_eq!(reply.status, 200);
    a.wait_metric(
        "compilerd_shared_cache_errors_total{kind=\"error\",op=\"set\"}",
        |v| v == 1.0,
    )
    .await;
    let _: () = redis.cmd(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"));
    assert_eq!(a.compile(unique("room-again")).await.status, 200);
    a.wait_metric("compilerd_shared_cache_writes_total", |v| v == 1.0)
        .await;
    a.stop().await;
}

#[tokio::test]
async fn redis_down_at_start_and_restarted_later() {
    let port = redis_server::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = daemon(&url).await;
    let b = daemon(&url).await;
    for i in 0..20 {
        let r = a.compile(format!("echo nobody-home-{i}")).await;
        assert_eq!((r.status, r.header("x-cache")), (200, Some("MISS")));
    }
    assert_eq!(a.metric("compilerd_shared_cache_up"), 0.0);
    let mut redis = Redis::start_on(port);
    shared_up(&a).await;
    shared_up(&b).await;
    // Writes sent before the outage was noticed may still land late: count from here, and let a
    // few programs go by before calling sharing broken.
    assert!(shares_again(&a, &b, "late").await, "sharing did not start");

    redis.stop();
    for i in 0..20 {
        let r = a.compile(format!("echo gone-{i}")).await;
        assert_eq!(r.status, 200);
    }
    a.wait_metric("compilerd_shared_cache_up", |v| v == 0.0)
        .await;
    redis.restart();
    shared_up(&a).await;
    // B was idle through the outage: its first lookup may find its old connection closed and
    // miss while it reconnects; sharing must be back within a few programs.
    assert!(shares_again(&a, &b, "back").await, "sharing did not resume");
    a.stop().await;
    b.stop().await;
}

/// Whether, within ten distinct programs, one run on `a` (once `a` has written at least one more
/// answer) is a shared hit on `b`.
async fn shares_again(a: &TestDaemon, b: &TestDaemon, tag: &str) -> bool {
    let writes = "compilerd_shared_cache_writes_total";
    for i in 0..10 {
        let program = unique(&format!("{tag}-{i}"));
        let before = a.metric(writes);
        a.compile(program.clone()).await;
        a.wait_metric(writes, |v| v > before).await;
        if b.compile(program).await.header("x-cache") == Some("SHARED-HIT") {
            return true;
        }
    }
    false
}

/// Two daemons share through `settings`; the second gets the first's answer.
async fn shares_through(settings: compilerd::cache::SharedSettings) {
    let start = || {
        let mut c = config(Backend::Bwrap);
        c.shared_cache = Some(settings.clone());
        TestDaemon::start(c)
    };
    let a = start().await;
    let b = start().await;
    shared_up(&a).await;
    shared_up(&b).await;
    let program = unique("through");
    assert_eq!(
        a.compile(program.clone()).await.header("x-cache"),
        Some("MISS")
    );
    a.wait_metric("compilerd_shared_cache_writes_total", |v| v == 1.0)
        .await;
    assert_eq!(
        b.compile(program).await.header("x-cache"),
        Some("SHARED-HIT")
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let (redis, ca) = Redis::start_tls();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let mut settings = redis_server::settings(&url);
    settings.ca = Some(std::fs::read(&ca).unwrap());
    shares_through(settings).await;
    // Without the CA the server's certificate is refused: the tier never comes up, and requests
    // are answered all the same.
    let mut c = config(Backend::Bwrap);
    c.shared_cache = Some(redis_server::settings(&url));
    let d = TestDaemon::start(c).await;
    assert_eq!(d.compile(unique("untrusted")).await.status, 200);
    d.wait_metric("compilerd_shared_cache_skipped_total{op=\"get\"}", |v| {
        v == 1.0
    })
    .await;
    assert_eq!(d.metric("compilerd_shared_cache_up"), 0.0);
    d.stop().await;
}

#[tokio::test]
async fn a_password_from_the_auth_file() {
    let redis = Redis::start_with_password("s3cret-pw");
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    std::fs::write(&auth, "s3cret-pw\n").unwrap();
    let file = format!(
        "shared-cache = \"redis://127.0.0.1:{}\"\nshared-cache-auth-file = \"{}\"",
        redis.port,
        auth.display()
    );
    let settings: compilerd::config::Settings = toml::from_str(&file).unwrap();
    let config = compilerd::config::Config::from_settings(settings).unwrap();
    shares_through(config.shared_cache.unwrap()).await;
}
