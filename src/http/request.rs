//! The request forms of POST /compile, decided as the Go playground's server decides, with the
//! raw form of the Go compile server we replace as the fallback:
//! - `application/x-www-form-urlencoded` with a `body` field (what the playground's frontend sends:
//!   `version=2&body=…&withVet=…`): the program is that field, percent-decoded;
//! - `application/json` (what the go.dev proxy re-posts): an object whose string `Body` is the
//!   program (`{"Body": "…", "WithVet": false}`);
//! - anything else, and a form-encoded body with no `body` field (curl's `--data-binary` sends that
//!   content type): the raw bytes are the program.
//!
//! A raw program sent as form-encoded that happens to have a `body=` field (at its start or after a
//! `&`) is taken as a form: the form wins, as it does in the Go server.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;

use crate::answer::Dialect;

/// What the `Content-Type` says the body may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    Form,
    Json,
    Other,
}

impl ContentKind {
    /// The form a request of this content type is in when it does not decode.
    pub fn form(self) -> RequestForm {
        match self {
            ContentKind::Form => RequestForm::Form,
            ContentKind::Json => RequestForm::Json,
            ContentKind::Other => RequestForm::Raw,
        }
    }
}

/// The form a request's program came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestForm {
    Raw,
    Form,
    Json,
}

impl RequestForm {
    pub fn dialect(self) -> Dialect {
        match self {
            RequestForm::Raw => Dialect::Raw,
            RequestForm::Form | RequestForm::Json => Dialect::Playground,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequestForm::Raw => "raw",
            RequestForm::Form => "form",
            RequestForm::Json => "json",
        }
    }
}

/// Room for the fields besides the program (`version=2&withVet=false&`, `"WithVet": false`).
const FIELDS_ROOM: usize = 4096;

/// The media type of `Content-Type`, without parameters (`; charset=UTF-8`), case-insensitively.
pub fn content_kind(headers: &HeaderMap) -> ContentKind {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return ContentKind::Other;
    };
    let media = value.as_bytes().split(|&b| b == b';').next().unwrap_or(b"");
    let media = media.trim_ascii();
    if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        ContentKind::Form
    } else if media.eq_ignore_ascii_case(b"application/json") {
        ContentKind::Json
    } else {
        ContentKind::Other
    }
}

/// The most a request body may hold for a program of at most `max` bytes in this form: a byte
/// percent-encodes to at most 3, and JSON escapes one to at most 6 (`\u003c`: Go's encoder
/// escapes `<`, `>` and `&` so). The size limit itself applies to the decoded program.
pub fn read_bound(kind: ContentKind, max: usize) -> usize {
    match kind {
        ContentKind::Other => max,
        ContentKind::Form => max.saturating_mul(3).saturating_add(FIELDS_ROOM),
        ContentKind::Json => max.saturating_mul(6).saturating_add(FIELDS_ROOM),
    }
}

/// A request's program and the form it came in.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub program: Bytes,
    pub form: RequestForm,
    /// The client asked for vet (`withVet=true`, `"WithVet": true`), as the Go playground's
    /// frontend does.
    pub vet: bool,
}

/// Says what is wrong with a form or JSON request; answered 400, never run.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

pub fn decode(kind: ContentKind, body: Bytes) -> Result<Decoded, Malformed> {
    let raw = |body| {
        Ok(Decoded {
            program: body,
            form: RequestForm::Raw,
            vet: false,
        })
    };
    match kind {
        ContentKind::Other => raw(body),
        ContentKind::Form => match form_field(&body, b"body") {
            None => raw(body),
            Some(value) => {
                let program = percent_decode(value).map_err(|at| {
                    Malformed(format!(
                        "Malformed form: the body field has an invalid percent-escape at its byte {at}."
                    ))
                })?;
                if program.is_empty() {
                    return Err(Malformed(
                        "Malformed form: the body field is empty; there is no program to run."
                            .into(),
                    ));
                }
                Ok(Decoded {
                    program: Bytes::from(program),
                    form: RequestForm::Form,
                    // As Go's server reads it: the first withVet field, exactly "true".
                    vet: form_field(&body, b"withVet").is_some_and(|v| decodes_to(v, b"true")),
                })
            }
        },
        ContentKind::Json => decode_json(&body).map(|(program, vet)| Decoded {
            program,
            form: RequestForm::Json,
            vet,
        }),
    }
}

/// For a body over the read bound, of which only `head` was kept: the form it was in, judged from
/// what was seen, so that its "too large" answer is in the dialect its client reads.
pub fn too_large_form(kind: ContentKind, head: &[u8]) -> RequestForm {
    match kind {
        ContentKind::Form if form_field(head, b"body").is_none() => RequestForm::Raw,
        _ => kind.form(),
    }
}

/// The still-encoded value of the first field named `name` (the name compared decoded), as Go's
/// `FormValue` takes the first; `None` when there is none.
fn form_field<'a>(body: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        decodes_to(key, name).then_some(value)
    })
}

/// Whether `encoded` percent-decodes to `want`, without allocating (every pair of every raw
/// program sent as form-encoded goes through here).
fn decodes_to(encoded: &[u8], want: &[u8]) -> bool {
    let mut decoded = Decoder {
        rest: encoded,
        at: 0,
    };
    let mut want = want.iter();
    loop {
        match (decoded.next(), want.next()) {
            (None, None) => return true,
            (Some(Ok(a)), Some(&b)) if a == b => continue,
            _ => return false,
        }
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a `%` without two
/// hex digits is an error (at that byte), as in Go's `url.QueryUnescape`.
fn percent_decode(encoded: &[u8]) -> Result<Vec<u8>, usize> {
    let mut out = Vec::with_capacity(encoded.len());
    for b in (Decoder {
        rest: encoded,
        at: 0,
    }) {
        out.push(b?);
    }
    Ok(out)
}

struct Decoder<'a> {
    rest: &'a [u8],
    at: usize,
}

impl Iterator for Decoder<'_> {
    type Item = Result<u8, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&first, rest) = self.rest.split_first()?;
        let (byte, used) = match first {
            b'+' => (b' ', 1),
            b'%' => match (rest.first().and_then(hex), rest.get(1).and_then(hex)) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                _ => {
                    self.rest = &[];
                    return Some(Err(self.at));
                }
            },
            b => (b, 1),
        };
        self.rest = &self.rest[used..];
        self.at += used;
        Some(Ok(byte))
    }
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// `{"Body": "…", "WithVet": bool}`: the field names matched as Go's decoder matches them (exact
/// first, else ignoring case); other fields are ignored.
fn decode_json(body: &[u8]) -> Result<(Bytes, bool), Malformed> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Malformed(format!("Malformed JSON request: {e}.")))?;
    let serde_json::Value::Object(mut fields) = value else {
        return Err(Malformed(
            "Malformed JSON request: expected an object like {\"Body\": \"<program>\"}.".into(),
        ));
    };
    let field = |fields: &serde_json::Map<String, serde_json::Value>, name: &str| {
        if fields.contains_key(name) {
            Some(name.to_owned())
        } else {
            fields
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .cloned()
        }
    };
    let vet = match field(&fields, "WithVet").map(|k| &fields[&k]) {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Malformed(
                "Malformed JSON request: WithVet must be true or false.".into(),
            ));
        }
    };
    match field(&fields, "Body").and_then(|k| fields.remove(&k)) {
        Some(serde_json::Value::String(program)) => Ok((Bytes::from(program), vet)),
        Some(_) => Err(Malformed(
            "Malformed JSON request: Body must be a string (the program).".into(),
        )),
        None => Err(Malformed(
            "Malformed JSON request: no Body field (the program).".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn kind(content_type: &str) -> ContentKind {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        content_kind(&h)
    }

    fn decoded(kind: ContentKind, body: &[u8]) -> Decoded {
        decode(kind, Bytes::copy_from_slice(body)).unwrap()
    }

    fn malformed(kind: ContentKind, body: &[u8]) -> String {
        decode(kind, Bytes::copy_from_slice(body)).unwrap_err().0
    }

    #[test]
    fn content_types() {
        assert_eq!(
            kind("application/x-www-form-urlencoded; charset=UTF-8"),
            ContentKind::Form
        );
        assert_eq!(kind("Application/X-WWW-Form-URLEncoded"), ContentKind::Form);
        assert_eq!(kind("application/json"), ContentKind::Json);
        assert_eq!(kind(" application/json ;charset=utf-8"), ContentKind::Json);
        assert_eq!(kind("text/plain"), ContentKind::Other);
        assert_eq!(kind("multipart/form-data; boundary=x"), ContentKind::Other);
        assert_eq!(content_kind(&HeaderMap::new()), ContentKind::Other);
    }

    #[test]
    fn the_playground_frontends_form() {
        // What jQuery sends for {version: 2, body: …, withVet: false}.
        let d = decoded(
            ContentKind::Form,
            b"version=2&body=package+main%0A%0Afunc+main()+%7B%7D%0A%25%26%3D%2B&withVet=false",
        );
        assert_eq!(d.form, RequestForm::Form);
        assert_eq!(&d.program[..], b"package main\n\nfunc main() {}\n%&=+");
        assert_eq!(d.form.dialect(), Dialect::Playground);
        // The first body field wins; the key is compared decoded; bytes need not be UTF-8.
        let d = decoded(ContentKind::Form, b"b%6Fdy=%FF%00&body=second");
        assert_eq!(&d.program[..], b"\xff\x00");
    }

    #[test]
    fn vet_is_asked_for_as_the_go_server_reads_it() {
        let vet = |kind, body: &[u8]| decoded(kind, body).vet;
        assert!(!vet(ContentKind::Form, b"version=2&body=x&withVet=false"));
        assert!(vet(ContentKind::Form, b"version=2&body=x&withVet=true"));
        assert!(vet(
            ContentKind::Form,
            b"body=x&with%56et=tru%65&withVet=false"
        ));
        assert!(!vet(ContentKind::Form, b"body=x&withVet=1"));
        assert!(!vet(ContentKind::Form, b"body=x"));
        assert!(vet(ContentKind::Json, br#"{"Body": "x", "WithVet": true}"#));
        assert!(vet(ContentKind::Json, br#"{"Body": "x", "withvet": true}"#));
        assert!(!vet(
            ContentKind::Json,
            br#"{"Body": "x", "WithVet": null}"#
        ));
        assert!(!vet(ContentKind::Json, br#"{"Body": "x"}"#));
        assert!(!vet(ContentKind::Other, b"withVet=true"));
    }

    #[test]
    fn form_encoded_without_a_body_field_is_raw() {
        // curl --data-binary sends this content type: the seed's clients.
        for program in [
            &b"echo 100% & echo done"[..],
            b"echo hello",
            b"nobody=1; echo $nobody",
            b"",
        ] {
            let d = decoded(ContentKind::Form, program);
            assert_eq!(d.form, RequestForm::Raw);
            assert_eq!(&d.program[..], program);
        }
    }

    #[test]
    fn a_raw_program_that_looks_like_a_form_is_a_form() {
        let d = decoded(ContentKind::Form, b"body=echo+hi");
        assert_eq!(
            (d.form, &d.program[..]),
            (RequestForm::Form, &b"echo hi"[..])
        );
        // Sent as text/plain, the same bytes are the program.
        let d = decoded(ContentKind::Other, b"body=echo+hi");
        assert_eq!(
            (d.form, &d.program[..]),
            (RequestForm::Raw, &b"body=echo+hi"[..])
        );
    }

    #[test]
    fn malformed_forms() {
        assert_eq!(
            malformed(ContentKind::Form, b"version=2&body=echo%2"),
            "Malformed form: the body field has an invalid percent-escape at its byte 4."
        );
        assert!(malformed(ContentKind::Form, b"body=%zzecho").contains("byte 0"));
        assert!(malformed(ContentKind::Form, b"version=2&body=&withVet=false").contains("empty"));
        assert!(malformed(ContentKind::Form, b"body").contains("empty"));
    }

    #[test]
    fn json_requests() {
        let d = decoded(
            ContentKind::Json,
            br#"{"Body": "package main\u003c\n", "WithVet": false}"#,
        );
        assert_eq!(
            (d.form, &d.program[..]),
            (RequestForm::Json, &b"package main<\n"[..])
        );
        // Go's decoder matches names ignoring case when there is no exact match.
        let d = decoded(ContentKind::Json, br#"{"body": "echo hi", "extra": [1]}"#);
        assert_eq!(&d.program[..], b"echo hi");
        // An empty Body is a program (Go's JSON path runs it too).
        assert_eq!(
            &decoded(ContentKind::Json, br#"{"Body": ""}"#).program[..],
            b""
        );
    }

    #[test]
    fn malformed_json() {
        assert!(malformed(ContentKind::Json, b"echo hi").starts_with("Malformed JSON request: "));
        assert!(malformed(ContentKind::Json, br#"{"Body": "x""#).starts_with("Malformed JSON"));
        assert!(malformed(ContentKind::Json, br#"["x"]"#).contains("expected an object"));
        assert!(malformed(ContentKind::Json, br#"{"Body": 3}"#).contains("must be a string"));
        assert!(malformed(ContentKind::Json, br#"{"WithVet": true}"#).contains("no Body"));
        assert!(
            malformed(ContentKind::Json, br#"{"Body": "x", "WithVet": "yes"}"#).contains("WithVet")
        );
        assert!(
            malformed(ContentKind::Json, b"{\"Body\": \"\xff\"}").starts_with("Malformed JSON")
        );
    }

    #[test]
    fn read_bounds_cover_the_worst_encoding() {
        let max = 1000;
        assert_eq!(read_bound(ContentKind::Other, max), max);
        let program = vec![0xffu8; max];
        let encoded: String = program.iter().map(|b| format!("%{b:02X}")).collect();
        let form = format!("version=2&body={encoded}&withVet=false");
        assert!(form.len() <= read_bound(ContentKind::Form, max));
        let json = format!(
            "{{\"Body\":\"{}\",\"WithVet\":false}}",
            "\\u003c".repeat(max)
        );
        assert!(json.len() <= read_bound(ContentKind::Json, max));
        assert_eq!(
            decoded(ContentKind::Form, form.as_bytes()).program.len(),
            max
        );
    }

    #[test]
    fn too_large_bodies_are_answered_in_the_dialect_they_look_like() {
        assert_eq!(
            too_large_form(ContentKind::Form, b"version=2&body=aaaa"),
            RequestForm::Form
        );
        assert_eq!(
            too_large_form(ContentKind::Form, b"#####"),
            RequestForm::Raw
        );
        assert_eq!(too_large_form(ContentKind::Form, b""), RequestForm::Raw);
        assert_eq!(too_large_form(ContentKind::Json, b""), RequestForm::Json);
        assert_eq!(
            too_large_form(ContentKind::Other, b"body=x"),
            RequestForm::Raw
        );
    }
}
