//! Property tests of request-form decoding (`http::request`), against the public API: whatever
//! bytes arrive, decoding never panics and says raw, form, JSON or malformed; a program encoded as
//! the Go playground's frontend encodes it (form or JSON) decodes to exactly that program; a raw
//! body is taken as it is.

use bytes::Bytes;
use compilerd::http::request::{ContentKind, RequestForm, decode};
use proptest::prelude::*;

/// Percent-encodes every byte but the unreserved ones, the way a browser's form encoder (and
/// jQuery's `$.param`) writes a field; a space becomes `+`.
fn form_encode(program: &[u8]) -> String {
    let mut out = String::new();
    for &b in program {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_body_decodes_or_is_refused_never_panics(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        kind in prop_oneof![Just(ContentKind::Form), Just(ContentKind::Json), Just(ContentKind::Other)],
    ) {
        match decode(kind, Bytes::from(body.clone())) {
            Ok(d) => {
                // What a decoding yields is never longer than the body it came from.
                prop_assert!(d.program.len() <= body.len());
                if d.form == RequestForm::Raw {
                    prop_assert_eq!(&d.program[..], &body[..]);
                }
            }
            Err(m) => {
                prop_assert!(kind != ContentKind::Other);
                prop_assert!(m.0.starts_with("Malformed"), "{}", m.0);
            }
        }
    }

    #[test]
    fn a_form_encoded_program_decodes_to_itself(
        program in proptest::collection::vec(any::<u8>(), 1..512),
        with_vet in any::<bool>(),
    ) {
        let mut body = format!("version=2&body={}", form_encode(&program));
        if with_vet {
            body.push_str("&withVet=");
        }
        let d = decode(ContentKind::Form, Bytes::from(body)).unwrap();
        prop_assert_eq!(d.form, RequestForm::Form);
        prop_assert_eq!(&d.program[..], &program[..]);
    }

    #[test]
    fn a_json_program_decodes_to_itself(program in "\\PC{1,200}", vet in any::<bool>()) {
        let body = serde_json::json!({"Body": program, "WithVet": vet}).to_string();
        let d = decode(ContentKind::Json, Bytes::from(body)).unwrap();
        prop_assert_eq!(d.form, RequestForm::Json);
        prop_assert_eq!(&d.program[..], program.as_bytes());
    }

    #[test]
    fn a_raw_body_is_the_program_whatever_it_holds(
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let d = decode(ContentKind::Other, Bytes::from(body.clone())).unwrap();
        prop_assert_eq!(d.form, RequestForm::Raw);
        prop_assert_eq!(&d.program[..], &body[..]);
    }
}
