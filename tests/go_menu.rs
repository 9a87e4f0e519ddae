//! The Go playground's menu programs (Hello, Clear, Display image, HTTP server, Multiple files,
//! Sleep, Test; our own versions of them) in headless Chromium, on both backends, through two
//! frontends: an imitation of the Go playground's page, served from another origin, that posts
//! the form its jQuery sends and plays the answer's events back after their delays as its
//! `playback` does (images, form feeds, the test and exit endings); and our page at `/`.
//! Screenshots land in `target/test-artifacts/go-menu-*.png`.
//!
//! Needs the Go image and rootfs of `scripts/build-image.sh go`; a missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestDaemon;
use common::cdp::Browser;
use compilerd::config::{AllowOrigin, Backend, Config, LanguageSettings};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One Go daemon at a time: Go builds compete for the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Go playground's build deadline: the go command takes several seconds on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// Every origin allowed, as the Go playground's server did: the imitation page posts from its
/// own origin, our page from the daemon's.
fn config(backend: Backend) -> Config {
    let mut c = common::config(backend);
    c.limits.timeout = DEADLINE;
    c.limits.memory_bytes = 128 << 20;
    c.pool_size = 1;
    c.language_tables = BTreeMap::from([("go".to_owned(), LanguageSettings::default())]);
    c.default_language = Some("go".to_owned());
    c.allow_origin = AllowOrigin::Any;
    c
}

const HELLO: &str =
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"Hello, 世界\")\n}\n";

/// A progress bar redrawn after form feeds, 100 ms apart.
const CLEAR: &str = r#"package main

import (
	"fmt"
	"strings"
	"time"
)

func main() {
	const width = 30
	for i := 0; i <= width; i++ {
		fmt.Printf("\x0c[%s%s]", strings.Repeat("=", i), strings.Repeat(" ", width-i))
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("\x0c[%s] Done!\n", strings.Repeat("=", width))
}
"#;
const CLEAR_OUT: &str = "[==============================] Done!\n";

const IMAGE: &str = r#"package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
)

func main() {
	const w, h = 64, 32
	m := image.NewRGBA(image.Rect(0, 0, w, h))
	for x := 0; x < w; x++ {
		for y := 0; y < h; y++ {
			m.Set(x, y, color.RGBA{uint8(x * 4), 80, uint8(y * 8), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, m); err != nil {
		panic(err)
	}
	fmt.Println("IMAGE:" + base64.StdEncoding.EncodeToString(buf.Bytes()))
}
"#;

/// A server and its client meeting on localhost inside the sandbox.
const HTTP_SERVER: &str = r#"package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/hi", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "Hi from the server")
	})
	l, err := net.Listen("tcp", "localhost:8080")
	if err != nil {
		log.Fatal(err)
	}
	log.Println("listening")
	go http.Serve(l, nil)
	resp, err := http.Get("http://localhost:8080/hi")
	if err != nil {
		log.Fatal(err)
	}
	log.Println("got", resp.Status)
	io.Copy(os.Stdout, resp.Body)
}
"#;

/// A txtar archive: the module's go.mod and a second package.
const MULTIPLE_FILES: &str = r#"package main

import "play.ground/greet"

func main() {
	greet.Print()
}
-- go.mod --
module play.ground
-- greet/greet.go --
package greet

import "fmt"

func Print() {
	fmt.Println("printed by package greet")
}
"#;

/// Random sleeps: their lengths come back as the events' delays.
const SLEEP: &str = r#"package main

import (
	"fmt"
	"math/rand"
	"time"
)

func main() {
	for i := 0; i < 6; i++ {
		d := time.Duration(rand.Intn(500)) * time.Millisecond
		fmt.Printf("sleep %v\n", d)
		time.Sleep(d)
	}
	fmt.Println("woke")
}
"#;

/// A test with an off-by-one: the first element is never looked at.
const TEST: &str = r#"package main

import "testing"

func lastIndex(list []int, x int) int {
	for i := len(list) - 1; i > 0; i-- {
		if list[i] == x {
			return i
		}
	}
	return -1
}

func TestLastIndex(t *testing.T) {
	cases := []struct {
		list    []int
		x, want int
	}{
		{[]int{7}, 7, 0},
		{[]int{7, 7}, 7, 1},
		{[]int{4, 5, 6}, 9, -1},
	}
	for _, c := range cases {
		if got := lastIndex(c.list, c.x); got != c.want {
			t.Errorf("lastIndex(%v, %d) = %d, want %d", c.list, c.x, got, c.want)
		}
	}
}
"#;

/// Our imitation of the Go playground's page: `run` posts what its jQuery posts (to a server of
/// another origin) and plays the events back one after another, each after its Delay; an event
/// starting with `IMAGE:` becomes an image, a form feed clears what was shown before it; the
/// status line ends the run as the playground's does.
const FRONTEND: &str = r#"<!doctype html><meta charset="utf-8"><title>Go playground (imitation)</title>
<style>body{font-family:monospace} .stderr{color:#a00} .system{color:#06c} img{display:block}</style>
<div id="output"></div><div id="status" class="system"></div>
<script>
'use strict';
function param(fields) {
  return Object.keys(fields).map(function (k) {
    return encodeURIComponent(k) + '=' + encodeURIComponent(fields[k] == null ? '' : fields[k]);
  }).join('&').replace(/%20/g, '+');
}
// Not `status`: that name is the window's status bar text.
var output = document.getElementById('output'), statusLine = document.getElementById('status');
function write(kind, text) {
  var s = document.createElement('span');
  s.className = kind;
  s.textContent = text;
  output.appendChild(s);
}
function show(e) {
  if (e.Message.indexOf('IMAGE:') === 0) {
    var img = document.createElement('img');
    img.src = 'data:image/png;base64,' + e.Message.slice(6).trim();
    output.appendChild(img);
    return;
  }
  var m = e.Message, ff = m.lastIndexOf('\x0c');
  if (ff >= 0) { output.textContent = ''; m = m.slice(ff + 1); }
  write(e.Kind, m);
}
function finish(a) {
  if (a.IsTest) {
    statusLine.textContent = a.TestsFailed > 0
      ? a.TestsFailed + ' test' + (a.TestsFailed > 1 ? 's' : '') + ' failed.'
      : 'All tests passed.';
  } else {
    statusLine.textContent = a.Status ? 'Program exited: status ' + a.Status + '.' : 'Program exited.';
  }
  document.body.dataset.state = 'done';
}
window.run = function (server, body, vet) {
  document.body.dataset.state = 'running';
  window.answer = null;
  output.textContent = '';
  statusLine.textContent = 'Waiting for remote server...';
  var xhr = new XMLHttpRequest();
  xhr.open('POST', server + '/compile', true);
  xhr.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded; charset=UTF-8');
  xhr.setRequestHeader('Accept', 'application/json, text/javascript, */*; q=0.01');
  xhr.onload = function () {
    var a = JSON.parse(xhr.responseText);
    window.answer = a;
    statusLine.textContent = '';
    if (a.Errors) {
      write('stderr', a.Errors);
      statusLine.textContent = 'Go build failed.';
      document.body.dataset.state = 'done';
      return;
    }
    if (a.VetErrors) write('stderr', a.VetErrors + '\nGo vet exited.\n\n');
    var events = a.Events || [], i = 0;
    window.shownAt = [];
    (function next() {
      if (i === events.length) { finish(a); return; }
      var e = events[i++];
      setTimeout(function () { window.shownAt.push(performance.now()); show(e); next(); }, e.Delay / 1e6);
    })();
  };
  xhr.onerror = function () {
    statusLine.textContent = 'Error communicating with remote server.';
    document.body.dataset.state = 'done';
  };
  xhr.send(param({ version: 2, body: body, withVet: vet }));
};
</script>"#;

/// Serves the imitation page for every request, from an origin of its own.
async fn serve_frontend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{FRONTEND}",
                    FRONTEND.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// What a page shows once a run is over: (stdout, stderr, all output, status line).
struct Shown {
    stdout: String,
    stderr: String,
    all: String,
    status: String,
}

async fn shown(b: &mut Browser) -> Shown {
    b.wait_for("document.body.dataset.state === 'done'").await;
    let v = b
        .eval(
            "(() => { const o = document.getElementById('output'); \
             const t = c => [...o.querySelectorAll('.' + c)].map(e => e.textContent).join(''); \
             return [t('stdout'), t('stderr'), o.textContent, document.getElementById('status').textContent]; })()",
        )
        .await;
    let s = |i: usize| v[i].as_str().unwrap().to_owned();
    Shown {
        stdout: s(0),
        stderr: s(1),
        all: s(2),
        status: s(3),
    }
}

#[derive(Clone, Copy)]
enum Frontend {
    /// The Go playground's page (our imitation), posting to the daemon from another origin.
    Playground,
    /// Our page at `/`.
    Ours,
}

impl Frontend {
    fn name(self) -> &'static str {
        match self {
            Frontend::Playground => "playground",
            Frontend::Ours => "ours",
        }
    }
}

async fn run(b: &mut Browser, f: Frontend, daemon: &str, program: &str) -> Shown {
    match f {
        Frontend::Playground => {
            b.eval(&format!(
                "run({}, {}, false)",
                json!(daemon),
                json!(program)
            ))
            .await;
        }
        Frontend::Ours => {
            b.eval("document.getElementById('vet').checked = false")
                .await;
            b.type_into("#code", program).await;
            b.click("#run").await;
        }
    }
    shown(b).await
}

/// Go's formatting of a whole number of milliseconds below a second, in nanoseconds.
fn millis(s: &str) -> u64 {
    if s == "0s" {
        return 0;
    }
    s.strip_suffix("ms")
        .unwrap_or_else(|| panic!("not milliseconds: {s}"))
        .parse::<u64>()
        .unwrap()
        * 1_000_000
}

/// Each event of the Sleep program comes after the sleep the previous one printed.
fn check_sleep_delays(answer: &Value) {
    let events = answer["Events"].as_array().expect("Events");
    let mut slept = None;
    let mut lines = 0;
    for e in events {
        let delay = e["Delay"].as_u64().unwrap();
        if let Some(want) = slept {
            let diff = delay.abs_diff(want);
            assert!(diff < 1_000_000, "Delay {delay}, slept {want}: {answer}");
        }
        let message = e["Message"].as_str().unwrap();
        lines += message.lines().count();
        slept = message
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("sleep "))
            .map(millis);
    }
    assert_eq!(lines, 7, "{answer}");
}

async fn menu(b: &mut Browser, f: Frontend, backend: Backend, daemon: &str) {
    let shot = |program: &str| format!("go-menu-{backend}-{}-{program}", f.name());

    let s = run(b, f, daemon, HELLO).await;
    assert_eq!(
        (s.all.as_str(), s.status.as_str()),
        ("Hello, 世界\n", "Program exited.")
    );
    b.screenshot(&shot("hello")).await;

    let s = run(b, f, daemon, CLEAR).await;
    assert_eq!(
        (s.all.as_str(), s.status.as_str()),
        (CLEAR_OUT, "Program exited.")
    );
    b.screenshot(&shot("clear")).await;

    let s = run(b, f, daemon, IMAGE).await;
    assert_eq!(s.status, "Program exited.");
    b.wait_for("(() => { const i = document.querySelector('#output img'); return i && i.complete && i.naturalWidth === 64 && i.naturalHeight === 32; })()")
        .await;
    b.screenshot(&shot("image")).await;

    let s = run(b, f, daemon, HTTP_SERVER).await;
    assert_eq!(
        (s.stdout.as_str(), s.stderr.as_str(), s.status.as_str()),
        (
            "Hi from the server",
            "2009/11/10 23:00:00 listening\n2009/11/10 23:00:00 got 200 OK\n",
            "Program exited."
        )
    );
    b.screenshot(&shot("http-server")).await;

    let s = run(b, f, daemon, MULTIPLE_FILES).await;
    assert_eq!(
        (s.all.as_str(), s.status.as_str()),
        ("printed by package greet\n", "Program exited.")
    );
    b.screenshot(&shot("multiple-files")).await;

    let s = run(b, f, daemon, SLEEP).await;
    assert_eq!(s.status, "Program exited.");
    let lines: Vec<&str> = s.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{}", s.stdout);
    assert!(
        lines[..6].iter().all(|l| l.starts_with("sleep ")),
        "{}",
        s.stdout
    );
    assert_eq!(lines[6], "woke");
    if let Frontend::Playground = f {
        check_sleep_delays(&b.eval("window.answer").await);
        // Played back after the delays, not all at once.
        let slept: u64 = lines[..6].iter().map(|l| millis(&l[6..])).sum();
        let span = b
            .eval("window.shownAt[window.shownAt.length - 1] - window.shownAt[0]")
            .await
            .as_f64()
            .unwrap();
        assert!(
            span * 1e6 >= slept as f64 * 0.9,
            "shown over {span} ms, slept {slept} ns"
        );
    }
    b.screenshot(&shot("sleep")).await;

    let s = run(b, f, daemon, TEST).await;
    for line in [
        "=== RUN   TestLastIndex\n",
        "    prog_test.go:25: lastIndex([7], 7) = -1, want 0\n",
        "--- FAIL: TestLastIndex (",
        "FAIL\n",
    ] {
        assert!(s.all.contains(line), "{line:?} not in {}", s.all);
    }
    assert!(!s.all.contains("[7 7]"), "{}", s.all);
    assert_eq!(s.status, "1 test failed.", "{}: {}", f.name(), s.all);
    b.screenshot(&shot("test")).await;
}

async fn menu_programs(backend: Backend) {
    let _one = ONE_AT_A_TIME.lock().await;
    let frontend = serve_frontend().await;
    let d = TestDaemon::start(config(backend)).await;
    let daemon = format!("http://{}", d.addr);

    let mut b = Browser::start().await;
    b.open(&format!("{frontend}/")).await;
    menu(&mut b, Frontend::Playground, backend, &daemon).await;

    let mut b = Browser::start().await;
    b.open(&d.url("/")).await;
    b.wait_for("document.getElementById('lang').options.length === 1")
        .await;
    // The Go playground's transport: the socket's end message carries no test counts.
    b.eval("document.getElementById('transport').value = 'http'")
        .await;
    menu(&mut b, Frontend::Ours, backend, &daemon).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_programs_docker() {
    menu_programs(Backend::Docker).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_programs_bwrap() {
    menu_programs(Backend::Bwrap).await
}
