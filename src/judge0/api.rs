//! The HTTP side of the Judge0 API, under the configured prefix: routes (trailing slashes and a
//! doubled leading slash accepted), the optional tokens (401 and 403 with empty bodies), and
//! Judge0's answers: 201 for a created submission, 422 with a field → messages hash, 400 and 503
//! with `{"error"}`, 404 for an unknown token.

use std::time::Instant;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::info;
use super::queue::QueueError;
use super::record::{Record, parse_fields};
use super::status::Status;
use super::submission::error;
use super::{Judge0, new_token};
use crate::http::App;
use crate::http::body::{BodyError, read_bounded};
use crate::http::form;

type Resp = Response<Full<Bytes>>;

/// A request that ends early with its answer.
type Early<T> = Result<T, Box<Resp>>;

/// The most submissions (and tokens) in one batch, as Judge0.
pub const MAX_BATCH: usize = 20;
/// The largest request body: a batch of submissions in base64.
const MAX_BODY: usize = 16 << 20;

fn respond(status: u16, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !content_type.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r
}

fn json(status: u16, v: &Value) -> Resp {
    respond(
        status,
        "application/json; charset=utf-8",
        Bytes::from(serde_json::to_vec(v).expect("serializes")),
    )
}

fn err(status: u16, message: &str) -> Resp {
    json(status, &error(message))
}

fn empty(status: u16) -> Resp {
    respond(status, "", Bytes::new())
}

fn text(body: &'static str) -> Resp {
    respond(
        200,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn not_allowed(allow: &'static str) -> Resp {
    let mut r = err(405, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

struct Query(String);

impl Query {
    fn get(&self, name: &str) -> Option<String> {
        form::field(self.0.as_bytes(), name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v == "true" || v == "1")
    }
}

/// A token from the header, or from the query parameter of the same name (as Judge0).
fn token_in(headers: &HeaderMap, query: &Query, name: &str, allowed: &[String]) -> bool {
    let given = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query.get(name));
    given.is_some_and(|g| allowed.contains(&g))
}

pub async fn handle(app: &App, j: &Judge0, rest: &str, req: Request<Incoming>) -> Resp {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    if parts.method == Method::OPTIONS {
        let mut r = empty(204);
        app.cors.preflight(&parts.headers, r.headers_mut());
        return r;
    }
    let query = Query(parts.uri.query().unwrap_or("").to_owned());
    let mut resp = if !app.cors.allows(&parts.headers) {
        app.hooks.origin_refused();
        err(403, "origin not allowed")
    } else if !j.config.auth_tokens.is_empty()
        && !token_in(
            &parts.headers,
            &query,
            "X-Auth-Token",
            &j.config.auth_tokens,
        )
    {
        empty(401)
    } else {
        let path = format!("/{}", rest.trim_matches('/'));
        route(app, j, &path, &parts.method, &parts.headers, &query, body).await
    };
    app.cors.apply(&parts.headers, resp.headers_mut());
    tracing::debug!(
        method = %parts.method,
        path = %parts.uri.path(),
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "judge0"
    );
    resp
}

async fn route(
    app: &App,
    j: &Judge0,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    query: &Query,
    body: Incoming,
) -> Resp {
    let get = *method == Method::GET || *method == Method::HEAD;
    let post = *method == Method::POST;
    match path {
        "/" if get => empty(200),
        "/submissions/batch" if post => match read(app, headers, body).await {
            Ok(b) => create_batch(j, &b, query).await,
            Err(r) => *r,
        },
        "/submissions/batch" if get => get_batch(j, headers, query).await,
        "/submissions/batch" => not_allowed("GET, POST"),
        "/submissions" if post => match read(app, headers, body).await {
            Ok(b) => create(j, &b, query).await,
            Err(r) => *r,
        },
        // Listing is for an authorized user in Judge0; this server keeps no list.
        "/submissions" if get => empty(403),
        "/submissions" => not_allowed("GET, POST"),
        p if let Some(token) = p.strip_prefix("/submissions/") => {
            if get {
                get_one(j, token, query).await
            } else {
                not_allowed("GET")
            }
        }
        "/languages" if get => json(200, &j.table.listing()),
        "/languages/all" if get => json(200, &j.table.all()),
        p if get && let Some(id) = p.strip_prefix("/languages/") => {
            match id.parse().ok().and_then(|id| j.table.detail(id)) {
                Some(v) => json(200, &v),
                None => err(404, "language not found"),
            }
        }
        "/statuses" if get => json(200, &Status::all()),
        "/about" if get => json(200, &info::about()),
        "/version" if get => text(info::VERSION),
        "/license" if get => text("MIT\n"),
        "/isolate" if get => text("compilerd sandboxes (Docker or bubblewrap), not isolate\n"),
        "/config_info" if get => json(200, &info::config_info(j)),
        "/system_info" if get => json(200, &info::system_info()),
        "/workers" if get => json(200, &info::workers(j).await),
        // The token was checked above.
        "/authenticate" if post => empty(200),
        "/authorize" if post => {
            if !j.config.authz_tokens.is_empty()
                && token_in(headers, query, "X-Auth-User", &j.config.authz_tokens)
            {
                empty(200)
            } else {
                empty(403)
            }
        }
        _ => err(404, "not found"),
    }
}

async fn read(app: &App, headers: &HeaderMap, body: Incoming) -> Early<Bytes> {
    let why = match read_bounded(headers, body, MAX_BODY, app.read_timeout).await {
        Ok(b) => return Ok(b),
        Err(BodyError::TooLarge { .. }) => "request body is too large",
        Err(BodyError::Timeout) => "request body timed out",
        Err(BodyError::Broken) => "request body broken",
    };
    Err(Box::new(err(400, why)))
}

fn parse_json(body: &[u8]) -> Early<Value> {
    serde_json::from_slice(body).map_err(|e| Box::new(err(400, &format!("malformed JSON: {e}"))))
}

fn fields_of(query: &Query) -> Early<Vec<&'static str>> {
    parse_fields(query.get("fields").as_deref()).map_err(|unknown| {
        Box::new(err(
            400,
            &format!("invalid fields: [{}]", unknown.join(", ")),
        ))
    })
}

const NOT_UTF8: &str = "some attributes for this submission cannot be converted to UTF-8, use base64_encoded=true query parameter";

fn queue_error(e: QueueError) -> Resp {
    match e {
        QueueError::Full => err(503, "queue is full"),
        QueueError::Unavailable(why) => {
            tracing::warn!(error = %why, "judge0: queue unavailable");
            err(503, "the submission queue is unavailable; try again later")
        }
    }
}

async fn create(j: &Judge0, body: &[u8], query: &Query) -> Resp {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let base64 = query.flag("base64_encoded");
    let rec = match j.checks().decode(&value, base64, new_token()) {
        Ok(r) => r,
        Err(e) => return json(422, &e.to_json()),
    };
    if !query.flag("wait") {
        return match j.submit(&rec).await {
            Ok(()) => json(201, &json!({ "token": rec.token })),
            Err(e) => queue_error(e),
        };
    }
    let fields = match fields_of(query) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let Some(done) = j.run_now(&rec).await else {
        return err(503, "queue is full");
    };
    if let Err(e) = j.queue.store(&done).await {
        tracing::warn!(token = %done.token, error = ?e, "judge0: cannot store a result");
    }
    match done.render(&fields, base64) {
        Ok(v) => json(201, &v),
        Err(_) => json(201, &json!({"token": done.token, "error": NOT_UTF8})),
    }
}

async fn create_batch(j: &Judge0, body: &[u8], query: &Query) -> Resp {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let list = match value.get("submissions") {
        Some(Value::Array(l)) if !l.is_empty() => l,
        _ => return err(400, "there should be at least one submission in a batch"),
    };
    if list.len() > MAX_BATCH {
        return err(
            400,
            &format!(
                "number of submissions in a batch should be less than or equal to {MAX_BATCH}"
            ),
        );
    }
    let base64 = query.flag("base64_encoded");
    let checks = j.checks();
    let decoded: Vec<_> = list
        .iter()
        .map(|s| checks.decode(s, base64, new_token()))
        .collect();
    let mut out = Vec::with_capacity(decoded.len());
    let mut any = false;
    for d in decoded {
        match d {
            Ok(rec) => {
                if let Err(e) = j.submit(&rec).await {
                    return queue_error(e);
                }
                any = true;
                out.push(json!({ "token": rec.token }));
            }
            Err(e) => out.push(e.to_json()),
        }
    }
    json(if any { 201 } else { 422 }, &Value::Array(out))
}

async fn get_one(j: &Judge0, token: &str, query: &Query) -> Resp {
    let fields = match fields_of(query) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    match j.queue.get(token).await {
        Ok(Some(rec)) => render(&rec, &fields, query),
        Ok(None) => err(404, "submission not found"),
        Err(e) => queue_error(e),
    }
}

fn render(rec: &Record, fields: &[&str], query: &Query) -> Resp {
    match rec.render(fields, query.flag("base64_encoded")) {
        Ok(v) => json(200, &v),
        Err(_) => err(400, NOT_UTF8),
    }
}

async fn get_batch(j: &Judge0, headers: &HeaderMap, query: &Query) -> Resp {
    let fields = match fields_of(query) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let tokens = query
        .get("tokens")
        .or_else(|| headers.get("tokens")?.to_str().ok().map(str::to_owned))
        .unwrap_or_default();
    let tokens: Vec<&str> = tokens
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return err(400, "there should be at least one token in a batch");
    }
    if tokens.len() > MAX_BATCH {
        return err(
            400,
            &format!("number of tokens in a batch should be less than or equal to {MAX_BATCH}"),
        );
    }
    let base64 = query.flag("base64_encoded");
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        match j.queue.get(t).await {
            Ok(Some(rec)) => match rec.render(&fields, base64) {
                Ok(v) => out.push(v),
                Err(_) => return err(400, NOT_UTF8),
            },
            Ok(None) => out.push(Value::Null),
            Err(e) => return queue_error(e),
        }
    }
    json(200, &json!({ "submissions": out }))
}
