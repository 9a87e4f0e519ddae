//! The playground page at `/` (`--ui`, on by default): an editor, Run, and the program's output,
//! live over /socket or replayed from POST /compile, speaking the Go playground's protocols so
//! that it goes through the same paths as that client. Embedded in the binary.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, HeaderValue, X_CONTENT_TYPE_OPTIONS};

use super::response::{Resp, response};

const FILES: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "/play.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/play.js"),
    ),
    (
        "/play.css",
        "text/css; charset=utf-8",
        include_str!("ui/play.css"),
    ),
];

pub fn serves(path: &str) -> bool {
    FILES.iter().any(|(p, _, _)| *p == path)
}

pub fn page(path: &str) -> Resp {
    let (_, content_type, text) = FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .expect("serves() was asked first");
    let mut r = response(200, content_type, Bytes::from_static(text.as_bytes()));
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}
