//! Piston's v2 API with its published clients (piston-client from npm under Debian's nodejs,
//! aiopyston from PyPI), on real bwrap and Docker sandboxes with the toolchains of scripts/build-image.sh:
//! runtimes, Python with stdin and args, an alias without a version, C with a compile stage and a
//! compile error, a timeout, an unknown runtime, per-run limits, measurements and bad input.
//!
//! Needs /var/lib/compilerd/rootfs/{python,c}, the images compilerd-{python,c} and the clients scripts/setup-test-host.sh
//! installs under /var/lib/compilerd-test/clients; a missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestDaemon;
use compilerd::config::{Backend, LanguageSettings};
use serde_json::{Value, json};

const CLIENTS: &str = "/var/lib/compilerd-test/clients";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(backend: Backend) -> (TestDaemon, tokio::sync::MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().await;
    let table = |toml: &str| -> LanguageSettings { toml::from_str(toml).unwrap() };
    let mut c = common::config(backend);
    c.limits.timeout = Duration::from_millis(5000);
    c.limits.memory_bytes = 128 << 20;
    c.pool_size = 1;
    c.language_tables = BTreeMap::from([
        (
            "python".to_owned(),
            table("main-file = \"main.py\"\nrun-command = \"/usr/bin/python3 -B main.py\""),
        ),
        (
            "c".to_owned(),
            table(
                "main-file = \"main.c\"\ncompile-command = \"/usr/bin/gcc -O2 -o prog main.c -lm\"\n\
                 compile-keep = \"prog\"\nrun-command = \"./prog\"",
            ),
        ),
    ]);
    c.default_language = Some("python".to_owned());
    (TestDaemon::start(c).await, guard)
}

fn origin(d: &TestDaemon) -> String {
    d.url("").trim_end_matches('/').to_owned()
}

/// Runs a script of piston-client (`client` is bound to the daemon) and returns what it printed.
fn node(d: &TestDaemon, script: &str) -> Value {
    let program = format!(
        "import {{ piston }} from '{CLIENTS}/node_modules/piston-client/index.js';\n\
         const client = piston({{server: {:?}}});\n{script}",
        origin(d)
    );
    // An ES module: top-level await, an absolute import (NODE_PATH does not apply to those).
    let out = std::process::Command::new("node")
        .args(["--input-type=module", "-e"])
        .arg(program)
        .output()
        .expect("nodejs runs (scripts/setup-test-host.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs a script of aiopyston (`c` is a PystonClient bound to the daemon).
fn pyston(d: &TestDaemon, script: &str) -> Value {
    let program = format!(
        "import asyncio, json\nfrom pyston import PystonClient, File\n\
         async def main():\n    c = PystonClient(base_url={:?})\n    try:\n{}\n    finally:\n        await c.close_session()\nasyncio.run(main())\n",
        format!("{}/api/v2/", origin(d)),
        script
            .lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = std::process::Command::new(format!("{CLIENTS}/venv/bin/python"))
        .arg("-c")
        .arg(program)
        .output()
        .expect("aiopyston's venv (scripts/setup-test-host.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

async fn execute(d: &TestDaemon, body: Value) -> (u16, Value) {
    let r = d
        .client
        .post(d.url("/api/v2/execute"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ct, "application/json");
    (status, r.json().await.unwrap())
}

/// One test per backend.
macro_rules! both {
    ($name:ident, $flavor:literal) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = $flavor)]
            async fn bwrap() {
                super::$name(Backend::Bwrap).await
            }
            #[tokio::test(flavor = $flavor)]
            async fn docker() {
                super::$name(Backend::Docker).await
            }
        }
    };
}

both!(published_clients, "multi_thread");
both!(limits_and_measurements, "current_thread");
both!(bad_input_is_refused_and_nothing_runs, "current_thread");

async fn published_clients(backend: Backend) {
    let (d, _g) = start(backend).await;
    let d2 = &d;
    let (runtimes, py) = tokio::task::block_in_place(|| {
        let runtimes = pyston(
            d2,
            "rs = await c.runtimes()\nprint(json.dumps(sorted([r.language for r in rs])))",
        );
        let py = pyston(
            d2,
            "out = await c.execute('python', [File('import sys\\nprint(input(), sys.argv[1:])')], stdin='hi', args=['a', 'b'])\nprint(json.dumps(out.raw_json))",
        );
        (runtimes, py)
    });
    assert_eq!(runtimes, json!(["c", "python"]));
    assert_eq!(py["run"]["stdout"], "hi ['a', 'b']\n", "{py}");
    assert_eq!(py["run"]["code"], 0);
    assert_eq!(py["language"], "python");
    let (alias, c_ok, c_bad, timeout) = tokio::task::block_in_place(|| {
        let listed = node(d2, "console.log(JSON.stringify(await client.runtimes()));");
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["aliases"].as_array().unwrap().contains(&json!("py")))
        );
        (
            node(
                d2,
                "console.log(JSON.stringify(await client.execute('py', 'print(input())', {stdin: 'x'})));",
            ),
            node(
                d2,
                "console.log(JSON.stringify(await client.execute('c', '#include <stdio.h>\\nint main(int c, char **v){printf(\"%d %s\\\\n\", c, v[1]); return 0;}')));",
            ),
            node(
                d2,
                "console.log(JSON.stringify(await client.execute('gcc', 'int main(){ return nope; }')));",
            ),
            node(
                d2,
                "console.log(JSON.stringify(await client.execute('python', 'while True: pass', {runTimeout: 500})));",
            ),
        )
    });
    assert_eq!(alias["run"]["stdout"], "x\n", "{alias}");
    // piston-client's default args are ["1", "2", "3"].
    assert_eq!(c_ok["run"]["stdout"], "4 1\n", "{c_ok}");
    assert_eq!(c_ok["compile"]["code"], 0, "{c_ok}");
    assert_eq!(c_bad["compile"]["code"], 1, "{c_bad}");
    assert!(
        c_bad["compile"]["stderr"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{c_bad}"
    );
    assert_eq!(
        c_bad["run"], c_bad["compile"],
        "a failed compile's run mirrors it"
    );
    assert_eq!(timeout["run"]["status"], "TO", "{timeout}");
    assert_eq!(timeout["run"]["signal"], "SIGKILL", "{timeout}");
    assert_eq!(timeout["run"]["code"], Value::Null);
    let unknown = tokio::task::block_in_place(|| {
        node(
            d2,
            "console.log(JSON.stringify(await client.execute('cobol', 'x')));",
        )
    });
    assert_eq!(
        unknown["message"], "cobol-* runtime is unknown",
        "{unknown}"
    );
    d.stop().await;
}

async fn limits_and_measurements(backend: Backend) {
    let (d, _g) = start(backend).await;
    let py = |code: &str, extra: Value| {
        let mut b = json!({"language": "python", "version": "*", "files": [{"content": code}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass";
    let (s, r) = execute(&d, py(burn, json!({}))).await;
    assert_eq!(s, 200, "{r}");
    let cpu = r["run"]["cpu_time"].as_f64().unwrap();
    assert!((280.0..1000.0).contains(&cpu), "cpu_time {cpu}: {r}");
    assert!(r["run"]["wall_time"].as_f64().unwrap() >= cpu * 0.9, "{r}");
    let hold = "b = bytearray(50 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1";
    let (_, r) = execute(&d, py(hold, json!({}))).await;
    let mem = r["run"]["memory"].as_u64().expect("memory measured");
    assert!(mem >= 50 << 20, "memory {mem}: {r}");
    let (_, r) = execute(&d, py("while True: pass", json!({"run_cpu_time": 300}))).await;
    assert_eq!(
        (&r["run"]["status"], &r["run"]["message"]),
        (&json!("TO"), &json!("CPU time limit exceeded")),
        "{r}"
    );
    let (_, r) = execute(
        &d,
        py(
            "b = bytearray(100 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1",
            json!({"run_memory_limit": 32 << 20}),
        ),
    )
    .await;
    assert_eq!(r["run"]["message"], "Memory limit exceeded", "{r}");
    let (_, r) = execute(&d, py("print('x' * 5000)", json!({"output_max_size": 100}))).await;
    assert_eq!(r["run"]["status"], "OL", "{r}");
    assert_eq!(r["run"]["stdout"].as_str().unwrap().len(), 100, "{r}");
    // The cache answers the same request again, and only the same: stdin and args are in the key.
    let echo = |stdin: &str, args: Value| {
        py(
            "import sys\nprint(input(), sys.argv[1:])",
            json!({"stdin": stdin, "args": args}),
        )
    };
    let cache = |body: Value| {
        let d = &d;
        async move {
            let r = d
                .client
                .post(d.url("/api/v2/execute"))
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let hit = r.headers()["x-cache"].to_str().unwrap().to_owned();
            let out: Value = r.json().await.unwrap();
            (hit, out["run"]["stdout"].as_str().unwrap().to_owned())
        }
    };
    let first = cache(echo("a", json!(["x"]))).await;
    assert_eq!(first, ("MISS".into(), "a ['x']\n".into()));
    assert_eq!(
        cache(echo("a", json!(["x"]))).await,
        ("HIT".into(), first.1)
    );
    assert_eq!(
        cache(echo("b", json!(["x"]))).await,
        ("MISS".into(), "b ['x']\n".into())
    );
    assert_eq!(
        cache(echo("a", json!(["y"]))).await,
        ("MISS".into(), "a ['y']\n".into())
    );
    let (s, r) = execute(&d, py("print(1)", json!({"run_memory_limit": 1u64 << 40}))).await;
    assert_eq!(s, 400);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("cannot exceed the configured limit"),
        "{r}"
    );
    d.stop().await;
}

async fn bad_input_is_refused_and_nothing_runs(backend: Backend) {
    let (d, _g) = start(backend).await;
    // Every run of every language and outcome.
    let runs = || -> f64 {
        d.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("compilerd_runs_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = runs();
    let file = |name: &str| json!({"name": name, "content": "print(1)"});
    let cases = [
        json!({"language": "python", "files": [file("../x.py")]}),
        json!({"language": "python", "files": [file("main.py"), file("/etc/passwd")]}),
        json!({"language": "python", "files": (0..40).map(|i| file(&format!("f{i}.py"))).collect::<Vec<_>>()}),
        json!({"language": "python", "files": [file("main.py")], "stdin": "x".repeat(2 << 20)}),
        json!({"language": "python", "files": [file("main.py")], "args": ["a\u{0}b"]}),
        json!({"language": "python"}),
    ];
    for body in cases {
        let (s, r) = execute(&d, body).await;
        assert_eq!(s, 400, "{r}");
        assert!(r["message"].is_string(), "{r}");
    }
    let r = d
        .client
        .post(d.url("/api/v2/execute/"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(runs(), before);
    d.stop().await;
}

/// A client of Piston's WebSocket protocol.
struct Connect {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What the server sent: a message, or the close with its code.
#[derive(Debug, PartialEq)]
enum Got {
    Msg(Value),
    Closed(u16),
}

impl Connect {
    async fn open(d: &TestDaemon) -> Connect {
        let url = d.url("/api/v2/connect").replacen("http://", "ws://", 1);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Connect { ws }
    }

    async fn send(&mut self, v: Value) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Got {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = Duration::from_secs(60);
        loop {
            let m = tokio::time::timeout(deadline, self.ws.next())
                .await
                .expect("the server answers");
            match m {
                Some(Ok(Message::Text(t))) => return Got::Msg(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(Some(f)))) => return Got::Closed(f.code.into()),
                Some(Ok(Message::Close(None))) | None => return Got::Closed(1005),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }

    /// Messages up to the first that `until` accepts (included).
    async fn until(&mut self, until: impl Fn(&Got) -> bool) -> Vec<Got> {
        let mut got = Vec::new();
        loop {
            let g = self.next().await;
            let done = until(&g) || matches!(g, Got::Closed(_));
            got.push(g);
            if done {
                return got;
            }
        }
    }

    /// Output of one stream until `text` has appeared in it.
    async fn wait_for(&mut self, text: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(text) {
            match self.next().await {
                Got::Msg(m) if m["type"] == "data" => seen.push_str(m["data"].as_str().unwrap()),
                Got::Msg(_) => {}
                Got::Closed(c) => panic!("closed ({c}) before {text:?}; saw {seen:?}"),
            }
        }
        seen
    }
}

fn init(code: &str, args: Value) -> Value {
    json!({"type": "init", "language": "python", "files": [{"content": code}], "args": args})
}

/// The exit message and the close code at the end of a session.
async fn ending(c: &mut Connect) -> (Value, u16) {
    let got = c
        .until(|g| matches!(g, Got::Msg(m) if m["type"] == "exit"))
        .await;
    let exit = match got.last() {
        Some(Got::Msg(m)) => m.clone(),
        other => panic!("no exit: {other:?} in {got:?}"),
    };
    (
        exit,
        match c.next().await {
            Got::Closed(code) => code,
            other => panic!("{other:?}"),
        },
    )
}

both!(live_stdin, "current_thread");

async fn live_stdin(backend: Backend) {
    let (d, _g) = start(backend).await;
    // Reads two lines while it runs.
    let mut c = Connect::open(&d).await;
    c.send(init(
        "a = input()\nprint('got', a, flush=True)\nb = input()\nprint('got', b, flush=True)",
        json!([]),
    ))
    .await;
    let first = c.next().await;
    assert_eq!(
        first,
        Got::Msg(json!({"type": "runtime", "language": "python", "version": "3.11.2"}))
    );
    assert_eq!(
        c.next().await,
        Got::Msg(json!({"type": "stage", "stage": "run"}))
    );
    c.send(json!({"type": "data", "stream": "stdin", "data": "one\n"}))
        .await;
    c.wait_for("got one\n").await;
    c.send(json!({"type": "data", "stream": "stdin", "data": "two\n"}))
        .await;
    c.wait_for("got two\n").await;
    let (exit, code) = ending(&mut c).await;
    assert_eq!(
        exit,
        json!({"type": "exit", "stage": "run", "code": 0, "signal": null})
    );
    assert_eq!(code, 4999);

    // The client ends stdin.
    let mut c = Connect::open(&d).await;
    c.send(init("import sys\nprint(len(sys.stdin.read()))", json!([])))
        .await;
    c.send(json!({"type": "data", "stream": "stdin", "data": "abc"}))
        .await;
    c.send(json!({"type": "eof"})).await;
    c.wait_for("3\n").await;
    let (exit, _) = ending(&mut c).await;
    assert_eq!(exit["code"], 0);

    // A signal reaches the program.
    let mut c = Connect::open(&d).await;
    c.send(init(
        "import signal, sys, time\ngot = []\n\
         signal.signal(signal.SIGINT, lambda *a: got.append(1))\n\
         print('ready', flush=True)\nwhile not got: time.sleep(0.01)\n\
         time.sleep(0.2)\nprint('got INT', len(got), flush=True)\nsys.exit(3)",
        json!([]),
    ))
    .await;
    c.wait_for("ready").await;
    c.send(json!({"type": "signal", "signal": "SIGINT"})).await;
    // Once: the program's processes get it, the relay does not.
    c.wait_for("got INT 1\n").await;
    let (exit, _) = ending(&mut c).await;
    assert_eq!(exit["code"], 3, "{exit}");

    // A compiled language: the compile stage, then the run with live stdin.
    let mut c = Connect::open(&d).await;
    c.send(json!({"type": "init", "language": "c", "files": [{"content":
        "#include <stdio.h>\nint main(void){char s[64]; if(fgets(s,64,stdin)) printf(\"c:%s\", s); return 0;}"}]}))
        .await;
    let got = c
        .until(|g| matches!(g, Got::Msg(m) if m["type"] == "stage" && m["stage"] == "run"))
        .await;
    assert!(
        got.contains(&Got::Msg(
            json!({"type": "exit", "stage": "compile", "code": 0, "signal": null})
        )),
        "{got:?}"
    );
    c.send(json!({"type": "data", "stream": "stdin", "data": "hi\n"}))
        .await;
    c.wait_for("c:hi\n").await;
    assert_eq!(ending(&mut c).await.0["code"], 0);

    // A client that vanishes leaves nothing running.
    let marker = format!("vanish-{}", std::process::id());
    let mut c = Connect::open(&d).await;
    c.send(init(
        "import time\nprint('ready', flush=True)\ntime.sleep(60)",
        json!([marker]),
    ))
    .await;
    c.wait_for("ready").await;
    let running = || {
        procfs::process::all_processes()
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|p| p.cmdline().ok())
            .any(|args| args.iter().any(|a| a == &marker))
    };
    assert!(running(), "the program runs while its client is there");
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the program outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.wait_metric("compilerd_runs_in_flight", |v| v == 0.0)
        .await;

    // Protocol errors: no init in time, an unknown signal, an unknown runtime.
    let mut c = Connect::open(&d).await;
    assert_eq!(c.next().await, Got::Closed(4001));
    let mut c = Connect::open(&d).await;
    c.send(init(
        "import time\nprint('ready', flush=True)\ntime.sleep(60)",
        json!([]),
    ))
    .await;
    c.wait_for("ready").await;
    c.send(json!({"type": "signal", "signal": "SIGNOPE"})).await;
    let got = c.until(|_| false).await;
    assert_eq!(got.last(), Some(&Got::Closed(4005)), "{got:?}");
    let mut c = Connect::open(&d).await;
    c.send(json!({"type": "init", "language": "cobol", "files": [{"content": "x"}]}))
        .await;
    let got = c.until(|_| false).await;
    assert_eq!(
        got,
        vec![
            Got::Msg(json!({"type": "error", "message": "cobol-* runtime is unknown"})),
            Got::Closed(4002)
        ]
    );
    d.stop().await;
}

/// The playground page's input box, over Piston's WebSocket, in a real browser (bwrap, the
/// busybox rootfs as the default language).
#[tokio::test]
async fn page_sends_input_to_a_running_program() {
    let _g = ONE_AT_A_TIME.lock().await;
    let mut c = common::config(Backend::Bwrap);
    let root = common::test_rootfs();
    c.language_tables = BTreeMap::from([(
        "sh".to_owned(),
        toml::from_str(&format!(
            "rootfs = {:?}\ncommand = \"/bin/sh\"\nmain-file = \"main.sh\"\nrun-command = \"/bin/sh main.sh\"",
            root.display().to_string()
        ))
        .unwrap(),
    )]);
    c.default_language = Some("sh".to_owned());
    let d = TestDaemon::start(c).await;
    let mut b = common::cdp::Browser::start().await;
    b.open(&d.url("/")).await;
    b.eval("document.getElementById('transport').value = 'piston'")
        .await;
    b.type_into(
        "#code",
        "read a; echo \"got $a\"; read b; echo \"got $b\" >&2; cat; echo end",
    )
    .await;
    b.click("#run").await;
    let output = "document.querySelector('#output').textContent";
    for (line, shown) in [("one", "got one"), ("two", "got two"), ("three", "three\n")] {
        b.wait_for("!document.getElementById('stdin').disabled")
            .await;
        b.type_into("#stdin", line).await;
        b.click("#send").await;
        b.wait_for(&format!("{output}.includes({})", json!(shown)))
            .await;
    }
    b.click("#eof").await;
    b.wait_for("document.body.dataset.state === 'done'").await;
    let shown = b
        .eval(
            "(() => { const t = c => [...document.querySelectorAll('#output .' + c)].map(e => e.textContent).join(''); \
             return [t('stdout'), t('stderr'), t('stdin'), document.getElementById('status').textContent]; })()",
        )
        .await;
    assert_eq!(
        shown,
        json!([
            "got one\nthree\nend\n",
            "got two\n",
            "one\ntwo\nthree\n",
            "Program exited."
        ])
    );
    b.screenshot("playground-piston-input").await;
    d.stop().await;
}
