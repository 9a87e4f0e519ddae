//! The queue on Redis, shared by a fleet (docs/design.md, "Submissions"): a submission's record
//! is stored under its token with a TTL and its token added to a stream that every daemon reads
//! through one consumer group. A daemon stores the result before it acknowledges (and deletes) the
//! entry, so an entry is never done before its result is kept; while it runs one, it renews its
//! claim (XCLAIM, a heartbeat), and an entry whose daemon stopped renewing for `claim_after` is
//! taken over by another (XAUTOCLAIM) and run again. Every key carries one hash tag, so the whole
//! queue lives on one slot of a Cluster.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, RedisResult, TlsCertificates, Value};
use tokio::sync::Mutex;

use super::{Claim, QueueError};
use crate::cache::SharedSettings;
use crate::cache::shared::Target;
use crate::judge0::record::Record;

const GROUP: &str = "compilerd";
/// How long a command may take; a blocking read asks for less than this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
enum Conn {
    One(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn open(settings: &SharedSettings) -> RedisResult<Conn> {
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: settings.ca.clone(),
        };
        Ok(match &settings.target {
            Target::Standalone(info) => {
                let client = match settings.ca {
                    Some(_) => Client::build_with_tls((**info).clone(), certs())?,
                    None => Client::open((**info).clone())?,
                };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1);
                Conn::One(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            Target::Cluster(nodes) => {
                let mut b = ClusterClient::builder(nodes.clone())
                    .connection_timeout(Duration::from_secs(2))
                    .response_timeout(RESPONSE_TIMEOUT);
                if settings.ca.is_some() {
                    b = b.certs(certs());
                }
                Conn::Cluster(b.build()?.get_async_connection().await?)
            }
        })
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        let once = |c: &mut Conn| {
            let cmd = cmd.clone();
            let mut c = c.clone();
            async move {
                match &mut c {
                    Conn::One(m) => cmd.query_async(m).await,
                    Conn::Cluster(m) => cmd.query_async(m).await,
                }
            }
        };
        match once(self).await {
            Err(e) if e.is_io_error() || e.is_connection_dropped() => once(self).await,
            other => other,
        }
    }

    async fn pipe<T: redis::FromRedisValue>(&mut self, p: &redis::Pipeline) -> RedisResult<T> {
        match self {
            Conn::One(m) => p.query_async(m).await,
            Conn::Cluster(m) => p.query_async(m).await,
        }
    }
}

pub struct RedisQueue {
    settings: SharedSettings,
    /// Commands that answer at once.
    conn: Mutex<Option<Conn>>,
    /// The blocking reads, on a connection of their own (a multiplexed connection would queue
    /// every other command behind them).
    reader: Mutex<Option<Conn>>,
    stream: String,
    prefix: String,
    consumer: String,
    max_queue: usize,
    ttl: Duration,
    claim_after: Duration,
    last_autoclaim: std::sync::Mutex<Option<Instant>>,
}

fn unavailable(e: redis::RedisError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) => a,
        _ => &[],
    }
}

/// Stream entries `[[id, [field, value, ...]], ...]` as (id, token).
fn entries(v: &Value) -> Vec<(String, String)> {
    items(v)
        .iter()
        .filter_map(|e| {
            let parts = items(e);
            let id = text(parts.first()?)?;
            let fields = items(parts.get(1)?);
            let token = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(text).as_deref() == Some("token"))
                .and_then(|kv| text(kv.get(1)?))?;
            Some((id, token))
        })
        .collect()
}

impl RedisQueue {
    pub fn new(
        settings: SharedSettings,
        max_queue: usize,
        ttl: Duration,
        claim_after: Duration,
    ) -> RedisQueue {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let tag = "{compilerd-judge0}";
        RedisQueue {
            settings,
            conn: Mutex::new(None),
            reader: Mutex::new(None),
            stream: format!("compilerd:judge0:{tag}:queue"),
            prefix: format!("compilerd:judge0:{tag}:submission:"),
            consumer: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            max_queue,
            ttl,
            claim_after,
            last_autoclaim: std::sync::Mutex::new(None),
        }
    }

    async fn conn(&self, which: &Mutex<Option<Conn>>) -> Result<Conn, QueueError> {
        let mut c = which.lock().await;
        if let Some(c) = &*c {
            return Ok(c.clone());
        }
        let opened = Conn::open(&self.settings).await.map_err(unavailable)?;
        *c = Some(opened.clone());
        Ok(opened)
    }

    fn key(&self, token: &str) -> String {
        format!("{}{token}", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    pub async fn create(&self, record: &Record) -> Result<(), QueueError> {
        let mut c = self.conn(&self.conn).await?;
        let len: usize = c
            .query(redis::cmd("XLEN").arg(&self.stream))
            .await
            .map_err(unavailable)?;
        if len >= self.max_queue {
            return Err(QueueError::Full);
        }
        let json = serde_json::to_vec(record).expect("records serialize");
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(self.key(&record.token))
            .arg(json)
            .arg("PX")
            .arg(self.ttl_ms())
            .ignore();
        p.cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("token")
            .arg(&record.token)
            .ignore();
        c.pipe::<()>(&p).await.map_err(unavailable)
    }

    pub async fn store(&self, record: &Record) -> Result<(), QueueError> {
        let mut c = self.conn(&self.conn).await?;
        let json = serde_json::to_vec(record).expect("records serialize");
        c.query::<()>(
            redis::cmd("SET")
                .arg(self.key(&record.token))
                .arg(json)
                .arg("PX")
                .arg(self.ttl_ms()),
        )
        .await
        .map_err(unavailable)
    }

    pub async fn get(&self, token: &str) -> Result<Option<Record>, QueueError> {
        let mut c = self.conn(&self.conn).await?;
        let raw: Option<Vec<u8>> = c
            .query(redis::cmd("GET").arg(self.key(token)))
            .await
            .map_err(unavailable)?;
        Ok(raw.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    async fn ensure_group(&self, c: &mut Conn) -> Result<(), QueueError> {
        let r: RedisResult<()> = c
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// An entry another daemon claimed and stopped renewing, if one is due.
    async fn take_over(&self, c: &mut Conn) -> Result<Option<Claim>, QueueError> {
        {
            let mut last = self.last_autoclaim.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= self.claim_after / 4);
            if !due {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let reply: Value = c
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(self.claim_after.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(1),
            )
            .await
            .map_err(unavailable)?;
        let claimed = items(&reply).get(1).map(entries).unwrap_or_default();
        if !claimed.is_empty() {
            // More may be waiting: look again on the next claim.
            *self.last_autoclaim.lock().unwrap() = None;
        }
        Ok(claimed.into_iter().next().map(|(id, token)| Claim {
            token,
            entry: Some(id),
            taken_over: true,
        }))
    }

    /// The next entry: one taken over from a dead daemon, else a new one (waiting at most
    /// `wait`).
    pub async fn claim(&self, wait: Duration) -> Result<Option<Claim>, QueueError> {
        let mut c = self.conn(&self.conn).await?;
        match self.take_over(&mut c).await {
            Ok(Some(claim)) => return Ok(Some(claim)),
            Ok(None) => {}
            Err(QueueError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_group(&mut c).await?
            }
            Err(e) => return Err(e),
        }
        let mut r = self.conn(&self.reader).await?;
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .clone();
        let reply: Value = match r.query(&read).await {
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group(&mut c).await?;
                r.query(&read).await.map_err(unavailable)?
            }
            other => other.map_err(unavailable)?,
        };
        // [[stream, [[id, [field, value]]]]]
        let first = items(&reply)
            .first()
            .and_then(|s| items(s).get(1))
            .map(entries)
            .unwrap_or_default();
        Ok(first.into_iter().next().map(|(id, token)| Claim {
            token,
            entry: Some(id),
            taken_over: false,
        }))
    }

    /// The result first, then the acknowledgement: a daemon that dies in between leaves the
    /// entry to be run again, never a done entry without its result.
    pub async fn finish(&self, claim: &Claim, record: &Record) -> Result<(), QueueError> {
        self.store(record).await?;
        let Some(id) = &claim.entry else {
            return Ok(());
        };
        let mut c = self.conn(&self.conn).await?;
        let mut p = redis::pipe();
        p.cmd("XACK").arg(&self.stream).arg(GROUP).arg(id).ignore();
        p.cmd("XDEL").arg(&self.stream).arg(id).ignore();
        c.pipe::<()>(&p).await.map_err(unavailable)
    }

    /// Hands an entry this daemon claimed but will not run back to the stream, as a new entry,
    /// in one transaction: another daemon takes it at once.
    pub async fn give_back(&self, claim: &Claim) -> Result<(), QueueError> {
        let Some(id) = &claim.entry else {
            return Ok(());
        };
        let mut c = self.conn(&self.conn).await?;
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("token")
            .arg(&claim.token)
            .ignore();
        p.cmd("XACK").arg(&self.stream).arg(GROUP).arg(id).ignore();
        p.cmd("XDEL").arg(&self.stream).arg(id).ignore();
        c.pipe::<()>(&p).await.map_err(unavailable)
    }

    /// Renews this daemon's claim on the entries it runs, so that no other takes them over.
    pub async fn heartbeat(&self, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn(&self.conn).await?;
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID");
        c.query::<Value>(&cmd).await.map_err(unavailable).map(drop)
    }

    /// (entries queued or running, age of the oldest).
    pub async fn stats(&self) -> Result<(usize, Duration), QueueError> {
        let mut c = self.conn(&self.conn).await?;
        let mut p = redis::pipe();
        p.cmd("XLEN").arg(&self.stream);
        p.cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let (len, oldest): (usize, Value) = c.pipe(&p).await.map_err(unavailable)?;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let age = entries(&oldest)
            .first()
            .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
            .map_or(Duration::ZERO, |ms| {
                Duration::from_millis(now_ms.saturating_sub(ms))
            });
        Ok((len, age))
    }
}
