//! `GET /socket`: live output over a WebSocket, in the protocol of the Go playground's socket
//! transport (golang.org/x/tools `playground/socket`, the client `SocketTransport`), so that its
//! clients work unchanged. Every message is one JSON object:
//! - in: `{"Id", "Kind": "run", "Body": program, "Options"}` (a second run with the same `Id`
//!   kills the first) and `{"Id", "Kind": "kill"}`;
//! - out: `{"Id", "Kind": "stdout" | "stderr", "Body": output}` while the program runs, then
//!   exactly one `{"Id", "Kind": "end", "Body"}`, whose `Body` is empty when the program exited 0
//!   and otherwise says why it ended (`exit status 3`, `process took too long`, ...).
//!
//! Several runs share a connection. A run is a task of its own that owns the sandbox run: a kill
//! or a closed connection drops it, and with it the sandbox, at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::App;
use super::response::{Resp, json_error, response};
use crate::compile::{CompileService, OUTPUT_TOO_LARGE};
use crate::sandbox::{Chunk, StreamKind};

/// Output of one stream written within this long is sent as one message, as the Go server does.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Output messages per run; past them the run is killed and only its `end` is sent (the Go
/// server's limit).
pub const MAX_MESSAGES: usize = 1000;
/// Runs at once on one connection; admission still bounds them all together.
pub const MAX_RUNS_PER_CONNECTION: usize = 16;
/// The `end` of a run that a `kill`, or a second run with its `Id`, stopped (Go's words for it).
pub const KILLED: &str = "signal: killed";
/// Messages waiting for a client that does not read; past them the connection is dropped (its
/// runs killed). Runs never wait for the client: a run that did would stop reading its program's
/// output, and its deadline would wait with it.
const OUTBOX: usize = 4096;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

#[derive(Deserialize)]
struct In {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "Kind", default)]
    kind: String,
    #[serde(rename = "Body", default)]
    body: String,
    // `Options` (`{"Race": bool}`) may come too; it means nothing here.
}

#[derive(Serialize)]
struct Out<'a> {
    #[serde(rename = "Id")]
    id: &'a str,
    #[serde(rename = "Kind")]
    kind: &'a str,
    #[serde(rename = "Body")]
    body: &'a str,
}

fn message(id: &str, kind: &str, body: &str) -> Message {
    Message::text(serde_json::to_string(&Out { id, kind, body }).expect("message serializes"))
}

fn has_token(req: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers the upgrade request and, when it is one, starts the session on the upgraded
/// connection.
pub fn upgrade(app: &Arc<App>, mut req: Request<Incoming>) -> Resp {
    if req.method() != Method::GET {
        let mut r = json_error(
            405,
            "Method not allowed: /socket takes a WebSocket upgrade (GET).",
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    if !app.cors.allows(req.headers()) {
        return json_error(
            403,
            "Origin not allowed: this page's origin is not on the server's allow-origin list.",
        );
    }
    if !has_token(&req, UPGRADE, "websocket") || !has_token(&req, CONNECTION, "upgrade") {
        let mut r = json_error(
            426,
            "/socket speaks WebSocket only: send a WebSocket upgrade (Upgrade: websocket).",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = json_error(426, "Unsupported WebSocket version: use 13.");
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return json_error(400, "Missing Sec-WebSocket-Key.");
    };
    if app.closing.is_cancelled() {
        return json_error(503, "Server shutting down: connect again.");
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = WebSocketConfig::default()
        // A run message is the program, JSON-escaped (at most six bytes a byte), plus its frame.
        .max_message_size(Some(app.compile.max_program_bytes() * 6 + 4096))
        .max_frame_size(Some(app.compile.max_program_bytes() * 6 + 4096));
    let session_app = app.clone();
    app.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session(session_app, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut r = response(101, "text/plain; charset=utf-8", Bytes::new());
    let h = r.headers_mut();
    h.remove(http::header::CONTENT_TYPE);
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    r
}

struct Run {
    seq: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Why a session ended.
enum Ended {
    /// The client closed the connection or it broke: every run dies with it.
    ClientGone,
    /// The client sent something that is not a message of the protocol.
    Invalid(String),
    /// The daemon is stopping and the last run has ended.
    Closing,
}

async fn session(app: Arc<App>, ws: Socket) {
    let (mut sink, mut stream) = ws.split();
    let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);
    let out = Outbox {
        tx: out,
        stuck: CancellationToken::new(),
    };
    let writer = tokio::spawn(async move {
        while let Some(m) = outbox.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let (done_tx, mut done) = mpsc::unbounded_channel::<(String, u64)>();
    let mut runs: HashMap<String, Run> = HashMap::new();
    let mut seq = 0u64;
    let mut closing = false;
    let ended = loop {
        if closing && runs.is_empty() {
            break Ended::Closing;
        }
        tokio::select! {
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => Bytes::from(t),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break Ended::ClientGone,
                };
                let m: In = match serde_json::from_slice(&text) {
                    Ok(m) => m,
                    Err(e) => break Ended::Invalid(format!("invalid message ({e})")),
                };
                match m.kind.as_str() {
                    "run" => {
                        if let Some(old) = runs.remove(&m.id) {
                            // Its `end` goes out before anything of the new run.
                            old.cancel.cancel();
                            let _ = old.task.await;
                        }
                        let refusal = if closing {
                            Some("Server shutting down: run it again in a moment.")
                        } else if runs.len() >= MAX_RUNS_PER_CONNECTION {
                            Some("Too many programs running on this connection.")
                        } else {
                            None
                        };
                        if let Some(why) = refusal {
                            out.send(message(&m.id, "end", why));
                            continue;
                        }
                        seq += 1;
                        let cancel = CancellationToken::new();
                        let task = tokio::spawn(run(
                            app.compile.clone(),
                            m.id.clone(),
                            Bytes::from(m.body),
                            out.clone(),
                            cancel.clone(),
                            (done_tx.clone(), seq),
                        ));
                        runs.insert(m.id, Run { seq, cancel, task });
                    }
                    "kill" => {
                        if let Some(r) = runs.get(&m.id) {
                            r.cancel.cancel();
                        }
                    }
                    // The Go server ignores other kinds too.
                    _ => {}
                }
            }
            Some((id, s)) = done.recv() => {
                if runs.get(&id).is_some_and(|r| r.seq == s) {
                    runs.remove(&id);
                }
            }
            _ = app.closing.cancelled(), if !closing => closing = true,
            _ = out.stuck.cancelled() => break Ended::ClientGone,
        }
    };
    for r in runs.into_values() {
        r.task.abort();
        // Resolves once the run is dropped, i.e. its sandbox is being removed.
        let _ = r.task.await;
    }
    let close = |code, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    match ended {
        Ended::ClientGone => writer.abort(),
        Ended::Invalid(why) => {
            tracing::debug!(reason = %why, "closing a websocket");
            out.send(close(CloseCode::Invalid, &why));
            finish(writer, out).await;
        }
        Ended::Closing => {
            out.send(close(CloseCode::Away, "server shutting down"));
            finish(writer, out).await;
        }
    }
}

/// Lets the writer send what is queued and close, for a bounded time: a client that stopped
/// reading does not hold the drain up.
async fn finish(writer: JoinHandle<()>, out: Outbox) {
    drop(out);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// The queue to the connection's writer, shared by the session and its runs.
#[derive(Clone)]
struct Outbox {
    tx: mpsc::Sender<Message>,
    /// Cancelled when the queue overflowed: the client is not reading.
    stuck: CancellationToken,
}

impl Outbox {
    fn send(&self, m: Message) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(m) {
            self.stuck.cancel();
        }
    }
}

/// One run: forwards its output as it comes, coalesced, then sends its one `end`.
async fn run(
    compile: Arc<CompileService>,
    id: String,
    program: Bytes,
    out: Outbox,
    cancel: CancellationToken,
    (done, seq): (mpsc::UnboundedSender<(String, u64)>, u64),
) {
    let started = Instant::now();
    let (live, mut output) = mpsc::unbounded_channel::<Chunk>();
    let mut sandbox_run = Box::pin(async move { compile.run_live(program, live).await });
    let mut batch = Batch::default();
    let mut sent = 0usize;
    let mut send = |kind: StreamKind, text: String| -> bool {
        if sent == MAX_MESSAGES {
            return false;
        }
        sent += 1;
        out.send(message(&id, kind.as_str(), &text));
        true
    };
    let end = 'run: loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break KILLED.to_string(),
            end = &mut sandbox_run => {
                while let Ok(chunk) = output.try_recv() {
                    if let Some((kind, text)) = batch.push(chunk)
                        && !send(kind, text)
                    {
                        break 'run OUTPUT_TOO_LARGE.to_string();
                    }
                }
                if let Some((kind, text)) = batch.take()
                    && !send(kind, text)
                {
                    break OUTPUT_TOO_LARGE.to_string();
                }
                break end;
            }
            Some(chunk) = output.recv() => {
                if let Some((kind, text)) = batch.push(chunk)
                    && !send(kind, text)
                {
                    break OUTPUT_TOO_LARGE.to_string();
                }
            }
            _ = tokio::time::sleep_until(batch.due()), if batch.deadline.is_some() => {
                batch.deadline = None;
                if let Some((kind, text)) = batch.take()
                    && !send(kind, text)
                {
                    break OUTPUT_TOO_LARGE.to_string();
                }
            }
        }
    };
    // Dropping the run kills and removes its sandbox if it is still going, before the `end`.
    drop(sandbox_run);
    out.send(message(&id, "end", &end));
    tracing::debug!(
        id = %id,
        end = %end,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "socket run ended"
    );
    let _ = done.send((id, seq));
}

/// Coalesces output as the Go server does: writes of one stream gather until the stream changes
/// or `COALESCE` has passed since the batch's timer started.
#[derive(Default)]
struct Batch {
    kind: Option<StreamKind>,
    buf: Vec<u8>,
    deadline: Option<tokio::time::Instant>,
}

impl Batch {
    /// Adds a write; returns the batch it closed, if it was of the other stream.
    fn push(&mut self, chunk: Chunk) -> Option<(StreamKind, String)> {
        let mut closed = None;
        if self.kind != Some(chunk.kind) {
            closed = self.take();
            self.kind = Some(chunk.kind);
            self.deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
        }
        self.buf.extend_from_slice(&chunk.data);
        closed
    }

    fn take(&mut self) -> Option<(StreamKind, String)> {
        let kind = self.kind.take()?;
        if self.buf.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        Some((kind, text))
    }

    fn due(&self) -> tokio::time::Instant {
        self.deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + COALESCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: StreamKind, s: &str) -> Chunk {
        Chunk {
            kind,
            data: s.as_bytes().to_vec(),
            at: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn batches_one_stream_until_it_changes() {
        let mut b = Batch::default();
        assert_eq!(b.push(chunk(StreamKind::Stdout, "a")), None);
        assert!(b.deadline.is_some());
        assert_eq!(b.push(chunk(StreamKind::Stdout, "b")), None);
        assert_eq!(
            b.push(chunk(StreamKind::Stderr, "c")),
            Some((StreamKind::Stdout, "ab".into()))
        );
        assert_eq!(b.take(), Some((StreamKind::Stderr, "c".into())));
        assert_eq!(b.take(), None);
    }

    #[test]
    fn messages_have_the_go_field_names() {
        let m = message("7", "end", "exit status 3");
        assert_eq!(
            m.into_text().unwrap().as_str(),
            r#"{"Id":"7","Kind":"end","Body":"exit status 3"}"#
        );
    }
}
