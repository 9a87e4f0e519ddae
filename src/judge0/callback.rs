//! `callback_url`: once judged, the submission is sent with PUT, as Judge0 sends it (the default
//! fields, base64), to a host the operator allow-listed (checked at submission). Plain HTTP only;
//! three tries, each bounded in time, as Judge0's callbacks.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::record::{DEFAULT_FIELDS, Record};

const TRIES: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

/// (host, port, path) of an `http://` URL.
fn parts(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let authority = authority.rsplit('@').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)
        }
        _ => (authority.to_owned(), 80),
    };
    Some((host, port, path))
}

async fn put_once(url: &str, body: &[u8]) -> Result<u16, String> {
    let (host, port, path) = parts(url).ok_or("not an http:// URL")?;
    let mut s = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "no HTTP status line".to_owned())
}

pub async fn send(url: &str, rec: &Record) {
    let Ok(body) = rec.render(DEFAULT_FIELDS, true) else {
        return;
    };
    let body = serde_json::to_vec(&body).expect("serializes");
    for attempt in 1..=TRIES {
        match tokio::time::timeout(TIMEOUT, put_once(url, &body)).await {
            Ok(Ok(code)) if (200..300).contains(&code) => return,
            Ok(Ok(code)) => {
                tracing::info!(token = %rec.token, code, attempt, "judge0: callback refused")
            }
            Ok(Err(e)) => {
                tracing::info!(token = %rec.token, error = %e, attempt, "judge0: callback failed")
            }
            Err(_) => tracing::info!(token = %rec.token, attempt, "judge0: callback timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parts() {
        assert_eq!(
            parts("http://127.0.0.1:9000/cb?x=1"),
            Some(("127.0.0.1".into(), 9000, "/cb?x=1".into()))
        );
        assert_eq!(parts("http://h"), Some(("h".into(), 80, "/".into())));
        assert_eq!(parts("https://h/"), None);
    }
}
