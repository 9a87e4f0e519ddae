//! Real browsers against a real daemon: headless Chromium (Debian's `chromium`, driven over the
//! DevTools protocol) loads the playground page at `/`, types programs, clicks Run, and reads what
//! the page shows, over both transports; and a page served from another origin sends what the Go
//! playground's frontend sends (its jQuery request, mimicked) and reads the answers, from an
//! allowed origin and from one that is not. Backend: bubblewrap with the busybox rootfs. Screenshots
//! land in `target/test-artifacts/`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cdp::Browser;
use common::{TestDaemon, config};
use compilerd::config::{AllowOrigin, Backend, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn daemon_config() -> Config {
    let mut c = config(Backend::Bwrap);
    c.limits.timeout = Duration::from_millis(1500);
    c.limits.max_output_bytes = 8192;
    c
}

/// What the page shows once the run is over: (stdout spans, stderr spans, status line).
async fn shown(b: &mut Browser) -> (String, String, String) {
    b.wait_for("document.body.dataset.state === 'done'").await;
    let v = b
        .eval(
            "(() => { const t = c => [...document.querySelectorAll('#output .' + c)].map(e => e.textContent).join(''); \
             return [t('stdout'), t('stderr'), document.getElementById('status').textContent]; })()",
        )
        .await;
    let s = |i: usize| v[i].as_str().unwrap().to_owned();
    (s(0), s(1), s(2))
}

async fn run_in_page(b: &mut Browser, program: &str) -> (String, String, String) {
    b.type_into("#code", program).await;
    b.click("#run").await;
    shown(b).await
}

async fn page_shows_runs_over(transport: &str) {
    let d = TestDaemon::start(daemon_config()).await;
    let mut b = Browser::start().await;
    b.open(&d.url("/")).await;
    b.eval(&format!(
        "document.getElementById('transport').value = {}",
        json!(transport)
    ))
    .await;

    let (out, err, status) = run_in_page(
        &mut b,
        "echo hello; sleep 0.1; echo oops >&2; sleep 0.1; exit 3",
    )
    .await;
    assert_eq!(
        (out.as_str(), err.as_str(), status.as_str()),
        ("hello\n", "oops\n", "Program exited: status 3.")
    );
    // stdout and stderr are styled apart.
    let colors = b
        .eval("[getComputedStyle(document.querySelector('#output .stdout')).color, getComputedStyle(document.querySelector('#output .stderr')).color]")
        .await;
    assert_ne!(colors[0], colors[1]);
    b.screenshot(&format!("playground-{transport}-exit-status"))
        .await;

    let (out, _, status) = run_in_page(&mut b, "echo fine").await;
    assert_eq!(
        (out.as_str(), status.as_str()),
        ("fine\n", "Program exited.")
    );

    let (out, _, status) = run_in_page(&mut b, "echo started; while :; do :; done").await;
    assert_eq!(out, "started\n");
    assert_eq!(status, "Program exited: process took too long.");
    b.screenshot(&format!("playground-{transport}-deadline"))
        .await;

    let (_, _, status) = run_in_page(&mut b, "while :; do echo flooding the output; done").await;
    assert_eq!(status, "Program output too large.");
    b.screenshot(&format!("playground-{transport}-flood")).await;

    if transport == "socket" {
        // Live: the first line is on the page while the program still runs.
        b.type_into("#code", "echo first; sleep 1; echo second")
            .await;
        b.click("#run").await;
        b.wait_for("document.querySelector('#output .stdout')?.textContent === 'first\\n'")
            .await;
        assert_eq!(
            b.eval("document.body.dataset.state").await,
            json!("running")
        );
        b.screenshot("playground-socket-live").await;
        let (out, _, status) = shown(&mut b).await;
        assert_eq!(
            (out.as_str(), status.as_str()),
            ("first\nsecond\n", "Program exited.")
        );
        // Stop kills a running program.
        b.type_into("#code", "echo waiting; sleep 1000").await;
        b.click("#run").await;
        b.wait_for("document.querySelector('#output .stdout')?.textContent === 'waiting\\n'")
            .await;
        b.click("#kill").await;
        let (_, _, status) = shown(&mut b).await;
        assert_eq!(status, "Program exited: signal: killed.");
    }
    d.stop().await;
}

#[tokio::test]
async fn playground_page_over_the_socket() {
    page_shows_runs_over("socket").await;
}

#[tokio::test]
async fn playground_page_over_post_compile() {
    page_shows_runs_over("http").await;
}

#[tokio::test]
async fn ui_can_be_turned_off() {
    let mut c = daemon_config();
    c.ui = false;
    let d = TestDaemon::start(c).await;
    let r = d.client.get(d.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    d.stop().await;
    let d = TestDaemon::start(daemon_config()).await;
    let r = d.client.get(d.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("<textarea id=\"code\""));
    d.stop().await;
}

// --- the Go playground's frontend, from another origin -------------------------------------

/// Our own imitation of what the Go playground's page does with jQuery: `$.ajax('/compile',
/// {type: 'POST', data: {version: 2, body, withVet: enableVet}, dataType: 'json'})` to a server
/// of another origin (so no `X-Requested-With`), and its `SocketTransport`'s messages.
const FOREIGN_PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>frontend</title>
<pre id="log"></pre>
<script>
'use strict';
// jQuery's $.param: every field, undefined ones as empty, %20 as '+'.
function param(fields) {
  return Object.keys(fields).map(function (k) {
    var v = fields[k] == null ? '' : fields[k];
    return encodeURIComponent(k) + '=' + encodeURIComponent(v);
  }).join('&').replace(/%20/g, '+');
}
function log(s) { document.getElementById('log').textContent += s + '\n'; }
window.compile = function (server, body) {
  return new Promise(function (resolve) {
    var xhr = new XMLHttpRequest();
    xhr.open('POST', server + '/compile', true);
    xhr.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded; charset=UTF-8');
    xhr.setRequestHeader('Accept', 'application/json, text/javascript, */*; q=0.01');
    xhr.onload = function () {
      log('POST ' + server + ': ' + xhr.status + ' ' + xhr.responseText);
      resolve({ status: xhr.status, text: xhr.responseText });
    };
    xhr.onerror = function () {
      log('POST ' + server + ': Error communicating with remote server.');
      resolve({ status: 0, text: '' });
    };
    xhr.send(param({ version: 2, body: body, withVet: undefined }));
  });
};
window.socketRun = function (server, body) {
  return new Promise(function (resolve) {
    var ws = new WebSocket(server.replace(/^http/, 'ws') + '/socket');
    var got = [];
    ws.onopen = function () { ws.send(JSON.stringify({ Id: '0', Kind: 'run', Body: body })); };
    ws.onmessage = function (e) {
      var m = JSON.parse(e.data);
      got.push(m);
      if (m.Kind === 'end') { ws.close(); log('socket: ' + JSON.stringify(got)); resolve({ opened: true, messages: got }); }
    };
    ws.onclose = function () { log('socket closed, ' + got.length + ' messages'); resolve({ opened: false, messages: got }); };
  });
};
</script>"#;

/// A tiny HTTP/1.1 server of the test's own: `GET /` is the foreign page; any `POST` is
/// captured raw (head and body) and answered `{}` with CORS open, so a page of another origin
/// can show what it sent; anything else is a 404.
async fn serve_foreign() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let (status, ctype, body) = if head.starts_with("get / ") {
                    ("200 OK", "text/html; charset=utf-8", FOREIGN_PAGE)
                } else if head.starts_with("post ") {
                    let _ = tx.send(buf.clone());
                    ("200 OK", "application/json", "{}")
                } else {
                    ("404 Not Found", "text/plain", "")
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

/// JavaScript's `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// (headers lower-cased, body) of a captured request.
fn parse_captured(raw: &[u8]) -> (Vec<(String, String)>, String) {
    let i = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..i]);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    (headers, String::from_utf8_lossy(&raw[i + 4..]).into_owned())
}

/// The daemon, allowing only the origin of one foreign page; a second page serves from an origin
/// it does not allow (and captures requests sent to it).
struct Origins {
    d: TestDaemon,
    daemon: String,
    allowed: String,
    denied: String,
    captured: mpsc::UnboundedReceiver<Vec<u8>>,
}

async fn origins() -> Origins {
    let (allowed, _) = serve_foreign().await;
    let (denied, captured) = serve_foreign().await;
    let allowed = format!("http://{allowed}");
    let mut c = daemon_config();
    c.allow_origin = AllowOrigin::List(vec![allowed.clone()]);
    let d = TestDaemon::start(c).await;
    Origins {
        daemon: format!("http://{}", d.addr),
        d,
        allowed,
        denied: format!("http://{denied}"),
        captured,
    }
}

const FRONTEND_PROGRAM: &str = "echo \"hi & bye\" 50%; echo err >&2; exit 3";

/// What the frontend sends, captured from a real browser; and its socket transport, from an
/// allowed origin and a refused one.
#[tokio::test]
async fn go_frontend_request_and_socket_across_origins() {
    let mut o = origins().await;
    let mut b = Browser::start().await;
    b.open(&format!("{}/", o.allowed)).await;

    // What the page sends, to the test's own server (of another origin, as the daemon is).
    let r = b
        .eval(&format!(
            "compile({}, {})",
            json!(o.denied),
            json!(FRONTEND_PROGRAM)
        ))
        .await;
    assert_eq!(r["status"], json!(200));
    let raw = o.captured.recv().await.unwrap();
    let (headers, body) = parse_captured(&raw);
    let header = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        header("content-type"),
        Some("application/x-www-form-urlencoded; charset=UTF-8")
    );
    assert_eq!(
        header("accept"),
        Some("application/json, text/javascript, */*; q=0.01")
    );
    assert_eq!(header("origin"), Some(o.allowed.as_str()));
    assert_eq!(header("x-requested-with"), None);
    let expected_body = format!(
        "version=2&body={}&withVet=",
        encode_uri_component(FRONTEND_PROGRAM).replace("%20", "+")
    );
    assert_eq!(body, expected_body);

    let socket = b
        .eval(&format!("socketRun({}, 'echo live')", json!(o.daemon)))
        .await;
    assert_eq!(socket["opened"], json!(true), "{socket}");
    assert_eq!(
        socket["messages"],
        json!([{"Id": "0", "Kind": "stdout", "Body": "live\n"}, {"Id": "0", "Kind": "end", "Body": ""}])
    );
    b.screenshot("foreign-allowed-socket").await;

    let mut other = Browser::start().await;
    other.open(&format!("{}/", o.denied)).await;
    let socket = other
        .eval(&format!(
            "socketRun({}, 'echo must not run')",
            json!(o.daemon)
        ))
        .await;
    assert_eq!(socket["opened"], json!(false), "{socket}");
    other.screenshot("foreign-denied-socket").await;
    assert_eq!(
        o.d.metric(r#"compilerd_requests_total{code="403",handler="socket"}"#),
        1.0
    );
    o.d.stop().await;
}

/// The frontend's POST /compile (form-encoded; decoded by /compile, branch `forms`): answered so
/// that the Go client renders it from an allowed origin, refused before it runs from another.
#[tokio::test]
async fn go_frontend_post_compile_across_origins() {
    let o = origins().await;
    let mut b = Browser::start().await;
    b.open(&format!("{}/", o.allowed)).await;
    let r = b
        .eval(&format!(
            "compile({}, {})",
            json!(o.daemon),
            json!(FRONTEND_PROGRAM)
        ))
        .await;
    b.screenshot("foreign-allowed-compile").await;
    assert_eq!(r["status"], json!(200), "{r}");
    let answer: Value = serde_json::from_str(r["text"].as_str().unwrap()).unwrap();
    let events = answer["Events"].as_array().expect("Events");
    let text = |kind: &str| -> String {
        events
            .iter()
            .filter(|e| e["Kind"] == json!(kind))
            .map(|e| e["Message"].as_str().unwrap())
            .collect()
    };
    assert_eq!(text("stdout"), "hi & bye 50%\n", "{answer}");
    assert_eq!(text("stderr"), "err\n");
    assert_eq!(answer["Status"], json!(3));
    assert!(events.iter().all(|e| e["Delay"].is_u64()));

    let runs = |d: &TestDaemon| {
        d.metric(r#"compilerd_runs_total{language="default",outcome="ok"}"#)
            + d.metric(r#"compilerd_runs_total{language="default",outcome="exit_nonzero"}"#)
    };
    let runs_before = runs(&o.d);
    let mut other = Browser::start().await;
    other.open(&format!("{}/", o.denied)).await;
    let r = other
        .eval(&format!(
            "compile({}, {})",
            json!(o.daemon),
            json!("echo must not run; exit 5")
        ))
        .await;
    other.screenshot("foreign-denied-compile").await;
    assert_eq!(
        r["status"],
        json!(0),
        "the browser hides a refused answer: {r}"
    );
    assert_eq!(
        o.d.metric(r#"compilerd_requests_total{code="403",handler="compile"}"#),
        1.0,
        "POST /compile from a foreign origin is refused before it runs"
    );
    assert_eq!(runs_before, runs(&o.d), "a refused origin ran a program");
    o.d.stop().await;
}
