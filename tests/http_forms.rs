//! The Go playground's request forms on /compile and the answers its frontend renders, through the
//! real daemon: each form and outcome on Docker and on bubblewrap, then origin enforcement, then
//! fast variants over the scripted sandbox where a real backend adds nothing (and where "nothing
//! ran" can be counted directly).
//!
//! The form requests are what the frontend's jQuery sends (`version=2&body=…&withVet=false`,
//! `encodeURIComponent` with spaces as `+`, its content type and Accept header); the JSON requests
//! are what the go.dev proxy re-posts.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Reply, TestDaemon, config};
use compilerd::config::{AllowOrigin, Backend, Config};
use compilerd::metrics::Metrics;
use compilerd::sandbox::scripted::ScriptedSandbox;
use serde_json::Value;

const FORM_TYPE: &str = "application/x-www-form-urlencoded; charset=UTF-8";
const JQUERY_ACCEPT: &str = "application/json, text/javascript, */*; q=0.01";

/// `encodeURIComponent`, then `%20` as `+`: jQuery's `$.param`.
fn jquery_encode(s: &str) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => out.push(b as char),
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn form_body(program: &str) -> String {
    format!("version=2&body={}&withVet=false", jquery_encode(program))
}

async fn send(
    d: &TestDaemon,
    content_type: Option<&str>,
    origin: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut r = d.client.post(d.url("/compile")).body(body);
    if let Some(t) = content_type {
        r = r.header("Content-Type", t);
    }
    if let Some(o) = origin {
        r = r.header("Origin", o);
    }
    Reply::read(r.header("Accept", JQUERY_ACCEPT).send().await.unwrap()).await
}

async fn form(d: &TestDaemon, program: &str) -> Reply {
    send(d, Some(FORM_TYPE), None, form_body(program)).await
}

async fn json(d: &TestDaemon, program: &str) -> Reply {
    let body = serde_json::json!({"Body": program, "WithVet": false}).to_string();
    send(d, Some("application/json"), None, body).await
}

/// (Message, Kind, Delay in ns) of each event.
fn events(r: &Reply) -> Vec<(String, String, u64)> {
    r.json["Events"]
        .as_array()
        .unwrap_or_else(|| panic!("no Events: {}", r.text))
        .iter()
        .map(|e| {
            (
                e["Message"].as_str().unwrap().to_owned(),
                e["Kind"].as_str().unwrap().to_owned(),
                e["Delay"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn runs(d: &TestDaemon) -> f64 {
    [
        "ok",
        "exit_nonzero",
        "timeout",
        "output_too_large",
        "oom",
        "sandbox_error",
    ]
    .iter()
    .map(|o| {
        d.metric(&format!(
            "compilerd_runs_total{{language=\"default\",outcome=\"{o}\"}}"
        ))
    })
    .sum()
}

const MS: u64 = 1_000_000;

/// Form, then JSON, then raw: one run, each its own answer; the playground answers carry the
/// real pauses between writes, and the cached answer replays with the same ones.
async fn each_form_runs_once(backend: Backend) {
    let mut c = config(backend);
    c.limits.timeout = Duration::from_secs(5);
    let d = TestDaemon::start(c).await;
    let program = "echo 'hello, 世界 & 100%'; sleep 0.3; echo oops >&2; exit 3";
    let r = form(&d, program).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!((r.errors(), &r.json["Status"]), ("", &Value::from(3)));
    let ev = events(&r);
    assert_eq!(ev.len(), 2, "{}", r.text);
    assert_eq!(
        (ev[0].0.as_str(), ev[0].1.as_str()),
        ("hello, 世界 & 100%\n", "stdout")
    );
    assert_eq!((ev[1].0.as_str(), ev[1].1.as_str()), ("oops\n", "stderr"));
    // Nanoseconds: the first since the hand-over, the second the pause of `sleep 0.3`. Events are
    // stamped as the daemon receives them, so a first write that arrives a little late (Docker's
    // attach stream) shortens the measured pause by as much: 298 ms was seen once in CI.
    assert!(
        ev[0].2 > 0 && ev[0].2 < 5000 * MS,
        "first delay {}",
        ev[0].2
    );
    assert!(
        ev[1].2 >= 250 * MS && ev[1].2 < 5000 * MS,
        "the pause of `sleep 0.3`: {}",
        ev[1].2
    );

    let j = json(&d, program).await;
    assert_eq!(j.header("x-cache"), Some("HIT"));
    assert_eq!(j.text, r.text, "JSON and form requests get the same answer");

    let raw = d.compile(program).await;
    assert_eq!(raw.header("x-cache"), Some("HIT"));
    assert_eq!(
        raw.text,
        r#"{"Errors":"","Events":[{"Message":"hello, 世界 & 100%\n","Kind":"stdout","Delay":0},{"Message":"oops\n","Kind":"stderr","Delay":0}],"Status":3}"#
    );
    assert_eq!(runs(&d), 1.0);
    d.stop().await;
}

async fn deadline(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let started = Instant::now();
    let r = form(&d, "echo before; sleep 30").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.errors(), "process took too long");
    assert_eq!(r.json["Status"], 0);
    let ev = events(&r);
    assert_eq!(ev.len(), 1, "{}", r.text);
    assert_eq!((ev[0].0.as_str(), ev[0].1.as_str()), ("before\n", "stdout"));
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    // Never cached, and the JSON form says the same.
    let j = json(&d, "echo before; sleep 30").await;
    assert_eq!((j.status, j.header("x-cache")), (200, Some("MISS")));
    assert_eq!(j.errors(), "process took too long");
    assert_eq!(d.metric("compilerd_run_timeouts_total"), 2.0);
    d.stop().await;
}

async fn output_flood(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let r = form(&d, "echo first; yes").await;
    assert_eq!(r.status, 200, "{}", &r.text[..300.min(r.text.len())]);
    assert_eq!(r.errors(), "");
    assert_eq!(r.json["Status"], 0);
    let ev = events(&r);
    let (notice, output) = ev.split_last().unwrap();
    assert_eq!(
        (notice.0.as_str(), notice.1.as_str()),
        ("Program output too large.", "system")
    );
    let shown: String = output.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(shown.len(), 65536, "the output up to the cap");
    assert!(shown.starts_with("first\ny\ny\n"));
    // Cached: the raw form gets the seed's answer from the same run.
    let raw = d.compile("echo first; yes").await;
    assert_eq!((raw.status, raw.header("x-cache")), (400, Some("HIT")));
    assert_eq!(
        raw.text,
        r#"{"Errors":"Program output too large.","Events":null}"#
    );
    assert_eq!(d.metric("compilerd_output_too_large_total"), 1.0);
    d.stop().await;
}

async fn memory_kill(backend: Backend) {
    // Room to reach the memory limit on a loaded machine (as in http_contract's memory_hog).
    let mut c = config(backend);
    c.limits.timeout = Duration::from_secs(6);
    let d = TestDaemon::start(c).await;
    let r = json(&d, "echo start; a=xxxxxxxx; while :; do a=\"$a$a\"; done").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.errors(), &r.json["Status"]), ("", &Value::from(0)));
    let ev = events(&r);
    assert_eq!(ev[0].0, "start\n");
    let last = ev.last().unwrap();
    assert_eq!(last.1, "system");
    assert!(
        last.0
            .starts_with("Out of memory: the program used more than its 64 MiB")
    );
    d.stop().await;
}

async fn program_size_limit(backend: Backend) {
    let mut c = config(backend);
    c.max_program_bytes = 1000;
    let d = TestDaemon::start(c).await;
    // The limit is on the decoded program: 1000 bytes that encode to almost 3000 still run.
    let fits = format!("echo fits\n#{}", "é".repeat((1000 - 11) / 2));
    let fits = format!("{fits}{}", "#".repeat(1000 - fits.len()));
    assert_eq!(fits.len(), 1000);
    assert!(form_body(&fits).len() > 2900);
    let r = form(&d, &fits).await;
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "fits\n"),
        "{}",
        r.text
    );
    let r = json(&d, &fits).await;
    assert_eq!((r.status, r.header("x-cache")), (200, Some("HIT")));

    let over = format!("{fits}#");
    for r in [form(&d, &over).await, json(&d, &over).await] {
        assert_eq!(
            (r.status, r.text.as_str()),
            (
                200,
                r#"{"Errors":"Program too large.","Events":null,"Status":0}"#
            )
        );
    }
    // Past the read bound (3x the limit and some), the form is still recognised from its start.
    let huge = "é".repeat(2000);
    let r = form(&d, &huge).await;
    assert_eq!((r.status, r.errors()), (200, "Program too large."));
    // And the raw form keeps the seed's answer, whatever the content type says.
    let r = send(&d, Some(FORM_TYPE), None, "#".repeat(1001)).await;
    assert_eq!(
        (r.status, r.text.as_str()),
        (400, r#"{"Errors":"Program too large.","Events":null}"#)
    );
    assert_eq!(d.metric("compilerd_program_too_large_total"), 4.0);
    assert_eq!(runs(&d), 1.0);
    d.stop().await;
}

async fn malformed(backend: Backend) {
    let d = TestDaemon::start(config(backend)).await;
    let cases: [(&str, &str, &str); 5] = [
        (
            FORM_TYPE,
            "version=2&body=echo+hi%2",
            "invalid percent-escape",
        ),
        (
            FORM_TYPE,
            "version=2&body=&withVet=false",
            "body field is empty",
        ),
        ("application/json", "echo hi", "Malformed JSON request: "),
        (
            "application/json",
            r#"{"Body": ["echo hi"]}"#,
            "Body must be a string",
        ),
        (
            "application/json",
            r#"{"Program": "echo hi"}"#,
            "no Body field",
        ),
    ];
    for (content_type, body, says) in cases {
        let r = send(&d, Some(content_type), None, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.errors().contains(says), "{body}: {}", r.text);
        assert_eq!(r.json["Events"], Value::Null);
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    }
    assert_eq!(runs(&d), 0.0, "nothing malformed ran");
    assert_eq!(d.metric("compilerd_cache_misses_total"), 0.0);
    // A raw program sent form-encoded without a body field is the seed's raw request.
    let r = send(&d, Some(FORM_TYPE), None, "echo 100% raw").await;
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "100% raw\n"),
        "{}",
        r.text
    );
    assert_eq!(r.json["Events"][0]["Delay"], 0);
    d.stop().await;
}

/// With a list, a page from another origin gets 403 before its body is even read: nothing runs,
/// and the refusal is counted. Requests without Origin and from listed origins are served.
async fn origin_refusal(backend: Backend) {
    let page = "http://127.0.0.1:9";
    let mut c: Config = config(backend);
    c.allow_origin = AllowOrigin::List(vec![page.into()]);
    let d = TestDaemon::start(c).await;

    let evil = "http://evil.example";
    let r = send(&d, Some(FORM_TYPE), Some(evil), form_body("echo ran")).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.errors().starts_with("Origin not allowed"), "{}", r.text);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = send(&d, None, Some(evil), "echo ran").await;
    assert_eq!(r.status, 403);
    // Refused before the body is read: a body that never arrives does not delay the answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        conn.write_all(
            format!(
                "POST /compile HTTP/1.1\r\nHost: x\r\nOrigin: {evil}\r\nContent-Type: {FORM_TYPE}\r\nContent-Length: 100000\r\n\r\nversion=2&body=echo"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(2), conn.read_exact(&mut head))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 403");
    }
    assert_eq!(d.metric("compilerd_origin_refusals_total"), 3.0);
    assert_eq!(
        d.metric("compilerd_requests_total{code=\"403\",handler=\"compile\"}"),
        3.0
    );
    assert_eq!(runs(&d), 0.0, "nothing ran for a refused origin");
    assert_eq!(d.metric("compilerd_cache_misses_total"), 0.0);

    let r = send(&d, Some(FORM_TYPE), Some(page), form_body("echo ran")).await;
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "ran\n"),
        "{}",
        r.text
    );
    assert_eq!(r.header("access-control-allow-origin"), Some(page));
    let r = send(&d, None, None, "echo no origin").await;
    assert_eq!((r.status, r.output().as_str()), (200, "no origin\n"));
    // The daemon's own page at `/` is served whatever the list says: its Origin is the Host.
    let own = format!("http://{}", d.addr);
    let r = send(&d, Some(FORM_TYPE), Some(&own), form_body("echo own page")).await;
    assert_eq!(
        (r.status, r.output().as_str()),
        (200, "own page\n"),
        "{}",
        r.text
    );
    assert_eq!(d.metric("compilerd_origin_refusals_total"), 3.0);
    d.stop().await;
}

macro_rules! on_backend {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            #[tokio::test]
            async fn each_form_runs_once() {
                super::each_form_runs_once($backend).await
            }
            #[tokio::test]
            async fn deadline() {
                super::deadline($backend).await
            }
            #[tokio::test]
            async fn output_flood() {
                super::output_flood($backend).await
            }
            #[tokio::test]
            async fn memory_kill() {
                super::memory_kill($backend).await
            }
            #[tokio::test]
            async fn program_size_limit() {
                super::program_size_limit($backend).await
            }
            #[tokio::test]
            async fn malformed() {
                super::malformed($backend).await
            }
            #[tokio::test]
            async fn origin_refusal() {
                super::origin_refusal($backend).await
            }
        }
    };
}

on_backend!(docker, Backend::Docker);
on_backend!(bwrap, Backend::Bwrap);

/// A daemon over the scripted sandbox; the sandbox is returned to count its runs.
async fn scripted(c: Config) -> (TestDaemon, Arc<ScriptedSandbox>) {
    let sandbox = Arc::new(ScriptedSandbox::new(c.limits.clone()));
    let d = TestDaemon::start_with(c, sandbox.clone(), Arc::new(Metrics::new())).await;
    (d, sandbox)
}

#[tokio::test]
async fn scripted_a_cached_answer_replays_at_the_written_pace() {
    let (d, sandbox) = scripted(config(Backend::Bwrap)).await;
    let script = "out a\nsleep 300\nerr b\nsleep 100\nout c";
    let first = form(&d, script).await;
    let ev = events(&first);
    assert_eq!(ev.len(), 3, "{}", first.text);
    // Each since the previous event, not since the start: the second pause is the shorter.
    assert!(ev[1].2 >= 300 * MS, "{}", ev[1].2);
    assert!(ev[2].2 >= 100 * MS && ev[2].2 < ev[1].2, "{ev:?}");
    let again = json(&d, script).await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(events(&again), ev);
    assert_eq!(sandbox.runs(), 1);
    d.stop().await;
}

#[tokio::test]
async fn scripted_refused_origins_run_nothing() {
    let mut c = config(Backend::Bwrap);
    c.allow_origin = AllowOrigin::List(vec!["https://play.example".into()]);
    let (d, sandbox) = scripted(c).await;
    for r in [
        send(
            &d,
            Some(FORM_TYPE),
            Some("https://evil.example"),
            form_body("out x"),
        )
        .await,
        send(
            &d,
            Some("application/json"),
            Some("null"),
            r#"{"Body":"out x"}"#,
        )
        .await,
        send(&d, None, Some("https://play.example.evil"), "out x").await,
    ] {
        assert_eq!(r.status, 403, "{}", r.text);
    }
    assert_eq!(sandbox.runs(), 0);
    let r = send(
        &d,
        Some(FORM_TYPE),
        Some("https://play.example"),
        form_body("out x"),
    )
    .await;
    assert_eq!((r.status, r.output().as_str()), (200, "x\n"));
    assert_eq!(sandbox.runs(), 1);
    d.stop().await;
}

#[tokio::test]
async fn scripted_default_accepts_every_origin() {
    let (d, sandbox) = scripted(config(Backend::Bwrap)).await;
    let r = send(
        &d,
        Some(FORM_TYPE),
        Some("https://anyone.example"),
        form_body("out x"),
    )
    .await;
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, Some("*"))
    );
    assert_eq!(sandbox.runs(), 1);
    d.stop().await;
}

#[tokio::test]
async fn scripted_sandbox_failure_and_overload_stay_503() {
    let mut c = config(Backend::Bwrap);
    c.max_concurrent_runs = 1;
    c.max_queued = 0;
    let (d, _sandbox) = scripted(c).await;
    let r = form(&d, "fail").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.errors().starts_with("Sandbox failed: "), "{}", r.text);
    assert_eq!(r.header("retry-after"), None);

    let client = d.client.clone();
    let url = d.url("/compile");
    let busy = tokio::spawn(async move {
        client
            .post(url)
            .header("Content-Type", FORM_TYPE)
            .body(form_body("sleep 500\nout done"))
            .send()
            .await
            .unwrap()
            .status()
    });
    d.wait_metric("compilerd_runs_in_flight", |v| v == 1.0)
        .await;
    let r = json(&d, "out turned away").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert!(r.errors().contains("busy"));
    assert_eq!(busy.await.unwrap(), 200);
    d.stop().await;
}

#[tokio::test]
async fn scripted_nonzero_exit_and_silent_programs() {
    let (d, _sandbox) = scripted(config(Backend::Bwrap)).await;
    let r = form(&d, "err bad\nexit 2").await;
    assert_eq!((r.status, &r.json["Status"]), (200, &Value::from(2)));
    assert_eq!(events(&r)[0].1, "stderr");
    let r = json(&d, "exit 0").await;
    assert_eq!(r.text, r#"{"Errors":"","Events":[],"Status":0}"#);
    d.stop().await;
}
