//! Pre-started containers, so that a run costs a hand-over to an exec that already waits on its
//! stdin instead of a create + start + exec (all of a cold run but the program itself).
//!
//! Each idle container is held by its own small task that watches its exec's stream: the engine
//! ends that stream when the exec or the container dies (killed, OOM, engine restart), so a dead
//! container leaves the pool at once and is replaced, instead of waiting to fail a request. A run
//! asks a holder for its container through a oneshot, and checks its stream once more before use
//! (the engine's view is checked alongside the hand-over, see `Engine::drive`). A filler task
//! tops the pool up in the background, backing off while the engine fails, and holding back while
//! the engine has many removals to do.

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
    /// Wakes runs waiting for a refill: a container joined the pool, a refill failed, or the
    /// pool closed.
    added: Notify,
}

struct State {
    idle: VecDeque<Slot>,
    next_id: u64,
    closed: bool,
    /// Refills under way, and runs waiting for one of them.
    creating: usize,
    waiting: usize,
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
                creating: 0,
                waiting: 0,
            }),
            wake: Notify::new(),
            added: Notify::new(),
        });
        let launches = (0..target).map(|_| {
            let engine = pool.engine.clone();
            async move {
                let began = Instant::now();
                engine.launch(true).await.map(|c| (c, began.elapsed()))
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

    /// A started container whose exec still waits, or `None` if the pool has none to give.
    ///
    /// When the pool is empty but refills are under way, and fewer runs wait for them than there
    /// are, the run waits for the next one rather than starting its own container: a refill is
    /// always further along than a container started now, and under a sustained load that keeps
    /// the engine working on as many containers as runs need instead of twice as many. Either
    /// way the run counts as having found the pool empty.
    pub async fn take(&self) -> Option<Started> {
        let mut found_empty = false;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let popped = {
                let mut state = self.state.lock().unwrap();
                match state.idle.pop_front() {
                    Some(slot) => Some((slot, state.idle.len())),
                    None if !state.closed && state.waiting < state.creating => {
                        state.waiting += 1;
                        None
                    }
                    None => {
                        drop(state);
                        if !found_empty {
                            self.hooks.pool_empty();
                        }
                        return None;
                    }
                }
            };
            let Some((slot, ready)) = popped else {
                if !found_empty {
                    self.hooks.pool_empty();
                    found_empty = true;
                }
                // Counted out again even if the run is cancelled while it waits.
                let _waiting = Waiting(self);
                added.await;
                continue;
            };
            self.hooks.pool_ready(ready);
            self.wake.notify_one();
            let (tx, rx) = oneshot::channel();
            if slot.ask.send(tx).is_err() {
                continue;
            }
            let Ok(mut c) = rx.await else { continue };
            if self.engine.usable(&mut c) {
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
        self.added.notify_waiters();
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
        self.added.notify_waiters();
    }

    /// Records how many refills are under way; fewer may leave waiting runs without one.
    fn set_creating(&self, n: usize) {
        let fewer = {
            let mut state = self.state.lock().unwrap();
            let fewer = n < state.creating;
            state.creating = n;
            fewer
        };
        if fewer {
            self.added.notify_waiters();
        }
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
        let mut removing = self.engine.watch_removing();
        loop {
            // Only now, after `add` has put a finished refill in the pool and woken the runs
            // waiting: a refill leaves the count once its container is there to take.
            self.set_creating(creating.len());
            if self.state.lock().unwrap().closed {
                break;
            }
            // Every run ends in a removal, off the request path. Creations and removals compete
            // for the engine, so while as many removals as the pool holds (at least 2) are under
            // way, the filler starts nothing and waits for them: removals cannot pile up behind
            // ever more creations. (Runs that find the pool empty meanwhile start their own
            // container, bounded by the run slots.)
            let throttled = *removing.borrow_and_update() >= self.target.max(2);
            if retry_at.is_none() && !throttled {
                let missing = self.target.saturating_sub(self.ready() + creating.len());
                for _ in 0..missing {
                    let engine = self.engine.clone();
                    creating.spawn(async move {
                        let began = Instant::now();
                        engine.launch(true).await.map(|c| (c, began.elapsed()))
                    });
                }
                self.set_creating(creating.len());
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
                Ok(()) = removing.changed(), if throttled => {}
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

/// A run waiting for a refill.
struct Waiting<'a>(&'a Pool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().waiting -= 1;
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
