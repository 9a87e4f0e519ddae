//! The response helpers every route and wire dialect shares; they sit below `routes`, which
//! dispatches to those dialects, so that no dialect imports its own dispatcher.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::compile::{Answer, error_body};

pub(crate) type Resp = Response<Full<Bytes>>;

/// A `HeaderName` built once: inserting by `&str` copies a non-standard name into a fresh
/// allocation on every response (one of the few allocations of a cache hit, per tests/hot_path.rs).
static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

pub(crate) fn response(status: u16, content_type: &'static str, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub(crate) fn json_error(status: u16, message: &str) -> Resp {
    response(status, "application/json", error_body(message))
}

pub(crate) fn answer_response(answer: Answer) -> Resp {
    let mut r = response(answer.status, "application/json", answer.body);
    if let Some(c) = answer.cache {
        r.headers_mut()
            .insert(X_CACHE.clone(), HeaderValue::from_static(c.as_str()));
    }
    if let Some(secs) = answer.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}
