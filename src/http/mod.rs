//! The HTTP side: a hyper-util accept loop (HTTP/1 and HTTP/2) that can stop accepting and then
//! let every accepted request finish, plus the routes.

pub(crate) mod body;
mod connections;
pub mod cors;
pub(crate) mod form;
mod langs;
mod piston;
mod preface;
pub mod request;
mod response;
mod routes;
mod socket;
mod ui;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::compile::CompileService;
use crate::hooks::Hooks;
use crate::languages::Languages;
use crate::lifecycle::Health;
use crate::metrics::Metrics;
use connections::ConnectionLimit;
pub use cors::Cors;
use preface::PrefaceDeadline;

/// Largest request head (request line and headers) an HTTP/1 client may send; hyper answers 431
/// past it. Browsers send a few KiB; hyper's own default (~400 KiB) let one header line take it.
pub const MAX_HEAD_BYTES: usize = 32 << 10;
/// Most header fields in one request (hyper answers 431 past it).
pub const MAX_HEADERS: usize = 100;

/// Everything a request handler needs; shared by all connections.
pub struct App {
    /// The default language's service.
    pub compile: Arc<CompileService>,
    pub languages: Arc<Languages>,
    pub cors: Cors,
    pub health: Arc<Health>,
    pub metrics: Option<Arc<Metrics>>,
    pub hooks: Arc<dyn Hooks>,
    /// How long a client may take to send the request head, and again the whole body.
    pub read_timeout: Duration,
    /// Whether `GET /` serves the playground page.
    pub ui: bool,
    /// The Judge0 API, when served.
    pub judge0: Option<Arc<crate::judge0::Judge0>>,
    next_request_id: AtomicU64,
    /// Open /socket sessions; the server waits for them after it stops accepting.
    sessions: TaskTracker,
    /// Cancelled when the server stops accepting: sessions take no new runs and close once
    /// their last run has ended.
    closing: CancellationToken,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        languages: Arc<Languages>,
        cors: Cors,
        health: Arc<Health>,
        metrics: Option<Arc<Metrics>>,
        hooks: Arc<dyn Hooks>,
        read_timeout: Duration,
        ui: bool,
        judge0: Option<Arc<crate::judge0::Judge0>>,
    ) -> Arc<App> {
        Arc::new(App {
            compile: languages.default_language().compile.clone(),
            languages,
            cors,
            health,
            metrics,
            hooks,
            read_timeout,
            ui,
            judge0,
            next_request_id: AtomicU64::new(1),
            sessions: TaskTracker::new(),
            closing: CancellationToken::new(),
        })
    }
}

/// Serves until `stop_accepting` resolves, then closes the listener and waits for the accepted
/// connections' requests to be answered (idle keep-alive connections are closed at once). At most
/// `max_connections` are open at once; more are answered 503 and closed. It also waits for the
/// /socket sessions' runs to end.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    max_connections: usize,
    stop_accepting: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(128);
    let limit = ConnectionLimit::new(max_connections, app.hooks.clone());
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop_accepting);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of fds or a connection reset before accept: not fatal; back off a
                        // moment so an fd shortage does not spin the loop.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Some(slot) = limit.admit() else {
                    limit.refuse(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(PrefaceDeadline::new(stream, app.read_timeout));
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, std::convert::Infallible>(routes::handle(&app, req).await) }
                });
                let conn = builder
                    .serve_connection_with_upgrades(io, service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut stop_accepting => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "listener closed; finishing accepted requests"
    );
    app.closing.cancel();
    graceful.shutdown().await;
    app.sessions.close();
    app.sessions.wait().await;
}
