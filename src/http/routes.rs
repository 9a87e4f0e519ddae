//! Routing and the error → (status, message) table for everything that never reaches a sandbox.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;

use std::sync::Arc;

use super::App;
use super::body::{BodyError, read_bounded};
use super::cors::ALLOW_METHODS;
use super::langs;
use super::request::{self, Decoded, Malformed, RequestForm};
use super::response::{Resp, answer_response, json_error, response};
use super::{piston, socket, ui};
use crate::answer::{Dialect, Outcome};
use crate::compile::{Answer, CacheStatus};

pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (handler, resp) = match req.uri().path() {
        "/compile" => ("compile", compile(app, req, started).await),
        "/fmt" => ("fmt", langs::fmt(app, req, started).await),
        "/languages" => ("languages", langs::languages(app, &req)),
        "/healthz" => ("healthz", healthz(app, &req)),
        "/metrics" => ("metrics", metrics(app, &req)),
        "/socket" => ("socket", socket::upgrade(app, req)),
        "/api/v2/connect" | "/api/v2/connect/" => ("piston_connect", piston::connect(app, req)),
        path if let Some((j, rest)) =
            app.judge0.as_ref().and_then(|j| Some((j, j.route(path)?))) =>
        {
            let rest = rest.to_owned();
            (
                "judge0",
                crate::judge0::api::handle(app, j, &rest, req).await,
            )
        }
        path if let Some(which) = piston::route(path) => {
            (which, piston::handle(app, which, req).await)
        }
        path if app.ui && ui::serves(path) => {
            ("ui", only_get(&req).unwrap_or_else(|| ui::page(path)))
        }
        _ => (
            "other",
            response(
                404,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"404 page not found\n"),
            ),
        ),
    };
    app.hooks
        .request_finished(handler, resp.status().as_u16(), started.elapsed());
    resp
}

fn only_get(req: &Request<Incoming>) -> Option<Resp> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let mut r = response(
        405,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"method not allowed\n"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(r)
}

fn healthz(app: &App, req: &Request<Incoming>) -> Resp {
    if let Some(r) = only_get(req) {
        return r;
    }
    if app.health.is_lameduck() {
        response(
            503,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"lameduck\n"),
        )
    } else {
        response(200, "text/plain; charset=utf-8", Bytes::from_static(b"ok"))
    }
}

fn metrics(app: &App, req: &Request<Incoming>) -> Resp {
    if let Some(r) = only_get(req) {
        return r;
    }
    match &app.metrics {
        Some(m) => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(m.render()),
        ),
        None => response(
            404,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"metrics are off\n"),
        ),
    }
}

async fn compile(app: &App, req: Request<Incoming>, started: Instant) -> Resp {
    let id = app.next_request_id.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = req.into_parts();
    if !app.cors.allows(&parts.headers) {
        // Before the body is read: a page from another origin gets nothing run.
        app.hooks.origin_refused();
        let origin = parts.headers.get(http::header::ORIGIN);
        tracing::info!(request_id = id, origin = ?origin, "origin refused");
        let answer = app.compile.refusal(&Outcome::OriginRefused, Dialect::Raw);
        let mut r = answer_response(answer);
        app.cors.apply(&parts.headers, r.headers_mut());
        return r;
    }
    let mut resp = match parts.method {
        Method::OPTIONS => {
            let mut r = response(204, "text/plain; charset=utf-8", Bytes::new());
            app.cors.preflight(&parts.headers, r.headers_mut());
            return r;
        }
        Method::POST => {
            let compile = match langs::pick(app, &parts.uri) {
                Ok(lang) => &lang.compile,
                Err(message) => {
                    let mut r = json_error(400, &message);
                    app.cors.apply(&parts.headers, r.headers_mut());
                    return r;
                }
            };
            let kind = request::content_kind(&parts.headers);
            let bound = request::read_bound(kind, compile.max_program_bytes());
            let (form, answer) =
                match read_bounded(&parts.headers, body, bound, app.read_timeout).await {
                    Ok(bytes) => match request::decode(kind, bytes) {
                        Ok(Decoded { program, form, vet }) => {
                            let program = crate::goplay::with_vet(compile.sandbox(), program, vet);
                            (form, compile.compile_as(program, form.dialect()).await)
                        }
                        Err(Malformed(why)) => {
                            let form = kind.form();
                            let outcome = Outcome::Malformed(&why);
                            (form, compile.refusal(&outcome, form.dialect()))
                        }
                    },
                    Err(BodyError::TooLarge { head }) => {
                        let form = request::too_large_form(kind, &head);
                        (form, compile.program_too_large(form.dialect()))
                    }
                    Err(BodyError::Timeout) => (
                        RequestForm::Raw,
                        compile.refusal(&Outcome::BodyTimeout, Dialect::Raw),
                    ),
                    Err(BodyError::Broken) => (
                        RequestForm::Raw,
                        compile.refusal(&Outcome::BodyBroken, Dialect::Raw),
                    ),
                };
            log_compile(id, form, &answer, started);
            answer_response(answer)
        }
        _ => {
            let mut r = json_error(405, "Method not allowed: use POST.");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(ALLOW_METHODS));
            r
        }
    };
    app.cors.apply(&parts.headers, resp.headers_mut());
    resp
}

/// One line per request; cache hits only at debug level: at tens of thousands a second, a line
/// each cost a third of the hit path's throughput (measured with wrk), and the metrics count them.
fn log_compile(id: u64, form: RequestForm, answer: &Answer, started: Instant) {
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                $level,
                request_id = id,
                form = form.as_str(),
                program_hash = %ProgramHash(answer.key),
                status = answer.status,
                cache = answer.cache.map_or("-", |c| c.as_str()),
                outcome = answer.result.map_or("-", |r| r.as_str()),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "compile"
            )
        };
    }
    if answer.cache == Some(CacheStatus::Hit) {
        line!(tracing::Level::DEBUG);
    } else {
        line!(tracing::Level::INFO);
    }
}

/// The first 8 bytes of a cache key in hex, formatted only when a log line is written.
struct ProgramHash(Option<crate::cache::Key>);

impl std::fmt::Display for ProgramHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(key) => key[..8].iter().try_for_each(|b| write!(f, "{b:02x}")),
            None => f.write_str("-"),
        }
    }
}
