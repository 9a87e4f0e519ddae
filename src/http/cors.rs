//! CORS for /compile (and the origin check of /socket): the Go server allowed every origin; an
//! operator can now name the frontends. CORS headers alone only hide answers from other pages
//! (their programs would still run), so a request from an origin off the list is refused outright.

use http::HeaderValue;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, HOST,
    HeaderMap, ORIGIN, VARY,
};

use crate::config::AllowOrigin;

pub const ALLOW_METHODS: &str = "POST, OPTIONS";
pub const ALLOW_HEADERS: &str = "Content-Type, Content-Length, Accept-Encoding";

#[derive(Clone, Debug)]
pub struct Cors {
    allow: AllowOrigin,
}

impl Cors {
    pub fn new(allow: AllowOrigin) -> Cors {
        Cors { allow }
    }

    /// Whether a request may be served: always with the default `*`; with a list, when it has no
    /// `Origin` (curl, server to server: not a browser page), when its `Origin` is on the list, or
    /// when it is the daemon's own (`Origin` names the `Host` it was sent to: the page at `/`,
    /// which the list need not name).
    pub fn allows(&self, request_headers: &HeaderMap) -> bool {
        match &self.allow {
            AllowOrigin::Any => true,
            AllowOrigin::List(list) => request_headers.get(ORIGIN).is_none_or(|origin| {
                list.iter().any(|o| o.as_bytes() == origin.as_bytes())
                    || same_origin(origin, request_headers.get(HOST))
            }),
        }
    }

    /// Adds the allow-origin header (and Vary when the answer depends on Origin).
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        match &self.allow {
            AllowOrigin::Any => {
                response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            }
            AllowOrigin::List(list) => {
                response.append(VARY, HeaderValue::from_static("Origin"));
                if let Some(origin) = request.get(ORIGIN)
                    && list.iter().any(|o| o.as_bytes() == origin.as_bytes())
                {
                    response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                }
            }
        }
    }

    pub fn preflight(&self, request: &HeaderMap, response: &mut HeaderMap) {
        self.apply(request, response);
        response.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        response.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
    }
}

/// `Origin: http(s)://HOST` sent to `Host: HOST`.
fn same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false;
    };
    !host.is_empty()
        && ["http://", "https://"]
            .iter()
            .any(|scheme| origin.strip_prefix(scheme) == Some(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(o: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        h
    }

    #[test]
    fn list_echoes_only_allowed_origins() {
        let cors = Cors::new(AllowOrigin::List(vec!["https://a.example".into()]));
        let mut out = HeaderMap::new();
        cors.apply(&with_origin("https://a.example"), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(out[VARY], "Origin");
        let mut out = HeaderMap::new();
        cors.apply(&with_origin("https://evil.example"), &mut out);
        assert!(out.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn allows_listed_or_absent_origins_only() {
        let cors = Cors::new(AllowOrigin::List(vec![
            "https://a.example".into(),
            "http://127.0.0.1:8080".into(),
        ]));
        assert!(cors.allows(&with_origin("https://a.example")));
        assert!(cors.allows(&with_origin("http://127.0.0.1:8080")));
        assert!(cors.allows(&HeaderMap::new()));
        assert!(!cors.allows(&with_origin("https://evil.example")));
        assert!(!cors.allows(&with_origin("https://a.example.evil")));
        assert!(!cors.allows(&with_origin("null")));
        // The daemon's own page: Origin names the Host the request went to.
        let mut own = with_origin("http://play.example:8181");
        own.insert(HOST, HeaderValue::from_static("play.example:8181"));
        assert!(cors.allows(&own));
        own.insert(HOST, HeaderValue::from_static("other.example:8181"));
        assert!(!cors.allows(&own));
        let mut tls = with_origin("https://play.example");
        tls.insert(HOST, HeaderValue::from_static("play.example"));
        assert!(cors.allows(&tls));
        let mut empty = with_origin("http://");
        empty.insert(HOST, HeaderValue::from_static(""));
        assert!(!cors.allows(&empty));
        assert!(!cors.allows(&with_origin("HTTPS://A.EXAMPLE")));
        let any = Cors::new(AllowOrigin::Any);
        assert!(any.allows(&with_origin("https://evil.example")));
        assert!(any.allows(&HeaderMap::new()));
    }

    #[test]
    fn any_is_a_star() {
        let mut out = HeaderMap::new();
        Cors::new(AllowOrigin::Any).apply(&HeaderMap::new(), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
