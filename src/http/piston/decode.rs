//! Decodes a Piston request body into a run request, with Piston's checks in Piston's order
//! and ours (`run::request`) after them; every failure is the message of a 400.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{App, aliases, semver, version_matches};
use crate::languages::Language;
use crate::run::{Bounds, RunLimits, RunRequest};
use crate::sandbox::job::JobFile;

/// A decoded request: its language and run request.
pub(super) struct Decoded<'a> {
    pub lang: &'a Arc<Language>,
    pub req: RunRequest,
}

fn find<'a>(app: &'a App, name: &str, version: &str) -> Option<&'a Arc<Language>> {
    app.languages.iter().find(|l| {
        l.stages.is_some()
            && (l.name == name || aliases(&l.name).contains(&name))
            && version_matches(version, &semver(&l.version))
    })
}

fn decode_content(i: usize, f: &Map<String, Value>) -> Result<Bytes, String> {
    let Some(Value::String(content)) = f.get("content") else {
        return Err(format!("files[{i}].content must be a string"));
    };
    match f.get("encoding").and_then(Value::as_str).unwrap_or("utf8") {
        "utf8" | "" => Ok(Bytes::from(content.clone().into_bytes())),
        "base64" => base64_decode(content)
            .map(Bytes::from)
            .ok_or_else(|| format!("files[{i}].content is not valid base64")),
        "hex" => hex_decode(content)
            .map(Bytes::from)
            .ok_or_else(|| format!("files[{i}].content is not valid hex")),
        other => Err(format!(
            "files[{i}].encoding {other:?} is none of utf8, base64, hex"
        )),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A limit field: missing, null or -1 keeps the language's; other negatives are refused.
fn limit(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(-1.0) => Ok(None),
            Some(v) if v < 0.0 => Err(format!("{name} must be non-negative")),
            Some(v) => Ok(Some(v as u64)),
            None => Err(format!("{name} must be a number")),
        },
        Some(_) => Err(format!("{name} must be a number")),
    }
}

pub(super) fn decode<'a>(
    app: &'a App,
    body: &[u8],
    bounds: &Bounds,
) -> Result<Decoded<'a>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(body) = value else {
        return Err("the request must be a JSON object".into());
    };
    let language = match body.get("language") {
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err("language is required as a string".into()),
    };
    let version = match body.get("version") {
        None | Some(Value::Null) => "*",
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        _ => return Err("version is required as a string".into()),
    };
    let Some(Value::Array(files)) = body.get("files") else {
        return Err("files is required as an array".into());
    };
    let lang = find(app, language, version)
        .ok_or_else(|| format!("{language}-{version} runtime is unknown"))?;
    if files.is_empty() {
        return Err("files must hold at least one file".into());
    }
    if files.len() > bounds.max_files {
        return Err(format!("too many files: at most {}", bounds.max_files));
    }
    let mut decoded = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let Value::Object(f) = f else {
            return Err(format!("files[{i}] must be an object"));
        };
        let content = decode_content(i, f)?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        let path = match (i, name) {
            (0, "") => String::new(),
            (_, "") => format!("file{i}.code"),
            (_, n) => n.to_owned(),
        };
        decoded.push(JobFile {
            path,
            executable: false,
            content,
        });
    }
    let mut stdin = match body.get("stdin") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        _ => return Err("stdin must be a string".into()),
    };
    // As Piston: stdin ends with a newline.
    if !stdin.ends_with('\n') {
        stdin.push('\n');
    }
    let args = match body.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("args[{i}] must be a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("args must be an array".into()),
    };
    let ms = |n: Option<u64>| n.map(Duration::from_millis);
    let output = limit(&body, "output_max_size")?.map(|n| n as usize);
    let compile_limits = RunLimits {
        wall: ms(limit(&body, "compile_timeout")?),
        cpu: ms(limit(&body, "compile_cpu_time")?),
        memory: limit(&body, "compile_memory_limit")?,
        pids: None,
        output,
    };
    let run_limits = RunLimits {
        wall: ms(limit(&body, "run_timeout")?),
        cpu: ms(limit(&body, "run_cpu_time")?),
        memory: limit(&body, "run_memory_limit")?,
        pids: None,
        output,
    };
    let req = RunRequest {
        files: decoded,
        stdin: Bytes::from(stdin.into_bytes()),
        args,
        compile_limits,
        run_limits,
    };
    req.check(bounds).map_err(|e| e.0)?;
    Ok(Decoded { lang, req })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aGk").unwrap(), b"hi");
        assert!(base64_decode("a*b").is_none());
        assert_eq!(hex_decode("6869").unwrap(), b"hi");
        assert!(hex_decode("686").is_none());
    }
}
