//! `GET /api/v2/connect`: Piston's WebSocket protocol, so that a program can read input while it
//! runs. JSON text messages:
//! - in: `{"type": "init", …execute's fields}` (within a second of the upgrade; its `stdin` is
//!   not used), then `{"type": "data", "stream": "stdin", "data": …}`, `{"type": "signal",
//!   "signal": "SIGINT" | "SIGTERM" | "SIGKILL" | …}` and, ours, `{"type": "eof"}` (the end of the
//!   program's stdin; Piston's server has none);
//! - out: `{"type": "runtime", "language", "version"}`, `{"type": "stage", "stage": "compile" |
//!   "run"}`, `{"type": "data", "stream": "stdout" | "stderr", "data"}`, `{"type": "exit", "stage",
//!   "code", "signal"}`, `{"type": "error", "message"}`;
//! - close codes: 4999 job completed, 4000 already initialized, 4001 no init within a second,
//!   4002 a bad init or message (after its `error`), 4003 not yet initialized, 4004 a stream other
//!   than stdin, 4005 an unknown signal.
//!
//! Unlike Piston's own server, signals reach the program's processes and a client can end stdin.
//! The session owns its run: a client that goes away drops it, and with it the sandbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::header::{
    CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::render::stage_exit;
use crate::http::App;
use crate::http::piston;
use crate::http::response::{Resp, json_error, response};
use crate::run::{self, Bounds, RunResult};
use crate::sandbox::job::{StageOutcome, StdinEvent};

/// How long a client has to send `init` after the upgrade (Piston's second).
const INIT_TIMEOUT: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// The signals a client may send, by name.
fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "SIGINT" => libc::SIGINT,
        "SIGTERM" => libc::SIGTERM,
        "SIGKILL" => libc::SIGKILL,
        "SIGHUP" => libc::SIGHUP,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        _ => return None,
    })
}

fn has_token(req: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers the upgrade request and, when it is one, starts the session.
pub fn upgrade(app: &Arc<App>, mut req: Request<Incoming>) -> Resp {
    if req.method() != Method::GET {
        return json_error(
            405,
            "Method not allowed: /api/v2/connect takes a WebSocket upgrade.",
        );
    }
    if !app.cors.allows(req.headers()) {
        app.hooks.origin_refused();
        return json_error(403, "Origin not allowed.");
    }
    let version_ok = req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        == Some(b"13");
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return json_error(400, "Missing Sec-WebSocket-Key.");
    };
    if !has_token(&req, UPGRADE, "websocket")
        || !has_token(&req, CONNECTION, "upgrade")
        || !version_ok
    {
        let mut r = json_error(426, "/api/v2/connect speaks WebSocket (version 13) only.");
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if app.closing.is_cancelled() {
        return json_error(503, "Server shutting down: connect again.");
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let bounds = Bounds::default();
    let max = bounds.max_total_bytes * 2 + bounds.max_stdin_bytes * 2 + (64 << 10);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
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

fn text(v: Value) -> Message {
    Message::text(v.to_string())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// The next JSON object from the client; `None` when it is gone.
async fn next_json(
    stream: &mut (impl Stream<Item = Result<Message, impl std::fmt::Debug>> + Unpin),
) -> Option<Result<Value, String>> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(t)) => {
                return Some(
                    serde_json::from_str::<Value>(&t)
                        .map_err(|e| format!("malformed JSON: {e}"))
                        .and_then(|v| {
                            if v.is_object() {
                                Ok(v)
                            } else {
                                Err("a message must be a JSON object".into())
                            }
                        }),
                );
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// A stage's output as data messages, and its exit.
fn stage_messages(stage: &str, s: &StageOutcome) -> Vec<Message> {
    let mut out: Vec<Message> = s
        .output()
        .iter()
        .map(|c| {
            text(json!({"type": "data", "stream": c.kind.as_str(),
                        "data": String::from_utf8_lossy(&c.data)}))
        })
        .collect();
    out.push(exit_message(stage, s));
    out
}

fn exit_message(stage: &str, s: &StageOutcome) -> Message {
    let (code, signal) = stage_exit(s);
    text(json!({"type": "exit", "stage": stage, "code": code, "signal": signal}))
}

async fn session(app: Arc<App>, ws: Socket) {
    let (mut sink, mut stream) = ws.split();
    let init = match tokio::time::timeout(INIT_TIMEOUT, next_json(&mut stream)).await {
        Err(_) => {
            let _ = sink.send(close(4001, "Initialization Timeout")).await;
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(why))) => {
            let _ = sink
                .send(text(json!({"type": "error", "message": why})))
                .await;
            let _ = sink.send(close(4002, "Notified Error")).await;
            return;
        }
        Ok(Some(Ok(v))) => v,
    };
    if init["type"] != "init" {
        let _ = sink.send(close(4003, "Not yet initialized")).await;
        return;
    }
    let bounds = Bounds::default();
    let prepared = piston::decode(&app, init.to_string().as_bytes(), &bounds)
        .and_then(|d| piston::prepare(d).map_err(|e| e.0));
    let (lang, job) = match prepared {
        Ok(p) => p,
        Err(why) => {
            let _ = sink
                .send(text(json!({"type": "error", "message": why})))
                .await;
            let _ = sink.send(close(4002, "Notified Error")).await;
            return;
        }
    };
    let _ = sink
        .send(text(json!({"type": "runtime", "language": lang.name,
                          "version": piston::semver(&lang.version)})))
        .await;
    let Some(_slot) = lang.compile.admit().await else {
        let _ = sink
            .send(text(
                json!({"type": "error", "message": "the server is busy; try again later"}),
            ))
            .await;
        let _ = sink.send(close(4002, "Notified Error")).await;
        return;
    };
    let started = Instant::now();
    let sandbox = lang.compile.sandbox().clone();
    // The compile stage, reported when it is over; the run stage's output as it is written.
    let compile = if job.stages.compile.is_some() {
        let _ = sink
            .send(text(json!({"type": "stage", "stage": "compile"})))
            .await;
        let compiled = tokio::select! {
            r = run::compile_stage(sandbox.as_ref(), &job) => r,
            // A client that goes away drops the stage, and with it its sandbox.
            () = gone(&mut stream) => return,
        };
        match compiled {
            Ok(Some(c)) => {
                for m in stage_messages("compile", &c) {
                    let _ = sink.send(m).await;
                }
                if !c.succeeded() {
                    let result = Ok(RunResult {
                        compile: Some(c),
                        run: None,
                    });
                    lang.compile
                        .record_run(RunResult::metric(&result), started.elapsed());
                    let _ = sink.send(close(4999, "Job Completed")).await;
                    return;
                }
                Some(c)
            }
            Ok(None) => None,
            Err(e) => {
                lang.compile
                    .record_run(RunResult::metric(&Err(e)), started.elapsed());
                let _ = sink
                    .send(text(
                        json!({"type": "error", "message": "the sandbox failed"}),
                    ))
                    .await;
                let _ = sink.send(close(4002, "Notified Error")).await;
                return;
            }
        }
    } else {
        None
    };
    let _ = sink
        .send(text(json!({"type": "stage", "stage": "run"})))
        .await;
    let (live_tx, mut live_rx) = mpsc::unbounded_channel();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let mut run = Box::pin(run::run_stage(
        sandbox.as_ref(),
        &job,
        compile.as_ref(),
        Some(live_tx),
        Some(in_rx),
    ));
    let mut in_tx = Some(in_tx);
    let mut reading = true;
    let finished = loop {
        tokio::select! {
            biased;
            Some(chunk) = live_rx.recv() => {
                let m = text(json!({"type": "data", "stream": chunk.kind.as_str(),
                                    "data": String::from_utf8_lossy(&chunk.data)}));
                if sink.send(m).await.is_err() {
                    return;
                }
            }
            r = &mut run => break r,
            msg = next_json(&mut stream), if reading => {
                let Some(msg) = msg else {
                    // The client is gone: the run goes with it.
                    return;
                };
                let msg = match msg {
                    Ok(m) => m,
                    Err(why) => {
                        let _ = sink.send(text(json!({"type": "error", "message": why}))).await;
                        let _ = sink.send(close(4002, "Notified Error")).await;
                        return;
                    }
                };
                let event = match msg["type"].as_str() {
                    Some("init") => {
                        let _ = sink.send(close(4000, "Already Initialized")).await;
                        return;
                    }
                    Some("data") if msg["stream"] != "stdin" => {
                        let _ = sink.send(close(4004, "Can only write to stdin")).await;
                        return;
                    }
                    Some("data") => StdinEvent::Data(Bytes::from(
                        msg["data"].as_str().unwrap_or("").to_owned().into_bytes(),
                    )),
                    Some("eof") => StdinEvent::Eof,
                    Some("signal") => match msg["signal"].as_str().and_then(signal_number) {
                        Some(sig) => StdinEvent::Signal(sig),
                        None => {
                            let _ = sink.send(close(4005, "Invalid signal")).await;
                            return;
                        }
                    },
                    // As Piston: unknown types are ignored.
                    _ => continue,
                };
                if let Some(tx) = &in_tx
                    && tx.send(event).is_err()
                {
                    in_tx = None;
                }
                reading = in_tx.is_some();
            }
        }
    };
    drop(run);
    while let Ok(chunk) = live_rx.try_recv() {
        let m = text(json!({"type": "data", "stream": chunk.kind.as_str(),
                            "data": String::from_utf8_lossy(&chunk.data)}));
        let _ = sink.send(m).await;
    }
    match finished {
        Ok(r) => {
            let _ = sink.send(exit_message("run", &r)).await;
            let result = Ok(RunResult {
                compile,
                run: Some(r),
            });
            lang.compile
                .record_run(RunResult::metric(&result), started.elapsed());
            let _ = sink.send(close(4999, "Job Completed")).await;
        }
        Err(e) => {
            lang.compile
                .record_run(RunResult::metric(&Err(e)), started.elapsed());
            let _ = sink
                .send(text(
                    json!({"type": "error", "message": "the sandbox failed"}),
                ))
                .await;
            let _ = sink.send(close(4002, "Notified Error")).await;
        }
    }
}

/// Resolves when the client closes or its connection breaks; what it sends meanwhile (during the
/// compile stage) is dropped.
async fn gone(stream: &mut (impl Stream<Item = Result<Message, impl std::fmt::Debug>> + Unpin)) {
    while let Some(Ok(m)) = stream.next().await {
        if matches!(m, Message::Close(_)) {
            return;
        }
    }
}
