//! Reads a request body without ever holding more than `max` bytes of it, and without letting a
//! slow client hold the request open forever. The Go server read the whole body first.
//!
//! A body over the limit is not kept, but up to `DISCARD` more bytes of it are read and thrown
//! away before answering: a client that is still sending then reads a clean 400 instead of a reset
//! connection. Anything larger is cut off at once.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// How much of an oversized body is read and dropped so its client can read our answer.
const DISCARD: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over `max`; `head` is what was kept of it (at most `max` bytes from its start, nothing
    /// when the declared length alone was too large), to tell which form it was.
    TooLarge {
        head: Bytes,
    },
    Timeout,
    /// The client went away or sent a malformed body.
    Broken,
}

pub async fn read_bounded(
    headers: &http::HeaderMap,
    mut body: Incoming,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64 + DISCARD) {
        return Err(BodyError::TooLarge { head: Bytes::new() });
    }
    let read = async {
        // A body that arrives in one frame (the usual case: a small program read with its head)
        // is returned as that frame, without a copy: a cache hit only hashes it. Only a second
        // frame starts a buffer.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Broken)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let before = seen;
            seen += data.len() as u64;
            if seen > max as u64 + DISCARD {
                return Err(BodyError::TooLarge {
                    head: first.take().unwrap_or_else(|| buf.split().freeze()),
                });
            }
            // Past `max` nothing more is kept: the start is enough to tell the request's form.
            let room = (max as u64).saturating_sub(before) as usize;
            if room == 0 && !data.is_empty() {
                continue;
            }
            let data = if data.len() > room {
                data.slice(..room)
            } else {
                data
            };
            if first.is_none() && buf.is_empty() {
                first = Some(data);
                continue;
            }
            if let Some(first) = first.take() {
                buf.reserve(declared.map_or(0, |n| n as usize).min(max));
                buf.extend_from_slice(&first);
            }
            buf.extend_from_slice(&data);
        }
        let kept = first.unwrap_or_else(|| buf.freeze());
        if seen > max as u64 {
            Err(BodyError::TooLarge { head: kept })
        } else {
            Ok(kept)
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Timeout)?
}
