//! The shared tier: answers kept in Redis (one server or a Cluster) so that every daemon of a
//! fleet, and the next VM after a halt, reuse them. It is an optimisation and never a dependency:
//! a lookup has a small time budget, writes go through a bounded background queue, and when most
//! recent operations fail the tier is marked down and skipped until a probe answers again (see
//! `health`). The client reconnects by itself; every connection is rebuilt by the probe.

mod health;
pub mod target;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, RedisResult, TlsCertificates};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::AbortHandle;

use super::value::{self, FORMAT};
use super::{Key, Stored};
use crate::hooks::{Hooks, SharedOutcome};
use health::Health;
pub use target::{Auth, Target};

/// Writes waiting for Redis; past this, new ones are dropped (and counted).
const WRITE_QUEUE: usize = 256;
/// Writes sent to Redis at once.
const WRITES_IN_FLIGHT: usize = 8;
/// A write, a probe's first command and a connection attempt each get at most this long.
const SLOW_OP: Duration = Duration::from_secs(1);
/// Pause between probes while the tier is down: doubles from the first to the last.
const PROBE_PAUSE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));

/// The validated `shared-cache*` settings.
#[derive(Clone)]
pub struct SharedSettings {
    pub target: Target,
    /// The URL as given (it holds no credentials), for logs.
    pub url: String,
    pub ttl: Duration,
    /// How long a lookup may wait for Redis before the request goes on without it.
    pub budget: Duration,
    /// PEM certificates that a TLS server's certificate must chain to, instead of the system's
    /// roots (a private CA).
    pub ca: Option<Vec<u8>>,
}

impl fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSettings")
            .field("url", &self.url)
            .field("ttl", &self.ttl)
            .field("budget", &self.budget)
            .finish()
    }
}

impl SharedSettings {
    /// Builds the clients once, so that a setting the client library refuses is a config error.
    pub fn check(&self) -> Result<(), String> {
        Conn::client(self)
            .map(drop)
            .map_err(|e| format!("shared-cache {}: {e}", self.url))
    }
}

#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

enum AnyClient {
    One(Box<Client>),
    Cluster(Box<ClusterClient>),
}

impl Conn {
    fn client(settings: &SharedSettings) -> RedisResult<AnyClient> {
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: settings.ca.clone(),
        };
        Ok(match &settings.target {
            Target::Standalone(info) => AnyClient::One(Box::new(match settings.ca {
                Some(_) => Client::build_with_tls((**info).clone(), certs())?,
                None => Client::open((**info).clone())?,
            })),
            Target::Cluster(nodes) => {
                let mut builder = ClusterClient::builder(nodes.clone())
                    .connection_timeout(SLOW_OP)
                    .response_timeout(SLOW_OP)
                    .retries(1);
                if settings.ca.is_some() {
                    builder = builder.certs(certs());
                }
                AnyClient::Cluster(Box::new(builder.build()?))
            }
        })
    }

    /// A connection that connects on its first command (and again after a failure).
    fn open(settings: &SharedSettings) -> RedisResult<Conn> {
        Ok(match Conn::client(settings)? {
            AnyClient::One(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(SLOW_OP))
                    .set_response_timeout(Some(SLOW_OP))
                    .set_number_of_retries(1);
                Conn::One(ConnectionManager::new_lazy_with_config(*client, config)?)
            }
            AnyClient::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(SLOW_OP)
                    .set_response_timeout(SLOW_OP);
                Conn::Cluster(client.get_pending_async_connection_with_config(config))
            }
        })
    }

    async fn query_once<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Conn::One(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Once more after a dropped connection: the first command after Redis came back finds the
    /// old connection closed, and the client has reconnected by the second (callers bound both
    /// together in time).
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self.query_once(cmd).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => self.query_once(cmd).await,
            other => other,
        }
    }
}

struct State {
    conn: Option<Conn>,
    health: Health,
}

struct Inner {
    settings: SharedSettings,
    prefix: String,
    state: Mutex<State>,
    went_down: Notify,
    hooks: Arc<dyn Hooks>,
}

/// The shared tier of one daemon. Dropping it stops its background tasks.
pub struct SharedCache {
    inner: Arc<Inner>,
    writes: mpsc::Sender<(String, Bytes)>,
    tasks: Vec<AbortHandle>,
}

impl Drop for SharedCache {
    fn drop(&mut self) {
        self.tasks.iter().for_each(AbortHandle::abort);
    }
}

impl SharedCache {
    /// Starts the tier marked down, with its probe already running: it is up (and logged so) once
    /// Redis first answers. Needs a Tokio runtime.
    pub fn start(settings: SharedSettings, hooks: Arc<dyn Hooks>) -> SharedCache {
        hooks.shared_cache_enabled();
        hooks.shared_cache_up(false);
        let mut health = Health::default();
        health.mark_down();
        tracing::info!(url = %settings.url, ttl_s = settings.ttl.as_secs(), "shared cache configured; connecting");
        let inner = Arc::new(Inner {
            prefix: format!("compilerd:v{FORMAT}:"),
            settings,
            state: Mutex::new(State { conn: None, health }),
            went_down: Notify::new(),
            hooks,
        });
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let prober = tokio::spawn(inner.clone().probe_while_down());
        let writer = tokio::spawn(inner.clone().write_queued(queue));
        SharedCache {
            inner,
            writes,
            tasks: vec![prober.abort_handle(), writer.abort_handle()],
        }
    }

    pub fn is_up(&self) -> bool {
        self.inner.state.lock().unwrap().health.is_up()
    }

    /// The answer stored under `key`, if Redis has a valid one within the lookup budget.
    pub async fn get(&self, key: &Key) -> Option<Stored> {
        let inner = &self.inner;
        let Some(mut conn) = inner.conn_if_up() else {
            inner
                .hooks
                .shared_cache_op(false, SharedOutcome::Skipped, None);
            return None;
        };
        // GETRANGE rather than GET: a value past the limit is cut at one byte over it (and then
        // refused) instead of read whole into memory. A missing key reads as empty.
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(inner.redis_key(key))
            .arg(0)
            .arg(value::MAX_ENCODED_BYTES);
        let started = Instant::now();
        let result = tokio::time::timeout(inner.settings.budget, conn.query::<Bytes>(&cmd)).await;
        let latency = started.elapsed();
        let (outcome, found) = match result {
            Err(_) => (SharedOutcome::Timeout, None),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "shared cache lookup failed");
                (SharedOutcome::Error, None)
            }
            Ok(Ok(raw)) if raw.is_empty() => (SharedOutcome::Miss, None),
            Ok(Ok(raw)) => match value::decode(raw) {
                Ok(v) => (SharedOutcome::Hit, Some(v)),
                Err(why) => {
                    tracing::debug!(?why, "shared cache value refused");
                    (SharedOutcome::Invalid, None)
                }
            },
        };
        inner.hooks.shared_cache_op(false, outcome, Some(latency));
        inner.record(outcome);
        found
    }

    /// Queues `value` for writing under `key`; never waits.
    pub fn put(&self, key: &Key, value: &Stored) {
        let hooks = &self.inner.hooks;
        let encoded = match value::encode(value) {
            Some(e) if self.is_up() => e,
            _ => return hooks.shared_cache_op(true, SharedOutcome::Skipped, None),
        };
        if self
            .writes
            .try_send((self.inner.redis_key(key), encoded))
            .is_err()
        {
            hooks.shared_cache_op(true, SharedOutcome::Dropped, None);
        }
    }
}

impl Inner {
    fn redis_key(&self, key: &Key) -> String {
        use std::fmt::Write;
        let mut k = String::with_capacity(self.prefix.len() + 2 * key.len());
        k.push_str(&self.prefix);
        for b in key {
            let _ = write!(k, "{b:02x}");
        }
        k
    }

    fn conn_if_up(&self) -> Option<Conn> {
        let state = self.state.lock().unwrap();
        if state.health.is_up() {
            state.conn.clone()
        } else {
            None
        }
    }

    fn record(&self, outcome: SharedOutcome) {
        let changed = self.state.lock().unwrap().health.record(outcome.answered());
        if changed == Some(false) {
            tracing::warn!(
                url = %self.settings.url,
                last = outcome.as_str(),
                "shared cache is down: most recent operations failed; answers come from the local cache and runs until it answers again"
            );
            self.hooks.shared_cache_up(false);
            self.went_down.notify_one();
        }
    }

    async fn write_queued(self: Arc<Self>, mut queue: mpsc::Receiver<(String, Bytes)>) {
        let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
        while let Some((key, value)) = queue.recv().await {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let this = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let Some(mut conn) = this.conn_if_up() else {
                    return this
                        .hooks
                        .shared_cache_op(true, SharedOutcome::Skipped, None);
                };
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key)
                    .arg(&value[..])
                    .arg("EX")
                    .arg(this.settings.ttl.as_secs().max(1));
                let started = Instant::now();
                let outcome = match tokio::time::timeout(SLOW_OP, conn.query::<()>(&cmd)).await {
                    Err(_) => SharedOutcome::Timeout,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "shared cache write failed");
                        SharedOutcome::Error
                    }
                    Ok(Ok(())) => SharedOutcome::Stored,
                };
                this.hooks
                    .shared_cache_op(true, outcome, Some(started.elapsed()));
                this.record(outcome);
            });
        }
    }

    /// Sleeps while the tier is up; while it is down, opens a fresh connection and asks Redis,
    /// until it answers within the lookup budget.
    async fn probe_while_down(self: Arc<Self>) {
        loop {
            let went_down = self.went_down.notified();
            if self.state.lock().unwrap().health.is_up() {
                went_down.await;
            }
            let mut pause = PROBE_PAUSE.0;
            let mut last_error = String::new();
            loop {
                match self.probe().await {
                    Ok(conn) => {
                        let changed = {
                            let mut state = self.state.lock().unwrap();
                            state.conn = Some(conn);
                            state.health.probe_answered()
                        };
                        if changed {
                            tracing::info!(url = %self.settings.url, "shared cache is up");
                            self.hooks.shared_cache_up(true);
                        }
                        break;
                    }
                    Err(e) => {
                        // Why it is down (refused, TLS, auth...): once per episode, at start too.
                        if last_error.is_empty() {
                            tracing::warn!(url = %self.settings.url, error = %e, "shared cache does not answer; probing in the background");
                        } else if e != last_error {
                            tracing::debug!(url = %self.settings.url, error = %e, "shared cache probe failed");
                        }
                        last_error = e;
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(PROBE_PAUSE.1);
            }
        }
    }

    async fn probe(&self) -> Result<Conn, String> {
        let mut conn = Conn::open(&self.settings).map_err(|e| e.to_string())?;
        let cmd = redis::Cmd::exists(format!("{}probe", self.prefix));
        // The first command also connects (and authenticates); the second must fit the budget
        // that lookups get, or the tier would only be marked down again.
        for limit in [SLOW_OP, self.settings.budget] {
            match tokio::time::timeout(limit, conn.query::<i64>(&cmd)).await {
                Err(_) => return Err(format!("no answer within {limit:?}")),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(_)) => {}
            }
        }
        Ok(conn)
    }
}
