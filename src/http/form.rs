//! `application/x-www-form-urlencoded` fields, for the Go playground's /fmt form and the `lang`
//! query parameter.

/// The first value of `name` in `input` (`a=1&b=2`), decoded; `None` when it is absent.
pub fn field(input: &[u8], name: &str) -> Option<Vec<u8>> {
    input.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (decode(key) == name.as_bytes()).then(|| decode(value))
    })
}

/// `+` is a space and `%XX` a byte; a `%` not followed by two hex digits stays as it is.
fn decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() && hex(s[i + 1]).is_some() && hex(s[i + 2]).is_some() => {
                out.push(hex(s[i + 1]).unwrap() << 4 | hex(s[i + 2]).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields() {
        let form = b"imports=true&body=package+main%0A%0Afunc%20main()%7B%7D&x=%zz%4";
        assert_eq!(
            field(form, "body").unwrap(),
            b"package main\n\nfunc main(){}"
        );
        assert_eq!(field(form, "imports").unwrap(), b"true");
        assert_eq!(field(form, "x").unwrap(), b"%zz%4");
        assert_eq!(field(form, "lang"), None);
        assert_eq!(field(b"lang", "lang").unwrap(), b"");
    }
}
