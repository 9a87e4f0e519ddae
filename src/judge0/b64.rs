//! Base64 as Judge0 speaks it: input with or without line breaks and padding; output the way
//! Ruby's `Base64.encode64` writes it (a newline every 60 characters and at the end), which
//! Judge0's clients strip before decoding. Stored records use plain base64 (`serde_bytes`).

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `None` for bytes that are not base64 (after dropping whitespace).
pub fn decode(s: &str) -> Option<Vec<u8>> {
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT.decode(clean).ok()
}

/// Ruby's `encode64`: lines of 60 characters, each ended by a newline.
pub fn encode_lines(b: &[u8]) -> String {
    let plain = base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = String::with_capacity(plain.len() + plain.len() / 60 + 1);
    for chunk in plain.as_bytes().chunks(60) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// serde for `Option<Vec<u8>>` as plain base64 strings, for stored records.
pub mod opt {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_lines_and_lenient_input() {
        assert_eq!(encode_lines(b"hello, Judge0\n"), "aGVsbG8sIEp1ZGdlMAo=\n");
        let long = encode_lines(&[b'x'; 100]);
        assert_eq!(long.lines().next().unwrap().len(), 60);
        assert_eq!(decode(&long).unwrap(), vec![b'x'; 100]);
        assert_eq!(decode("aGk").unwrap(), b"hi");
        assert_eq!(decode("aGk=\n").unwrap(), b"hi");
        assert!(decode("not base64!").is_none());
        assert_eq!(encode_lines(b""), "");
    }
}
