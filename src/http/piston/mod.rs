//! Piston's v2 API on the same port: `GET /api/v2/runtimes` and `POST /api/v2/execute` (trailing
//! slashes too), with the shapes, units and edge cases Piston's clients read (see the README's
//! "Piston API"). A request decodes into one run request (`run`) and goes through the same
//! cache, admission and sandboxes as /compile; its answer is rendered here. Departures from
//! Piston, on purpose: the body is JSON whatever its Content-Type (piston-client sends
//! text/plain), a missing `version` is `*` (piston-client leaves it out for aliases), and every
//! error is 400 `{"message"}` as application/json.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;
use serde_json::{Value, json};

mod connect;
mod decode;
mod render;

use super::App;
use super::body::{BodyError, read_bounded};
use super::response::{Resp, answer_response, response};
use crate::answer::Row;
use crate::compile::RunRender;
use crate::languages::Language;
use crate::run::limits::OverMaximum;
use crate::run::{Bounds, RunJob, RunResult};
use crate::sandbox::SandboxError;

pub use connect::upgrade as connect;
use decode::{Decoded, decode};
use render::render;

/// Room in a request body for the JSON around the files and stdin.
const BODY_SLACK: usize = 64 << 10;

/// Piston's usual short names of each language.
fn aliases(name: &str) -> &'static [&'static str] {
    match name {
        "python" => &["py", "py3", "python3"],
        "go" => &["golang"],
        "c" => &["gcc"],
        "cpp" | "c++" => &["g++", "cpp", "c++"],
        "javascript" => &["js", "node", "node-js"],
        "sh" => &["shell"],
        "bash" => &["sh"],
        "rust" => &["rs"],
        _ => &[],
    }
}

/// The semver of a toolchain version as the image records it (`python 3.11.2` → `3.11.2`).
fn semver(version: &str) -> String {
    crate::languages::version_digits(version).unwrap_or_else(|| "0.0.0".into())
}

/// Whether `version` is in the range `want`: `*`, an exact version, or a prefix with `x`/`*`
/// parts (`3`, `3.x`, `3.11.*`).
fn version_matches(want: &str, version: &str) -> bool {
    let want = want.trim().trim_start_matches(['=', 'v', '^', '~']);
    if want.is_empty() || want == "*" {
        return true;
    }
    let have: Vec<&str> = version.split('.').collect();
    want.split('.')
        .enumerate()
        .all(|(i, w)| matches!(w, "x" | "X" | "*") || have.get(i).is_some_and(|h| *h == w))
}

fn runtimes_body(app: &App) -> Bytes {
    let list: Vec<Value> = app
        .languages
        .iter()
        .filter(|l| l.stages.is_some())
        .map(|l| {
            json!({
                "language": l.name,
                "version": semver(&l.version),
                "aliases": aliases(&l.name),
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&list).expect("runtimes serialize"))
}

fn message(status: u16, text: &str) -> Resp {
    let body = serde_json::to_vec(&json!({ "message": text })).expect("message serializes");
    response(status, "application/json", Bytes::from(body))
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = message(405, "Method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// Whether `path` is one of ours, and which.
pub fn route(path: &str) -> Option<&'static str> {
    match path.strip_suffix('/').unwrap_or(path) {
        "/api/v2/runtimes" => Some("piston_runtimes"),
        "/api/v2/execute" => Some("piston_execute"),
        _ => None,
    }
}

pub async fn handle(app: &App, which: &'static str, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method == Method::OPTIONS {
        let mut r = response(204, "text/plain; charset=utf-8", Bytes::new());
        app.cors.preflight(&parts.headers, r.headers_mut());
        return r;
    }
    let mut resp = if !app.cors.allows(&parts.headers) {
        // Before the body is read: a page from another origin gets nothing run.
        app.hooks.origin_refused();
        message(403, "Origin not allowed")
    } else if which == "piston_runtimes" {
        if parts.method == Method::GET || parts.method == Method::HEAD {
            response(200, "application/json", runtimes_body(app))
        } else {
            not_allowed("GET, HEAD")
        }
    } else if parts.method != Method::POST {
        not_allowed("POST, OPTIONS")
    } else {
        let bounds = Bounds::default();
        let max = bounds.max_total_bytes * 2 + bounds.max_stdin_bytes * 2 + BODY_SLACK;
        match read_bounded(&parts.headers, body, max, app.read_timeout).await {
            Ok(bytes) => execute(app, &bytes, &bounds, started).await,
            Err(BodyError::TooLarge { .. }) => message(400, "request body is too large"),
            Err(BodyError::Timeout) => message(400, "request body timed out"),
            Err(BodyError::Broken) => message(400, "request body broken"),
        }
    };
    app.cors.apply(&parts.headers, resp.headers_mut());
    resp
}

/// The run of a decoded request: its stages with each stage's limits, the request's own within the
/// operator's maxima.
fn prepare(d: Decoded<'_>) -> Result<(Arc<Language>, RunJob), OverMaximum> {
    let Decoded { lang, req } = d;
    let stages = lang.stages.clone().expect("found languages have stages");
    let base = lang.limits();
    let compile = req.compile_limits.resolve(
        base,
        &lang.maxima,
        [
            "compile_timeout",
            "compile_cpu_time",
            "compile_memory_limit",
        ],
    )?;
    let run = req.run_limits.resolve(
        base,
        &lang.maxima,
        ["run_timeout", "run_cpu_time", "run_memory_limit"],
    )?;
    Ok((
        lang.clone(),
        RunJob {
            req,
            stages,
            compile,
            run,
        },
    ))
}

async fn execute(app: &App, body: &[u8], bounds: &Bounds, started: Instant) -> Resp {
    let id = app.next_request_id.fetch_add(1, Ordering::Relaxed);
    let Decoded { lang, req } = match decode(app, body, bounds) {
        Ok(d) => d,
        Err(why) => {
            tracing::info!(request_id = id, dialect = "piston", error = %why, "execute refused");
            return message(400, &why);
        }
    };
    let (lang, job) = match prepare(Decoded { lang, req }) {
        Ok(p) => p,
        Err(e) => return message(400, &e.0),
    };
    let version = semver(&lang.version);
    let name = lang.name.clone();
    let how = RunRender {
        dialect: "piston",
        round: 0,
        render: std::sync::Arc::new(move |r: &Result<RunResult, SandboxError>| {
            render(&name, &version, r)
        }),
        overloaded: Row {
            status: 503,
            body: Bytes::from_static(br#"{"message":"the server is busy; try again later"}"#),
            cacheable: false,
            metric: None,
            retry_after: true,
        },
    };
    let answer = lang.compile.execute(job, how).await;
    tracing::info!(
        request_id = id,
        dialect = "piston",
        language = %lang.name,
        status = answer.status,
        cache = answer.cache.map_or("-", |c| c.as_str()),
        outcome = answer.result.map_or("-", |r| r.as_str()),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "execute"
    );
    answer_response(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_ranges() {
        assert_eq!(semver("python 3.11.2"), "3.11.2");
        assert_eq!(semver("gcc 12.2.0"), "12.2.0");
        assert_eq!(semver("go 1.19.8"), "1.19.8");
        assert!(version_matches("*", "3.11.2"));
        assert!(version_matches("3.x", "3.11.2"));
        assert!(version_matches("3.11.2", "3.11.2"));
        assert!(!version_matches("2", "3.11.2"));
        assert_eq!(route("/api/v2/execute/"), Some("piston_execute"));
        assert_eq!(route("/api/v2/runtimes"), Some("piston_runtimes"));
    }
}
