//! The Judge0 CE API with its official SDK (`judge0==0.0.8` from PyPI) and `judge0-client`, on
//! real bwrap sandboxes with the toolchains of scripts/build-image.sh, on the in-process queue:
//! stdin, an alias through /about, three test cases through the batch endpoints, a C compile
//! error, a segfault, sys.exit(3), a CPU-time limit, Go, a memory limit above the operator's
//! maximum; then the wire format, every 422 path and the other bad input, and the tokens.
//!
//! Needs /var/lib/compilerd/rootfs/{python,c,go} and the venv scripts/setup-test-host.sh makes
//! under /var/lib/compilerd-test/clients; a missing one fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestDaemon;
use compilerd::config::{Backend, Config, LanguageSettings};
use serde_json::{Value, json};

const VENV_PYTHON: &str = "/var/lib/compilerd-test/clients/venv/bin/python";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Python, C and Go with their stages, the Judge0 API at /judge0.
pub fn judge0_config(backend: Backend) -> Config {
    let table = |toml: &str| -> LanguageSettings { toml::from_str(toml).unwrap() };
    let mut c = common::config(backend);
    c.limits.timeout = Duration::from_millis(5000);
    c.limits.memory_bytes = 256 << 20;
    c.limits.tmpfs_bytes = 256 << 20;
    c.pool_size = 1;
    c.language_tables = BTreeMap::from([
        (
            "python".to_owned(),
            table("main-file = \"main.py\"\nrun-command = \"/usr/bin/python3 -B main.py\""),
        ),
        (
            "c".to_owned(),
            table(
                "main-file = \"main.c\"\ncompile-command = \"/usr/bin/gcc -o prog main.c -lm\"\n\
                 compile-keep = \"prog\"\nrun-command = \"./prog\"",
            ),
        ),
        (
            "go".to_owned(),
            table(
                "main-file = \"prog.go\"\n\
                 compile-command = \"/usr/lib/go-1.19/bin/go build -o prog prog.go\"\n\
                 compile-keep = \"prog\"\nrun-command = \"./prog\"\ntimeout = \"30s\"",
            ),
        ),
    ]);
    c.default_language = Some("python".to_owned());
    c.judge0.compiler_options = vec!["-O2".into(), "-Wall".into()];
    c.judge0.callback_hosts = vec!["127.0.0.1".into()];
    c
}

async fn start(c: Config) -> (TestDaemon, tokio::sync::MutexGuard<'static, ()>) {
    let guard = ONE_AT_A_TIME.lock().await;
    (TestDaemon::start(c).await, guard)
}

/// Runs `script` in the clients' venv with `URL` bound to the daemon's Judge0 endpoint; returns
/// what it printed as JSON.
pub fn python(d: &TestDaemon, script: &str) -> Value {
    let program = format!("import json, sys\nURL = {:?}\n{script}", d.url("/judge0"));
    let out = std::process::Command::new(VENV_PYTHON)
        .arg("-c")
        .arg(program)
        .output()
        .expect("the clients' venv (scripts/setup-test-host.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const SDK_SCRIPT: &str = r#"
import judge0
c = judge0.Client(URL)
out = {}
def run(**kw):
    return judge0.run(client=c, **kw)
r = run(source_code="print(input())", language=71, stdin="world")
out["stdin"] = [r.stdout, int(r.status), r.time, r.memory, r.token is not None]
r = run(source_code="print('alias')", language=judge0.PYTHON)
out["alias"] = [r.stdout, int(r.status)]
rs = run(source_code="print(int(input()) * 2)", language=71,
         test_cases=[("1", "2"), ("2", "5"), ("3", "6\n")])
out["cases"] = [int(s.status) for s in rs]
r = run(source_code="int main(void) { return nope; }", language=judge0.C)
out["ce"] = [int(r.status), r.compile_output, r.stdout]
r = run(source_code="int main(void) { *(volatile int *)0 = 1; return 0; }", language=50)
out["segv"] = [int(r.status), r.exit_signal]
r = run(source_code="import sys\nsys.exit(3)", language=71)
# SDK 0.0.8 leaves `message` in base64, as Judge0 sends it.
import base64
out["exit3"] = [int(r.status), r.exit_code, base64.b64decode(r.message).decode()]
r = run(source_code="while True: pass", language=71, cpu_time_limit=0.5)
out["tle"] = [int(r.status), r.time]
if WITH_GO:
    r = run(source_code='package main\nimport "fmt"\nfunc main() { fmt.Println("go", 1+1) }',
            language=judge0.GO)
    out["go"] = [r.stdout, int(r.status), r.compile_output]
fs = judge0.Filesystem(content=[judge0.File(name="mod.py", content="X = 5")])
r = run(source_code="import mod\nprint(mod.X * 2)", language=71, additional_files=fs)
out["files"] = [r.stdout, int(r.status)]
try:
    run(source_code="print(1)", language=71, memory_limit=10 ** 9)
    out["mem"] = "accepted"
except Exception as e:
    out["mem"] = [e.response.status_code, e.response.json()]
print(json.dumps(out))
"#;

mod official_sdk {
    use super::*;
    #[tokio::test(flavor = "multi_thread")]
    async fn bwrap() {
        official_sdk(Backend::Bwrap).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn docker() {
        official_sdk(Backend::Docker).await
    }
}

async fn official_sdk(backend: Backend) {
    let (d, _g) = start(judge0_config(backend)).await;
    let d2 = &d;
    // Go's build in a cold container takes tens of seconds on a loaded machine: Go is judged on
    // bwrap only.
    let with_go = if backend == Backend::Bwrap {
        "True"
    } else {
        "False"
    };
    let script = format!("WITH_GO = {with_go}\n{SDK_SCRIPT}");
    let out = tokio::task::block_in_place(|| python(d2, &script));
    let stdin = &out["stdin"];
    assert_eq!(stdin[0], "world\n", "{out}");
    assert_eq!(stdin[1], 3, "{out}");
    assert!(stdin[2].as_f64().unwrap() < 1.0, "{out}");
    assert!(stdin[3].as_f64().unwrap() > 1000.0, "memory in KB: {out}");
    assert_eq!(stdin[4], true);
    assert_eq!(out["alias"], json!(["alias\n", 3]));
    assert_eq!(out["cases"], json!([3, 4, 3]), "{out}");
    assert_eq!(out["ce"][0], 6, "{out}");
    assert!(out["ce"][1].as_str().unwrap().contains("nope"), "{out}");
    assert_eq!(out["ce"][2], Value::Null);
    assert_eq!(out["segv"], json!([7, 11]), "{out}");
    assert_eq!(
        out["exit3"],
        json!([11, 3, "Exited with error status 3"]),
        "{out}"
    );
    assert_eq!(out["tle"][0], 5, "{out}");
    let cpu = out["tle"][1].as_f64().unwrap();
    assert!((0.4..2.0).contains(&cpu), "{out}");
    assert_eq!(out["files"], json!(["10\n", 3]), "{out}");
    if backend == Backend::Bwrap {
        assert_eq!(out["go"][0], "go 2\n", "{out}");
        assert_eq!(out["go"][1], 3, "{out}");
    }
    assert_eq!(
        out["mem"],
        json!([422, {"memory_limit": ["must be less than or equal to 524288"]}]),
        "{out}"
    );
    let verdicts = |s: &str| {
        common::find_metric(
            &d.metrics.render(),
            &format!("compilerd_judge0_verdicts_total{{status=\"{s}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(verdicts("Accepted") >= 5.0);
    assert_eq!(verdicts("Wrong Answer"), 1.0);
    d.stop().await;
}

/// Judge0's multi-file language through the official SDK (`judge0.MULTI_FILE`, a Filesystem as
/// `additional_files`): a table with `judge0-id = 89` on the C image. The compile script's output,
/// which only the script names, reaches the run; a script without compile runs as is; a failing
/// compile script is a Compilation Error; and what the API refuses for id 89.
const MULTI_SCRIPT: &str = r##"
import judge0
c = judge0.Client(URL)
out = {}
def fs(files):
    return judge0.Filesystem(content=[judge0.File(name=n, content=v) for n, v in files])
def run(files, **kw):
    return judge0.run(client=c, source_code="", language=judge0.MULTI_FILE,
                      additional_files=fs(files), **kw)
r = run([("main.c", "#include <stdio.h>\nint main(void) { int n; scanf(\"%d\", &n); printf(\"%d\\n\", 2 * n); return 0; }\n"),
         ("compile", "gcc -o twice main.c\n"), ("run", "./twice\n")], stdin="21", expected_output="42")
out["compiled"] = [r.stdout, int(r.status)]
r = run([("data.txt", "from a file\n"), ("run", "cat data.txt\n")])
out["script"] = [r.stdout, int(r.status)]
r = run([("compile", "echo broken >&2\nexit 1\n"), ("run", "echo never\n")])
out["ce"] = [int(r.status), r.compile_output, r.stdout]
print(json.dumps(out))
"##;

mod multi_file {
    use super::*;
    #[tokio::test(flavor = "multi_thread")]
    async fn bwrap() {
        multi_file(Backend::Bwrap).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn docker() {
        multi_file(Backend::Docker).await
    }
}

async fn multi_file(backend: Backend) {
    let mut c = judge0_config(backend);
    c.language_tables.insert(
        "multi".to_owned(),
        toml::from_str(
            "judge0-id = 89\nrootfs = \"/var/lib/compilerd/rootfs/c\"\nimage = \"compilerd-c\"",
        )
        .unwrap(),
    );
    let (d, _g) = start(c).await;
    let (s, langs) = get(&d, "/languages").await;
    assert_eq!(s, 200);
    assert!(
        langs
            .as_array()
            .unwrap()
            .contains(&json!({"id": 89, "name": "Multi-file program"})),
        "{langs}"
    );
    let d2 = &d;
    let out = tokio::task::block_in_place(|| python(d2, MULTI_SCRIPT));
    assert_eq!(out["compiled"], json!(["42\n", 3]), "{out}");
    assert_eq!(out["script"], json!(["from a file\n", 3]), "{out}");
    assert_eq!(out["ce"][0], 6, "{out}");
    assert!(out["ce"][1].as_str().unwrap().contains("broken"), "{out}");
    assert_eq!(out["ce"][2], Value::Null, "{out}");
    // What id 89 refuses: a source file, no zip, a zip without its run script.
    let zip = zips(&d)["module"].clone();
    for (body, field) in [
        (
            json!({"language_id": 89, "source_code": "x", "additional_files": zip}),
            "source_code",
        ),
        (
            json!({"language_id": 89, "source_code": ""}),
            "additional_files",
        ),
        (
            json!({"language_id": 89, "additional_files": zip}),
            "additional_files",
        ),
    ] {
        let (s, v) = post(&d, "/submissions?base64_encoded=false", body).await;
        assert_eq!(s, 422, "{v}");
        assert!(v.get(field).is_some(), "{field}: {v}");
    }
    d.stop().await;
}

/// `judge0-client` (async): creates a submission and polls it until it is judged.
#[tokio::test(flavor = "multi_thread")]
async fn judge0_client_creates_and_polls() {
    let (d, _g) = start(judge0_config(Backend::Bwrap)).await;
    let d2 = &d;
    let out = tokio::task::block_in_place(|| {
        python(
            d2,
            r#"
import asyncio
from judge0_client import Judge0Client, SingleFileSubmission
async def main():
    async with Judge0Client(URL) as c:
        about = await c.get_about()
        t = await c.create_submission(SingleFileSubmission(source_code="print('hi', input())", language_id=71, stdin="you"))
        while True:
            r = await c.get_submission(t.token)
            if r.status.id > 2:
                break
            await asyncio.sleep(0.05)
        print(json.dumps({"version": about.version, "status": r.status.id,
                          "description": r.status.description, "stdout": r.stdout}))
asyncio.run(main())
"#,
        )
    });
    assert_eq!(
        out,
        json!({"version": "1.13.1", "status": 3, "description": "Accepted", "stdout": "hi you\n"})
    );
    d.stop().await;
}

/// Zip archives made by Python's zipfile (deflated), base64: a module and a package, an entry
/// with `..`, a symlink, a bomb (64 MiB of zeros), one that holds the main file's name.
fn zips(d: &TestDaemon) -> Value {
    python(
        d,
        r#"
import zipfile, io, base64
def z(entries):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as f:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = mode << 16
            f.writestr(info, data)
    return base64.b64encode(b.getvalue()).decode()
print(json.dumps({
    "module": z([("mod.py", "X = 5\n", 0o100644), ("pkg/__init__.py", "", 0o100644),
                 ("pkg/sub.py", "Y = 6\n", 0o100644)]),
    "dotdot": z([("../evil.py", "x", 0o100644)]),
    "link": z([("mod.py", "/etc/passwd", 0o120777)]),
    "bomb": z([("big", b"\0" * (64 << 20), 0o100644)]),
    "main": z([("main.py", "x", 0o100644)]),
}))
"#,
    )
}

async fn call(
    d: &TestDaemon,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut r = d.client.request(method, d.url(&format!("/judge0{path}")));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

async fn post(d: &TestDaemon, path: &str, body: Value) -> (u16, Value) {
    let (s, v, _) = call(d, reqwest::Method::POST, path, Some(body)).await;
    (s, v)
}

async fn get(d: &TestDaemon, path: &str) -> (u16, Value) {
    let (s, v, _) = call(d, reqwest::Method::GET, path, None).await;
    (s, v)
}

/// Polls until the submission is judged; the server's own states, not a guessed delay.
async fn judged(d: &TestDaemon, token: &str, query: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = get(d, &format!("/submissions/{token}?{query}")).await;
        assert_eq!(s, 200, "{v}");
        if v["status"]["id"].as_u64().unwrap() > 2 {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never judged: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wire_format_and_info() {
    let (d, _g) = start(judge0_config(Backend::Bwrap)).await;
    let (s, v) = post(
        &d,
        "/submissions/?base64_encoded=false&wait=true&fields=*",
        json!({"source_code": "import sys\nprint(sys.argv[1:], input())\nprint('e', file=sys.stderr)",
               "language_id": 71, "stdin": "in", "command_line_arguments": "a b",
               "expected_output": "['a', 'b'] in\n"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["stdout"], "['a', 'b'] in\n");
    assert_eq!(v["stderr"], "e\n");
    assert_eq!(v["status"], json!({"id": 3, "description": "Accepted"}));
    assert_eq!(v["language"]["name"], "Python (3.11.2)", "{v}");
    assert_eq!(v["exit_code"], 0);
    let time = v["time"].as_str().expect("time is a decimal string");
    assert!(time.len() == 5 && time.starts_with("0."), "{v}");
    assert!(v["wall_time"].is_string());
    assert!(v["memory"].is_u64());
    for ts in ["created_at", "finished_at"] {
        let t = v[ts].as_str().unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[19..20] == ".",
            "{ts}: {t}"
        );
    }
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 35, "{keys:?}");
    // The same through GET, base64 with Ruby's line breaks, and the default fields.
    let token = v["token"].as_str().unwrap().to_owned();
    let (s, g) = get(&d, &format!("/submissions/{token}/?base64_encoded=true")).await;
    assert_eq!(s, 200);
    assert_eq!(g["stdout"], "WydhJywgJ2InXSBpbgo=\n", "{g}");
    let mut keys: Vec<&str> = g.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "compile_output",
            "memory",
            "message",
            "status",
            "stderr",
            "stdout",
            "time",
            "token"
        ]
    );
    // redirect_stderr_to_stdout, queued, In Queue/Processing → judged.
    let (s, v) = post(
        &d,
        "/submissions",
        json!({"source_code": "import sys\nprint(1, flush=True)\nprint(2, file=sys.stderr, flush=True)\nprint(3)",
               "language_id": 71, "redirect_stderr_to_stdout": true}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(v.as_object().unwrap().len(), 1, "only the token: {v}");
    let v = judged(
        &d,
        v["token"].as_str().unwrap(),
        "fields=stdout,stderr,status",
    )
    .await;
    assert_eq!(v["stdout"], "1\n2\n3\n", "{v}");
    assert_eq!(v["stderr"], Value::Null);
    // compiler_options from the allow-list reach the compiler.
    let (s, v) = post(
        &d,
        "/submissions?wait=true",
        json!({"source_code": "int main(void) { int x; return 0; }", "language_id": 50,
               "compiler_options": "-Wall"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        v["compile_output"]
            .as_str()
            .unwrap_or("")
            .contains("unused variable"),
        "{v}"
    );
    // additional_files, deflated by Python's zipfile: a module and a package beside the program.
    let d2 = &d;
    let z = tokio::task::block_in_place(|| zips(d2));
    let (s, v) = post(
        &d,
        "/submissions?wait=true",
        json!({"source_code": "import mod, pkg.sub\nprint(mod.X + pkg.sub.Y)", "language_id": 71,
               "additional_files": z["module"]}),
    )
    .await;
    assert_eq!((s, &v["stdout"]), (201, &json!("11\n")), "{v}");
    // callback_url: the judged submission is PUT there, base64, Judge0's default fields.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/done?x=1",
        hook.local_addr().unwrap().port()
    );
    let (s, v) = post(
        &d,
        "/submissions",
        json!({"source_code": "print('called back')", "language_id": 71, "callback_url": url}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (request, body) = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = hook.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if body.len() >= len || n == 0 {
                    conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .unwrap();
                    return (head.to_owned(), body.to_owned());
                }
            }
        }
    })
    .await
    .expect("the callback came");
    assert!(request.starts_with("PUT /done?x=1 HTTP/1.1"), "{request}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["token"], v["token"]);
    assert_eq!(body["status"]["id"], 3, "{body}");
    assert_eq!(body["stdout"], "Y2FsbGVkIGJhY2sK\n", "{body}");
    // The information endpoints.
    let (_, langs) = get(&d, "/languages").await;
    assert_eq!(
        langs,
        json!([{"id": 50, "name": "C (GCC 12.2.0)"}, {"id": 60, "name": "Go (1.19.8)"},
               {"id": 71, "name": "Python (3.11.2)"}])
    );
    let (_, l) = get(&d, "/languages/50").await;
    assert_eq!(l["source_file"], "main.c");
    assert_eq!(get(&d, "/languages/3").await.0, 404);
    let (_, st) = get(&d, "/statuses").await;
    assert_eq!(st.as_array().unwrap().len(), 14);
    let (_, ci) = get(&d, "/config_info").await;
    assert_eq!(ci.as_object().unwrap().len(), 39, "{ci}");
    assert_eq!(ci["allow_enable_network"], false);
    assert_eq!(ci["max_memory_limit"], 524288);
    assert_eq!(ci["wall_time_limit"], 5.0);
    assert_eq!(ci["max_submission_batch_size"], 20);
    let (_, w) = get(&d, "/workers").await;
    assert_eq!(w[0]["available"], 4, "{w}");
    assert!(get(&d, "/system_info").await.1["CPU(s)"].is_string());
    let (s, _, text) = call(&d, reqwest::Method::GET, "/version", None).await;
    assert_eq!((s, text.as_str()), (200, "1.13.1"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input() {
    let (d, _g) = start(judge0_config(Backend::Bwrap)).await;
    let runs = || -> f64 {
        d.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("compilerd_runs_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let d2 = &d;
    let z = tokio::task::block_in_place(|| zips(d2));
    let before = runs();
    let py = |extra: Value| {
        let mut b = json!({"source_code": "print(1)", "language_id": 71});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"source_code": "x"}), "language_id", "can't be blank"),
        (
            py(json!({"language_id": 150000})),
            "language_id",
            "language with id 150000 doesn't exist",
        ),
        (
            py(json!({"language_id": "abc"})),
            "language_id",
            "is not a number",
        ),
        (json!({"language_id": 71}), "source_code", "can't be blank"),
        (
            py(json!({"source_code": ""})),
            "source_code",
            "can't be blank",
        ),
        (
            py(json!({"cpu_time_limit": 16})),
            "cpu_time_limit",
            "must be less than or equal to 15",
        ),
        (
            py(json!({"cpu_time_limit": -1})),
            "cpu_time_limit",
            "must be greater than or equal to 0",
        ),
        (
            py(json!({"cpu_time_limit": "x"})),
            "cpu_time_limit",
            "is not a number",
        ),
        (
            py(json!({"wall_time_limit": 21})),
            "wall_time_limit",
            "must be less than or equal to 15",
        ),
        (
            py(json!({"memory_limit": 1000})),
            "memory_limit",
            "must be greater than or equal to 2048",
        ),
        (
            py(json!({"memory_limit": 1e9})),
            "memory_limit",
            "must be less than or equal to 524288",
        ),
        (
            py(json!({"max_processes_and_or_threads": 0})),
            "max_processes_and_or_threads",
            "must be greater than or equal to 1",
        ),
        (
            py(json!({"max_processes_and_or_threads": 1000})),
            "max_processes_and_or_threads",
            "must be less than or equal to 256",
        ),
        (
            py(json!({"number_of_runs": 21})),
            "number_of_runs",
            "must be less than or equal to 20",
        ),
        (
            py(json!({"cpu_extra_time": 6})),
            "cpu_extra_time",
            "must be less than or equal to 5",
        ),
        (
            py(json!({"stack_limit": 200000})),
            "stack_limit",
            "must be less than or equal to 128000",
        ),
        (
            py(json!({"max_file_size": 5000})),
            "max_file_size",
            "must be less than or equal to 4096",
        ),
        (
            py(json!({"enable_network": true})),
            "enable_network",
            "enabling network is not allowed",
        ),
        (
            py(json!({"redirect_stderr_to_stdout": 3})),
            "redirect_stderr_to_stdout",
            "is not a boolean",
        ),
        (
            py(json!({"callback_url": "http://evil.example/x"})),
            "callback_url",
            "host \"evil.example\" is not allowed",
        ),
        (
            py(json!({"callback_url": "https://127.0.0.1/x"})),
            "callback_url",
            "is not an http:// URL",
        ),
        (
            py(json!({"compiler_options": "-O2"})),
            "compiler_options",
            "setting compiler options is only allowed for compiled languages",
        ),
        (
            py(json!({"language_id": 50, "compiler_options": "-fplugin=x"})),
            "compiler_options",
            "option \"-fplugin=x\" is not allowed",
        ),
        (
            py(json!({"compiler_options": "x".repeat(513)})),
            "compiler_options",
            "is too long (maximum is 512 characters)",
        ),
        (
            py(json!({"command_line_arguments": "x".repeat(513)})),
            "command_line_arguments",
            "is too long (maximum is 512 characters)",
        ),
        (
            py(json!({"stdin": "x".repeat((1 << 20) + 1)})),
            "stdin",
            "is too long (maximum is 1048576 bytes)",
        ),
        (py(json!({"stdin": 5})), "stdin", "is not a string"),
        (
            py(json!({"additional_files": "bm90IGEgemlw"})),
            "additional_files",
            "is not a valid zip archive: no end of central directory",
        ),
        (
            py(json!({"additional_files": z["dotdot"]})),
            "additional_files",
            "holds \"../evil.py\": paths must be relative, without .. or empty parts",
        ),
        (
            py(json!({"additional_files": z["link"]})),
            "additional_files",
            "holds a link, \"mod.py\": links are not extracted",
        ),
        (
            py(json!({"additional_files": z["bomb"]})),
            "additional_files",
            "is over the bounds: 1048576 bytes a file, 4194304 together",
        ),
        (
            py(json!({"additional_files": z["main"]})),
            "additional_files",
            "holds \"main.py\", the name of the main file",
        ),
    ];
    for (body, field, message) in &cases {
        let (s, v) = post(&d, "/submissions?base64_encoded=false", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(v[field], json!([message]), "{body}: {v}");
    }
    // Invalid base64, field by field.
    for field in ["source_code", "stdin", "expected_output"] {
        let mut body = json!({"source_code": "cHJpbnQoMSk=", "language_id": 71});
        body[field] = json!("not*base64!");
        let (s, v) = post(&d, "/submissions?base64_encoded=true", body).await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(v[field], json!(["is not valid base64"]), "{v}");
    }
    // A batch: 21 is too many, 0 too few, one bad item among good ones is answered in place.
    let many: Vec<Value> = (0..21).map(|_| py(json!({}))).collect();
    let (s, v) = post(&d, "/submissions/batch", json!({"submissions": many})).await;
    assert_eq!(
        (s, v),
        (
            400,
            json!({"error": "number of submissions in a batch should be less than or equal to 20"})
        )
    );
    let (s, v) = post(&d, "/submissions/batch", json!({"submissions": []})).await;
    assert_eq!(
        (s, v),
        (
            400,
            json!({"error": "there should be at least one submission in a batch"})
        )
    );
    let (s, v) = post(
        &d,
        "/submissions/batch",
        json!({"submissions": [{"language_id": 71}, {"language_id": 1}]}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v[1]["language_id"],
        json!(["language with id 1 doesn't exist"])
    );
    // Unknown tokens, bad fields, malformed JSON.
    let (s, v) = get(&d, "/submissions/00000000-0000-4000-8000-000000000000").await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = get(&d, "/submissions/batch?tokens=nope,nada").await;
    assert_eq!((s, v), (200, json!({"submissions": [null, null]})));
    let (s, v) = get(&d, "/submissions/batch").await;
    assert_eq!(s, 400, "{v}");
    let tokens: Vec<String> = (0..21).map(|i| i.to_string()).collect();
    let (s, _) = get(
        &d,
        &format!("/submissions/batch?tokens={}", tokens.join(",")),
    )
    .await;
    assert_eq!(s, 400);
    let (s, v) = get(&d, "/submissions/x?fields=stdout,bogus").await;
    assert_eq!((s, v), (400, json!({"error": "invalid fields: [bogus]"})));
    let r = d
        .client
        .post(d.url("/judge0/submissions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(get(&d, "/nothing/here").await.0, 404);
    assert_eq!(runs(), before, "nothing ran");
    // Non-UTF-8 output without base64: Judge0's 400.
    let (s, v) = post(
        &d,
        "/submissions?wait=true",
        json!({"source_code": "import sys\nsys.stdout.buffer.write(b'\\xff')", "language_id": 71}),
    )
    .await;
    assert_eq!(s, 201);
    assert!(
        v["error"].as_str().unwrap().contains("base64_encoded=true"),
        "{v}"
    );
    let (s, v) = get(
        &d,
        &format!("/submissions/{}", v["token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_a_full_queue() {
    let mut c = judge0_config(Backend::Bwrap);
    c.judge0.auth_tokens = vec!["sesame".into(), "other".into()];
    c.judge0.authz_tokens = vec!["boss".into()];
    c.judge0.max_queue = 2;
    c.max_concurrent_runs = 1;
    let (d, _g) = start(c).await;
    let r = d
        .client
        .get(d.url("/judge0/languages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.bytes().await.unwrap().len(), 0, "401 has an empty body");
    let r = d
        .client
        .get(d.url("/judge0/languages"))
        .header("X-Auth-Token", "other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = d
        .client
        .get(d.url("/judge0/about?X-Auth-Token=sesame"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let authorize = |user: &str| {
        d.client
            .post(d.url("/judge0/authorize"))
            .header("X-Auth-Token", "sesame")
            .header("X-Auth-User", user)
            .send()
    };
    let r = authorize("nobody").await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.bytes().await.unwrap().len(), 0, "403 has an empty body");
    assert_eq!(authorize("boss").await.unwrap().status(), 200);
    // One slot, a queue of two: the worker takes one, two wait, the next is refused.
    let submit = || {
        d.client
            .post(d.url("/judge0/submissions"))
            .header("X-Auth-Token", "sesame")
            .json(&json!({"source_code": "import time\ntime.sleep(1)", "language_id": 71}))
            .send()
    };
    let first = submit().await.unwrap();
    assert_eq!(first.status(), 201);
    let token = first.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Taken by the worker: Processing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = d
            .client
            .get(d.url(&format!("/judge0/submissions/{token}?fields=status")))
            .header("X-Auth-Token", "sesame")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"]["id"] == 2 {
            break;
        }
        assert_eq!(v["status"]["id"], 1, "{v}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..2 {
        assert_eq!(submit().await.unwrap().status(), 201);
    }
    let full = submit().await.unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(
        full.json::<Value>().await.unwrap(),
        json!({"error": "queue is full"})
    );
    d.stop().await;
}

/// Every run of `language`, whatever its outcome.
fn runs_of(d: &TestDaemon, language: &str) -> f64 {
    let prefix = format!("compilerd_runs_total{{language=\"{language}\"");
    d.metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Creates `subs` as one batch and polls the batch until every one is judged.
async fn batch(d: &TestDaemon, subs: Vec<Value>) -> Vec<Value> {
    let (s, created) = post(d, "/submissions/batch", json!({ "submissions": subs })).await;
    assert_eq!(s, 201, "{created}");
    let tokens: Vec<&str> = created
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = get(
            d,
            &format!(
                "/submissions/batch?tokens={}&fields=status,stdout,compile_output",
                tokens.join(",")
            ),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let all = v["submissions"].as_array().unwrap().clone();
        if all.iter().all(|x| x["status"]["id"].as_u64().unwrap() > 2) {
            return all;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Twenty test cases of one C program: one compile, twenty runs, each case judged; a program
/// that does not compile is compiled once for all its cases.
#[tokio::test(flavor = "multi_thread")]
async fn compile_once_judge_many() {
    let (d, _g) = start(judge0_config(Backend::Bwrap)).await;
    let source = "#include <stdio.h>\nint main(void) { long n; scanf(\"%ld\", &n); printf(\"%ld\\n\", n * n); return 0; }";
    let cases: Vec<Value> = (0..20)
        .map(|i| {
            // Case 7 expects a wrong answer.
            let expected = if i == 7 { 0 } else { i * i };
            json!({"source_code": source, "language_id": 50, "stdin": i.to_string(),
                   "expected_output": expected.to_string()})
        })
        .collect();
    let before = runs_of(&d, "c");
    let judged = batch(&d, cases).await;
    for (i, v) in judged.iter().enumerate() {
        let want = if i == 7 { 4 } else { 3 };
        assert_eq!(v["status"]["id"], want, "case {i}: {v}");
        assert_eq!(v["stdout"], format!("{}\n", i * i), "case {i}: {v}");
    }
    assert_eq!(
        runs_of(&d, "c") - before,
        21.0,
        "one compile and twenty runs"
    );
    let broken: Vec<Value> = (0..5)
        .map(|i| {
            json!({"source_code": "int main(void) { return nope; }", "language_id": 50,
                        "stdin": i.to_string()})
        })
        .collect();
    let before = runs_of(&d, "c");
    for v in batch(&d, broken).await {
        assert_eq!(v["status"]["id"], 6, "{v}");
        assert!(
            v["compile_output"].as_str().unwrap().contains("nope"),
            "{v}"
        );
    }
    assert_eq!(runs_of(&d, "c") - before, 1.0, "one compile for five cases");

    // number_of_runs: the cases' compile, then each round in a sandbox of its own (none answered
    // by the cache), time and memory averaged; a round that is not accepted ends the rounds.
    let before = runs_of(&d, "c");
    let (s, v) = post(
        &d,
        "/submissions?base64_encoded=false&wait=true&fields=status,stdout,time,memory,number_of_runs",
        json!({"source_code": source, "language_id": 50, "stdin": "21", "expected_output": "441",
               "number_of_runs": 3}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"]["id"], 3, "{v}");
    assert_eq!(v["stdout"], "441\n", "{v}");
    assert_eq!(v["number_of_runs"], 3, "{v}");
    assert!(
        v["time"].as_str().is_some() && v["memory"].as_u64().is_some(),
        "{v}"
    );
    assert_eq!(
        runs_of(&d, "c") - before,
        3.0,
        "three rounds (the compile is the cases' own, kept)"
    );
    let before = runs_of(&d, "c");
    let (_, v) = post(
        &d,
        "/submissions?base64_encoded=false&wait=true&fields=status",
        json!({"source_code": "int main(void) { return 3; }", "language_id": 50,
               "number_of_runs": 5}),
    )
    .await;
    assert_eq!(v["status"]["id"], 11, "{v}");
    assert_eq!(
        runs_of(&d, "c") - before,
        2.0,
        "one compile and the round that failed"
    );
    d.stop().await;
}
