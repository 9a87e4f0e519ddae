//! CORS for /compile: the Go server allowed every origin; an operator can now name the frontends.

use http::HeaderValue;
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
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

    /// Whether a request may be served at all: with an allow-origin list, one whose `Origin` is
    /// present and not on the list may not (a browser page of another site). Requests without
    /// `Origin` (curl, server to server) may.
    pub fn allows(&self, request_headers: &HeaderMap) -> bool {
        match (&self.allow, request_headers.get(ORIGIN)) {
            (AllowOrigin::List(list), Some(origin)) => {
                list.iter().any(|o| o.as_bytes() == origin.as_bytes())
            }
            _ => true,
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
        let cors = Cors::new(AllowOrigin::List(vec!["https://a.example".into()]));
        assert!(cors.allows(&with_origin("https://a.example")));
        assert!(!cors.allows(&with_origin("https://evil.example")));
        assert!(cors.allows(&HeaderMap::new()));
        assert!(Cors::new(AllowOrigin::Any).allows(&with_origin("https://evil.example")));
    }

    #[test]
    fn any_is_a_star() {
        let mut out = HeaderMap::new();
        Cors::new(AllowOrigin::Any).apply(&HeaderMap::new(), &mut out);
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
