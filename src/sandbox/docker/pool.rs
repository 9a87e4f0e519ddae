//! Pre-started containers, so that a run costs a hand-over on an already attached container
//! instead of a create + attach + start (most of a cold run).
//!
//! Each idle container is held by its own small task that watches the container's attach stream:
//! the engine ends that stream when the container dies (killed, OOM, engine restart), so a dead
//! container leaves the pool at once and is replaced, instead of waiting to fail a request. A run
//! asks a holder for its container through a oneshot, and checks it once more with the engine
//! before use. A filler task tops the pool up in the background, backing off while the engine
//! fails.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::engine::{Engine, Started};
use crate::hooks::Hooks;
use crate::sandbox::SandboxError;

type Handoff = oneshot::Sender<Started>;

pub(super) struct Pool {
    engine: Arc<Engine>,
    hooks: Arc<dyn Hooks>,
    target: usize,
    state: Mutex<State>,
    /// Wakes the filler: a container left the pool, or the pool closed.
    wake: Notify,
}

struct State {
    idle: VecDeque<Slot>,
    next_id: u64,
    closed: bool,
}

/// An idle container, reachable through its holder task.
struct Slot {
    id: u64,
    ask: oneshot::Sender<Handoff>,
}

impl Pool {
    /// Fills the pool before returning, so that the daemon is only ready once the first runs
    /// can be fast, and so that settings the engine rejects fail the startup, not a request.
    pub async fn start(
        engine: Arc<Engine>,
        hooks: Arc<dyn Hooks>,
        target: usize,
    ) -> Result<(Arc<Pool>, JoinHandle<()>), SandboxError> {
        let pool = Arc::new(Pool {
            engine,
            hooks,
            target,
            state: Mutex::new(State {
                idle: VecDeque::new(),
                next_id: 0,
                closed: false,
            }),
            wake: Notify::new(),
        });
        let launches = (0..target).map(|_| {
            let engine = pool.engine.clone();
            async move {
                let began = Instant::now();
                engine.launch().await.map(|c| (c, began.elapsed()))
            }
        });
        let mut first_error = None;
        for result in futures_util::future::join_all(launches).await {
            match result {
                Ok((c, latency)) => {
                    pool.hooks.pool_refill(latency);
                    pool.add(c);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            pool.close();
            return Err(e);
        }
        let filler = tokio::spawn(pool.clone().fill());
        Ok((pool, filler))
    }

    pub fn ready(&self) -> usize {
        self.state.lock().unwrap().idle.len()
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// A started container that is verified alive, or `None` if the pool has none.
    pub async fn take(&self) -> Option<Started> {
        loop {
            let (slot, ready) = {
                let mut state = self.state.lock().unwrap();
                let slot = state.idle.pop_front()?;
                (slot, state.idle.len())
            };
            self.hooks.pool_ready(ready);
            self.wake.notify_one();
            let (tx, rx) = oneshot::channel();
            if slot.ask.send(tx).is_err() {
                continue;
            }
            let Ok(mut c) = rx.await else { continue };
            if self.engine.usable(&mut c).await {
                return Some(c);
            }
            tracing::info!(
                container = Engine::name(&c),
                "pool container found dead at hand-over; discarded"
            );
            // Dropping `c` removes it.
        }
    }

    /// Closes the pool: idle containers are removed, the filler stops once its in-flight
    /// creations are done (and removes them too).
    pub fn close(&self) {
        let drained = {
            let mut state = self.state.lock().unwrap();
            state.closed = true;
            std::mem::take(&mut state.idle)
        };
        // Each holder sees its slot dropped and drops its container, which removes it.
        drop(drained);
        self.hooks.pool_ready(0);
        self.wake.notify_one();
    }

    fn add(self: &Arc<Self>, c: Started) {
        let (ask, asked) = oneshot::channel();
        let ready = {
            let mut state = self.state.lock().unwrap();
            if state.closed {
                return;
            }
            let id = state.next_id;
            state.next_id += 1;
            state.idle.push_back(Slot { id, ask });
            tokio::spawn(hold(
                Arc::downgrade(self),
                self.engine.clone(),
                id,
                c,
                asked,
            ));
            state.idle.len()
        };
        self.hooks.pool_ready(ready);
    }

    fn forget(&self, id: u64) {
        let (found, ready) = {
            let mut state = self.state.lock().unwrap();
            let before = state.idle.len();
            state.idle.retain(|s| s.id != id);
            (state.idle.len() != before, state.idle.len())
        };
        if found {
            self.hooks.pool_ready(ready);
            self.wake.notify_one();
        }
    }

    async fn fill(self: Arc<Self>) {
        let mut creating = JoinSet::new();
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        loop {
            if self.state.lock().unwrap().closed {
                break;
            }
            if retry_at.is_none() {
                let missing = self.target.saturating_sub(self.ready() + creating.len());
                for _ in 0..missing {
                    let engine = self.engine.clone();
                    creating.spawn(async move {
                        let began = Instant::now();
                        engine.launch().await.map(|c| (c, began.elapsed()))
                    });
                }
            }
            tokio::select! {
                Some(joined) = creating.join_next() => match joined {
                    Ok(Ok((c, latency))) => {
                        failures = 0;
                        self.hooks.pool_refill(latency);
                        self.add(c);
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        let delay = backoff(failures);
                        tracing::warn!(error = %e.message, retry_in = ?delay, "pool refill failed");
                        retry_at = Some(Instant::now() + delay);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "pool refill task failed");
                        retry_at = Some(Instant::now() + backoff(failures));
                    }
                },
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                }
            }
        }
        // Not aborted: a creation cut short could leave a container we never heard of. Each
        // finished one is dropped here, which removes it.
        while creating.join_next().await.is_some() {}
    }
}

/// 100 ms, doubling, at most 5 s: quick recovery from a blip, no busy loop while the engine is
/// down.
fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5000))
}

async fn hold(
    pool: Weak<Pool>,
    engine: Arc<Engine>,
    id: u64,
    mut c: Started,
    asked: oneshot::Receiver<Handoff>,
) {
    let handoff = tokio::select! {
        handoff = asked => handoff.ok(),
        () = engine.idle(&mut c) => None,
    };
    match handoff {
        // If the run gave up waiting, the container comes back here and is dropped (removed).
        Some(handoff) => drop(handoff.send(c)),
        None => {
            if let Some(pool) = pool.upgrade() {
                let closing = pool.state.lock().unwrap().closed;
                if !closing {
                    tracing::info!(
                        container = Engine::name(&c),
                        "pool container died; replacing it"
                    );
                }
                pool.forget(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
