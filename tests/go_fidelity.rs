//! Go programs behave as on the Go playground (issue 22), on both backends, through the request
//! forms the playground's clients use (form, JSON, the socket) and the raw form: fake time and its
//! framed output decoded into events, the zone database, localhost, txtar archives and their
//! errors, test mode, the answer's fields, timeouts, vet, modules; and the page at `/` (headless
//! Chromium) with images, form feeds, test and build endings.
//!
//! Needs the Go image and rootfs of `scripts/build-image.sh go` (compilerd-go,
//! /var/lib/compilerd/rootfs/go); a missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cdp::Browser;
use common::ws::{Ws, summary};
use common::{Reply, TestDaemon};
use compilerd::config::{Backend, Config, LanguageSettings};
use serde_json::{Value, json};

/// One Go daemon per backend at a time: Go builds compete for the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The deadline covers the build: the go command (tests, several files, vet, modules) takes
/// about a second on an idle machine and several on a loaded one; the Go playground gives its
/// builds 10 s.
const DEADLINE: Duration = Duration::from_secs(10);

fn config(backend: Backend) -> Config {
    let mut c = common::config(backend);
    c.limits.timeout = DEADLINE;
    c.limits.memory_bytes = 128 << 20;
    c.pool_size = 1;
    c.language_tables = BTreeMap::from([("go".to_owned(), LanguageSettings::default())]);
    c.default_language = Some("go".to_owned());
    c
}

async fn start(backend: Backend) -> (TestDaemon, tokio::sync::MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().await;
    (TestDaemon::start(config(backend)).await, guard)
}

/// What a browser's form encoding does to a program.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Form {
    Form,
    Json,
}

async fn compile(d: &TestDaemon, form: Form, program: &str) -> Reply {
    compile_with(d, form, program, false).await
}

async fn compile_with(d: &TestDaemon, form: Form, program: &str, vet: bool) -> Reply {
    let req = d.client.post(d.url("/compile"));
    let req = match form {
        Form::Form => req
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(format!("version=2&body={}&withVet={vet}", percent(program))),
        Form::Json => req
            .header("content-type", "application/json")
            .body(json!({"Body": program, "WithVet": vet}).to_string()),
    };
    Reply::read(req.send().await.unwrap()).await
}

/// (Message, Kind, Delay) of every event.
fn events(r: &Reply) -> Vec<(String, String, u64)> {
    r.json["Events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {}", r.text))
        .iter()
        .map(|e: &Value| {
            (
                e["Message"].as_str().unwrap().to_owned(),
                e["Kind"].as_str().unwrap().to_owned(),
                e["Delay"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn ev(message: &str, kind: &str, delay: u64) -> (String, String, u64) {
    (message.to_owned(), kind.to_owned(), delay)
}

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// Writes to both streams with sleeps between them, the Go playground's own decoding example with
/// an hour for the first sleep: the answer comes at once, with the delays the program asked for.
const MIXED: &str = r#"package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	fmt.Println(time.Now())
	fmt.Fprintln(os.Stderr, "B")
	fmt.Println("A")
	fmt.Println("A")
	time.Sleep(time.Hour)
	fmt.Fprintln(os.Stderr, "B")
	time.Sleep(time.Second)
	fmt.Println("A")
}
"#;

fn mixed_events() -> Vec<(String, String, u64)> {
    vec![
        ev(
            "2009-11-10 23:00:00 +0000 UTC m=+0.000000001\n",
            "stdout",
            0,
        ),
        ev("B\n", "stderr", 1),
        ev("A\nA\n", "stdout", 1),
        ev("B\n", "stderr", 3600 * S - 2),
        ev("A\n", "stdout", S),
    ]
}

const TICKER: &str = r#"package main

import (
	"fmt"
	"time"
)

func main() {
	t := time.NewTicker(100 * time.Millisecond)
	for i := 0; i < 3; i++ {
		now := <-t.C
		fmt.Println("tick", i, now.Format("15:04:05.000"))
	}
}
"#;

const ZONE: &str = r#"package main

import (
	"fmt"
	"time"
)

func main() {
	loc, err := time.LoadLocation("America/New_York")
	if err != nil {
		panic(err)
	}
	fmt.Println(time.Now().In(loc))
}
"#;

/// The Go playground's HTTP server example, in our words: a server and its client meet on
/// localhost, which resolves without DNS.
const LOCALHOST: &str = r#"package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "Hello, playground")
	})
	l, err := net.Listen("tcp", "localhost:8080")
	if err != nil {
		log.Fatal(err)
	}
	log.Println("Starting server...")
	go http.Serve(l, nil)
	log.Println("Sending request...")
	resp, err := http.Get("http://localhost:8080/hello")
	if err != nil {
		log.Fatal(err)
	}
	log.Println("Reading response...")
	io.Copy(os.Stdout, resp.Body)
}
"#;

const BUSY: &str = "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"spinning\")\n\tfor {\n\t}\n}\n";

async fn fake_time(backend: Backend) {
    let (d, _one) = start(backend).await;
    for form in [Form::Form, Form::Json] {
        let started = Instant::now();
        let r = compile(&d, form, MIXED).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{form:?}: {}", r.text);
        assert_eq!(
            (r.errors(), r.json["Status"].as_i64()),
            ("", Some(0)),
            "{}",
            r.text
        );
        assert_eq!(events(&r), mixed_events(), "{form:?}: {}", r.text);
        // The hour and the second cost nothing: the build and the run, nothing more.
        assert!(took < DEADLINE / 2, "{form:?} took {took:?}");
    }
    // Deterministic, so cached: the form's answer and the JSON's are one run.
    let again = compile(&d, Form::Json, MIXED).await;
    assert_eq!(again.header("x-cache"), Some("HIT"));

    let r = compile(&d, Form::Form, TICKER).await;
    assert_eq!(
        events(&r),
        [
            ev("tick 0 23:00:00.100\n", "stdout", 100 * MS),
            ev("tick 1 23:00:00.200\n", "stdout", 100 * MS),
            ev("tick 2 23:00:00.300\n", "stdout", 100 * MS),
        ],
        "{}",
        r.text
    );

    // Raw clients get the decoded output with the seed server's Delay 0.
    let r = d.compile(MIXED).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let raw: Vec<_> = mixed_events()
        .into_iter()
        .map(|(m, k, _)| (m, k, 0))
        .collect();
    assert_eq!(events(&r), raw, "{}", r.text);

    // A busy loop never moves fake time: the real deadline stops it, its output kept.
    let started = Instant::now();
    let r = compile(&d, Form::Json, BUSY).await;
    assert!(started.elapsed() >= DEADLINE);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"Errors":"","Events":[{"Message":"timeout running program\n","Kind":"stderr","Delay":0},{"Message":"spinning\n","Kind":"stdout","Delay":0}],"Status":1,"IsTest":false,"TestsFailed":0}"#
    );
    assert_eq!(r.header("x-cache"), Some("MISS"));
    d.stop().await;
}

async fn socket(backend: Backend) {
    let (d, _one) = start(backend).await;
    let mut ws = Ws::connect(d.addr).await;
    let started = Instant::now();
    ws.run("0", MIXED).await;
    let msgs = ws.until_end("0").await;
    assert!(started.elapsed() < DEADLINE / 2);
    assert_eq!(
        summary(&msgs, "0"),
        (
            "2009-11-10 23:00:00 +0000 UTC m=+0.000000001\nA\nA\nA\n".into(),
            "B\nB\n".into(),
            String::new()
        )
    );
    // Replayed from the cache, decoded the same.
    ws.run("1", MIXED).await;
    let msgs = ws.until_end("1").await;
    assert_eq!(summary(&msgs, "1").1, "B\nB\n");
    ws.run("2", "package main\n\nimport \"os\"\n\nfunc main() {\n\tos.Stdout.WriteString(\"bye\")\n\tos.Exit(3)\n}\n")
        .await;
    let msgs = ws.until_end("2").await;
    assert_eq!(
        summary(&msgs, "2"),
        ("bye".into(), String::new(), "exit status 3".into())
    );
    d.stop().await;
}

async fn zone_and_localhost(backend: Backend) {
    let (d, _one) = start(backend).await;
    let r = compile(&d, Form::Form, ZONE).await;
    assert_eq!(
        events(&r),
        [ev("2009-11-10 18:00:00 -0500 EST\n", "stdout", 0)],
        "{}",
        r.text
    );
    let r = compile(&d, Form::Json, LOCALHOST).await;
    assert_eq!(r.json["Status"].as_i64(), Some(0), "{}", r.text);
    assert_eq!(
        events(&r),
        [
            ev(
                "2009/11/10 23:00:00 Starting server...\n2009/11/10 23:00:00 Sending request...\n\
                 2009/11/10 23:00:00 Reading response...\n",
                "stderr",
                0
            ),
            ev("Hello, playground", "stdout", 1),
        ],
        "{}",
        r.text
    );
    let mut ws = Ws::connect(d.addr).await;
    ws.run("z", ZONE).await;
    let msgs = ws.until_end("z").await;
    assert_eq!(summary(&msgs, "z").0, "2009-11-10 18:00:00 -0500 EST\n");
    d.stop().await;
}

/// An exact answer: the Go playground's fields in its order.
async fn assert_answer(d: &TestDaemon, program: &str, want: &str) {
    for form in [Form::Form, Form::Json] {
        let r = compile(d, form, program).await;
        assert_eq!((r.status, r.text.as_str()), (200, want), "{form:?}");
    }
}

fn build_error(errors: &str) -> String {
    format!(
        r#"{{"Errors":{},"Events":null,"Status":0,"IsTest":false,"TestsFailed":0}}"#,
        Value::from(errors)
    )
}

const MULTI: &str = r#"-- go.mod --
module play.ground

-- prog.go --
package main

import (
	"fmt"

	"play.ground/foo"
)

func main() {
	fmt.Println(foo.Bar)
}
-- foo/foo.go --
package foo

const Bar = "The Go Gopher"
"#;

/// Imports of the modules scripts/build-image.sh serves by default.
const MODULES: &str = r#"package main

import (
	"fmt"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/exp/slices"
	"golang.org/x/text/language"
)

func main() {
	fmt.Println(cmp.Equal([]int{1}, []int{1}), slices.Contains([]int{1}, 1), language.English)
}
"#;

async fn program_forms(backend: Backend) {
    let (d, _one) = start(backend).await;
    assert_answer(
        &d,
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
        r#"{"Errors":"","Events":[{"Message":"hi\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":false,"TestsFailed":0}"#,
    )
    .await;
    assert_answer(
        &d,
        "package main\n\nfunc main() {\n\tx := 1\n}\n",
        &build_error("./prog.go:4:2: x declared but not used\n"),
    )
    .await;
    assert_answer(
        &d,
        "package foo\n\nfunc main() {}\n",
        &build_error("package name must be main"),
    )
    .await;
    assert_answer(
        &d,
        MULTI,
        r#"{"Errors":"","Events":[{"Message":"The Go Gopher\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":false,"TestsFailed":0}"#,
    )
    .await;
    // Without a go.mod the module is `play`; a subpackage may be of any package, and its errors
    // keep their directory.
    let default_mod = "package main\n\nimport \"play/foo\"\n\nfunc main() { foo.F() }\n-- foo/foo.go --\npackage foo\n\nfunc F() { y := 2 }\n";
    assert_answer(
        &d,
        default_mod,
        &build_error("foo/foo.go:3:12: y declared but not used\n"),
    )
    .await;
    // Raw clients: the messages on stderr, status 2, as before.
    let r = d
        .compile("package main\n\nfunc main() {\n\tx := 1\n}\n")
        .await;
    assert_eq!(
        r.text,
        r#"{"Errors":"","Events":[{"Message":"./prog.go:4:2: x declared but not used\n","Kind":"stderr","Delay":0}],"Status":2}"#
    );

    // The archive's limits and name rules, with the Go playground's texts.
    let many: String = (0..21)
        .map(|i| format!("-- f{i}.go --\npackage main\n"))
        .collect();
    let long = format!("-- {}.go --\npackage main\n", "a".repeat(200));
    let deep = format!("-- {}x.go --\npackage x\n", "d/".repeat(10));
    let cases: Vec<(String, &str)> = vec![
        (
            many,
            "too many files in txtar archive (21 exceeds limit of 20)",
        ),
        (long, "file name too long"),
        (
            "-- a\u{1}.go --\npackage main\n".into(),
            r#"invalid file name "a\x01.go""#,
        ),
        (
            "-- a\\b.go --\npackage main\n".into(),
            r#"invalid file name "a\\b.go""#,
        ),
        (
            "-- ./a.go --\npackage main\n".into(),
            r#"invalid file name "./a.go""#,
        ),
        (
            "-- /a.go --\npackage main\n".into(),
            r#"invalid file name "/a.go""#,
        ),
        (deep, r#"file name "d/d/d/d/d/d/d/d/d/d/x.go" too deep"#),
        (
            "package main\n-- prog.go --\npackage main\n".into(),
            r#"duplicate file name "prog.go""#,
        ),
        (
            "-- a.go --\npackage main\n-- a.go --\npackage main\n".into(),
            r#"duplicate file name "a.go""#,
        ),
    ];
    for (program, errors) in cases {
        assert_answer(&d, &program, &build_error(errors)).await;
    }

    // Modules the image serves from Debian's packages, listed by /languages.
    let r = Reply::read(d.client.get(d.url("/languages")).send().await.unwrap()).await;
    let modules: Vec<&str> = r.json[0]["modules"]
        .as_array()
        .unwrap_or_else(|| panic!("no modules listed: {}", r.text))
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        modules.contains(&"github.com/google/go-cmp@v0.5.9"),
        "{modules:?}"
    );
    assert!(modules.contains(&"golang.org/x/text@v0.7.0"), "{modules:?}");
    assert_answer(
        &d,
        MODULES,
        r#"{"Errors":"","Events":[{"Message":"true true en\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":false,"TestsFailed":0}"#,
    )
    .await;
    // A module that is not in the image: the go command's offline error, as on the Go
    // playground without network.
    assert_answer(
        &d,
        "package main\n\nimport \"github.com/bradfitz/iter\"\n\nfunc main() { iter.N(1) }\n",
        &build_error(
            "go: finding module for package github.com/bradfitz/iter\nprog.go:3:8: cannot find module providing package github.com/bradfitz/iter: module lookup disabled by GOPROXY=off\n",
        ),
    )
    .await;
    d.stop().await;
}

const TESTS: &str = r#"package main

import "testing"

func TestPasses(t *testing.T) {}

func TestFails(t *testing.T) {
	t.Errorf("got %d, want %d", 1, 2)
}
"#;

const EXAMPLE: &str = r#"package main

import "fmt"

func ExampleHello() {
	fmt.Println("hello")
	// Output: hello
}
"#;

const FUZZ: &str = r#"package main

import "testing"

func FuzzReverse(f *testing.F) {
	f.Add("abc")
	f.Fuzz(func(t *testing.T, s string) {})
}
"#;

async fn test_mode(backend: Backend) {
    let (d, _one) = start(backend).await;
    assert_answer(
        &d,
        TESTS,
        r#"{"Errors":"","Events":[{"Message":"=== RUN   TestPasses\n--- PASS: TestPasses (0.00s)\n=== RUN   TestFails\n    prog_test.go:8: got 1, want 2\n--- FAIL: TestFails (0.00s)\nFAIL\n","Kind":"stdout","Delay":0}],"Status":1,"IsTest":true,"TestsFailed":1}"#,
    )
    .await;
    assert_answer(
        &d,
        EXAMPLE,
        r#"{"Errors":"","Events":[{"Message":"=== RUN   ExampleHello\n--- PASS: ExampleHello (0.00s)\nPASS\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":true,"TestsFailed":0}"#,
    )
    .await;
    assert_answer(
        &d,
        FUZZ,
        r#"{"Errors":"","Events":[{"Message":"=== RUN   FuzzReverse\n=== RUN   FuzzReverse/seed#0\n--- PASS: FuzzReverse (0.00s)\n    --- PASS: FuzzReverse/seed#0 (0.00s)\nPASS\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":true,"TestsFailed":0}"#,
    )
    .await;
    // A test file that forgets testing: positions name prog_test.go.
    assert_answer(
        &d,
        "package main\n\nfunc TestX(t *testing.T) {}\n",
        &build_error("./prog_test.go:3:15: undefined: testing\n"),
    )
    .await;
    // Tests next to a func main: an ordinary run.
    let with_main = format!("{TESTS}\nfunc main() {{ println(\"main\") }}\n");
    let r = compile(&d, Form::Json, &with_main).await;
    assert_eq!(
        (r.json["IsTest"].as_bool(), r.output().as_str()),
        (Some(false), "main\n"),
        "{}",
        r.text
    );
    // Over the socket: the run's output, then how it ended.
    let mut ws = Ws::connect(d.addr).await;
    ws.run("t", TESTS).await;
    let msgs = ws.until_end("t").await;
    let (out, _, end) = summary(&msgs, "t");
    assert!(
        out.ends_with("--- FAIL: TestFails (0.00s)\nFAIL\n"),
        "{out}"
    );
    assert_eq!(end, "exit status 1");
    ws.run("e", "package main\n\nfunc main() {\n\tx := 1\n}\n")
        .await;
    let msgs = ws.until_end("e").await;
    assert_eq!(
        summary(&msgs, "e"),
        (
            String::new(),
            "./prog.go:4:2: x declared but not used\n".into(),
            "exit status 2".into()
        )
    );
    d.stop().await;
}

/// A build still running at the deadline: the Go playground's build timeout.
async fn build_timeout(backend: Backend) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut c = config(backend);
    // Far below the go command's own floor: loading the package graph of a program that
    // imports fmt takes it longer than this before it compiles anything, cache or not. (At
    // 200 ms a fast machine built and ran the program in time.) The program is new to every
    // run, so no cache of ours or Go's can answer it either.
    c.limits.timeout = Duration::from_millis(20);
    let d = TestDaemon::start(c).await;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert_answer(
        &d,
        &MULTI.replace("The Go Gopher", &format!("The Go Gopher {nonce}")),
        r#"{"Errors":"timeout running go build","Events":null,"Status":0,"IsTest":false,"TestsFailed":0}"#,
    )
    .await;
    d.stop().await;
}

/// Stopped at the output cap after the build: the daemon's notice, in an answer that keeps the
/// Go playground's fields (IsTest, TestsFailed), here in test mode. (The memory kill's answer is
/// the same table, unit-tested in goplay.rs: a real Go memory hog at times meets the deadline
/// instead, in a livelock of Go 1.19's garbage collector; docs/design.md says more.)
async fn limits(backend: Backend) {
    let (d, _one) = start(backend).await;
    let flood = "package main\n\nimport (\n\t\"fmt\"\n\t\"testing\"\n)\n\nfunc TestFlood(t *testing.T) {\n\tfor {\n\t\tfmt.Println(\"flood flood flood\")\n\t}\n}\n";
    for form in [Form::Form, Form::Json] {
        let r = compile(&d, form, flood).await;
        assert_eq!(r.status, 200, "{form:?} {}", r.text);
        assert!(
            r.text.contains(r"flood flood flood\n"),
            "{form:?} {}",
            &r.text[..r.text.len().min(300)]
        );
        assert!(
            r.text.ends_with(
                r#"Program output too large.","Kind":"system","Delay":0}],"Status":0,"IsTest":true,"TestsFailed":0}"#
            ),
            "{form:?} {}",
            &r.text[r.text.len().saturating_sub(300)..]
        );
    }
    d.stop().await;
}

const PRINTF: &str =
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Printf(\"%v\\n\")\n}\n";

async fn vet(backend: Backend) {
    let (d, _one) = start(backend).await;
    for form in [Form::Form, Form::Json] {
        let r = compile_with(&d, form, PRINTF, true).await;
        assert_eq!(
            r.text,
            r#"{"Errors":"","Events":[{"Message":"%!v(MISSING)\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":false,"TestsFailed":0,"VetErrors":"./prog.go:6:2: fmt.Printf format %v reads arg #1, but call has 0 args\n"}"#,
            "{form:?}"
        );
    }
    // Without vet: another answer, so another cache entry.
    let r = compile_with(&d, Form::Form, PRINTF, false).await;
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert_eq!(
        r.text,
        r#"{"Errors":"","Events":[{"Message":"%!v(MISSING)\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":false,"TestsFailed":0}"#
    );
    let r = compile_with(&d, Form::Json, MULTI, true).await;
    assert_eq!(
        r.text,
        r#"{"Errors":"","Events":[{"Message":"The Go Gopher\n","Kind":"stdout","Delay":0}],"Status":0,"IsTest":false,"TestsFailed":0,"VetOK":true}"#
    );
    // A build that fails is not vetted.
    let r = compile_with(
        &d,
        Form::Form,
        "package main\n\nfunc main() {\n\tx := 1\n}\n",
        true,
    )
    .await;
    assert_eq!(
        r.text,
        build_error("./prog.go:4:2: x declared but not used\n")
    );
    d.stop().await;
}

/// The Go playground's "Clear" example in short: each Printf starts with a form feed.
const CLEAR: &str = r#"package main

import (
	"fmt"
	"time"
)

func main() {
	for i := 0; i < 3; i++ {
		fmt.Printf("\x0c[%d]", i)
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("\x0cDone!\n")
}
"#;

/// The "Display image" example in short: a PNG as `IMAGE:` and base64.
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
	m := image.NewRGBA(image.Rect(0, 0, 40, 20))
	for x := 0; x < 40; x++ {
		for y := 0; y < 20; y++ {
			m.Set(x, y, color.RGBA{uint8(x * 6), uint8(y * 12), 200, 255})
		}
	}
	var buf bytes.Buffer
	png.Encode(&buf, m)
	fmt.Println("IMAGE:" + base64.StdEncoding.EncodeToString(buf.Bytes()))
}
"#;

async fn run_in_page(b: &mut Browser, program: &str) -> (String, String) {
    b.type_into("#code", program).await;
    b.click("#run").await;
    b.wait_for("document.body.dataset.state === 'done'").await;
    let v = b
        .eval("[document.getElementById('output').textContent, document.getElementById('status').textContent]")
        .await;
    (
        v[0].as_str().unwrap().to_owned(),
        v[1].as_str().unwrap().to_owned(),
    )
}

async fn page(backend: Backend) {
    let (d, _one) = start(backend).await;
    let mut b = Browser::start().await;
    b.open(&d.url("/")).await;
    // The language list comes from /languages; the editor gets the language's first program.
    b.wait_for("document.getElementById('lang').options.length === 1")
        .await;
    let code = b.eval("document.getElementById('code').value").await;
    assert!(code.as_str().unwrap().starts_with("package main"), "{code}");
    for transport in ["socket", "http"] {
        b.eval(&format!(
            "document.getElementById('transport').value = {}",
            json!(transport)
        ))
        .await;
        let (out, status) = run_in_page(&mut b, CLEAR).await;
        assert_eq!(
            (out.as_str(), status.as_str()),
            ("Done!\n", "Program exited."),
            "{transport}"
        );
        let (_, status) = run_in_page(&mut b, IMAGE).await;
        assert_eq!(status, "Program exited.");
        b.wait_for("(() => { const i = document.querySelector('#output img'); return i && i.complete && i.naturalWidth === 40; })()")
            .await;
        b.screenshot(&format!("go-page-{backend}-{transport}-image"))
            .await;
    }
    let (out, status) = run_in_page(&mut b, TESTS).await;
    assert!(out.contains("--- FAIL: TestFails"), "{out} / {status}");
    assert_eq!(status, "1 test failed.");
    let (out, status) = run_in_page(&mut b, "package main\n\nfunc main() {\n\tx := 1\n}\n").await;
    assert_eq!(
        (out.as_str(), status.as_str()),
        (
            "./prog.go:4:2: x declared but not used\n",
            "Go build failed."
        )
    );
    b.eval("document.getElementById('vet').checked = true")
        .await;
    let (out, status) = run_in_page(&mut b, PRINTF).await;
    assert_eq!(
        out,
        "./prog.go:6:2: fmt.Printf format %v reads arg #1, but call has 0 args\nGo vet exited.\n\n%!v(MISSING)\n"
    );
    assert_eq!(status, "Program exited.");
    b.screenshot(&format!("go-page-{backend}-vet")).await;
    d.stop().await;
}

macro_rules! both_backends {
    ($($check:ident),* $(,)?) => {
        $(
            mod $check {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn docker() {
                    super::$check(compilerd::config::Backend::Docker).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn bwrap() {
                    super::$check(compilerd::config::Backend::Bwrap).await
                }
            }
        )*
    };
}

both_backends!(
    fake_time,
    socket,
    zone_and_localhost,
    program_forms,
    test_mode,
    build_timeout,
    limits,
    vet,
    page
);
