//! The language routes: `GET /languages`, `POST /fmt`, and the `?lang=` choice of /compile.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, HeaderValue};
use http::{Method, Request};
use hyper::body::Incoming;

use super::App;
use super::body::{BodyError, read_bounded};
use super::cors::ALLOW_METHODS;
use super::form;
use super::response::{Resp, answer_response, json_error, response};
use crate::answer::Dialect;
use crate::languages::Language;

/// The language a request names with `?lang=NAME`, or the default one; an unknown name is the
/// message of the 400 that lists the languages.
pub fn pick<'a>(app: &'a App, req_uri: &http::Uri) -> Result<&'a Arc<Language>, String> {
    let name = req_uri
        .query()
        .and_then(|q| form::field(q.as_bytes(), "lang"))
        .map(|n| String::from_utf8_lossy(&n).into_owned());
    app.languages.get(name.as_deref())
}

pub fn languages(app: &App, req: &Request<Incoming>) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = json_error(405, "Method not allowed: use GET.");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut r = response(200, "application/json", app.languages.listing());
    app.cors.apply(req.headers(), r.headers_mut());
    r
}

/// The Go playground's Format button: a form with `body` (and `imports`, which is accepted and
/// not acted on: no formatter here adds imports).
pub async fn fmt(app: &App, req: Request<Incoming>, started: Instant) -> Resp {
    let (parts, body) = req.into_parts();
    let mut resp = match parts.method {
        Method::OPTIONS => {
            let mut r = response(204, "text/plain; charset=utf-8", Bytes::new());
            app.cors.preflight(&parts.headers, r.headers_mut());
            return r;
        }
        Method::POST => fmt_post(app, &parts, body, started).await,
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

async fn fmt_post(
    app: &App,
    parts: &http::request::Parts,
    body: Incoming,
    started: Instant,
) -> Resp {
    let lang = match pick(app, &parts.uri) {
        Ok(l) => l,
        Err(message) => return json_error(400, &message),
    };
    let Some(format) = &lang.format else {
        return json_error(400, &format!("Language {:?} has no formatter.", lang.name));
    };
    // Percent-encoding makes a form up to three times the program it carries.
    let max = format.max_program_bytes() * 3 + 1024;
    let form = match read_bounded(&parts.headers, body, max, app.read_timeout).await {
        Ok(form) => form,
        Err(BodyError::TooLarge { .. }) => {
            return answer_response(format.program_too_large(Dialect::Raw));
        }
        Err(BodyError::Timeout) => {
            return json_error(408, "Request body was not received in time.");
        }
        Err(BodyError::Broken) => return json_error(400, "Request body could not be read."),
    };
    let Some(program) = form::field(&form, "body") else {
        return json_error(
            400,
            "Missing the form field \"body\" (the program to format).",
        );
    };
    let answer = format.compile(Bytes::from(program)).await;
    tracing::info!(
        language = %lang.name,
        status = answer.status,
        cache = answer.cache.map_or("-", |c| c.as_str()),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "fmt"
    );
    answer_response(answer)
}
