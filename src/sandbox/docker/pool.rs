//! Pre-started containers, so that a run costs a hand-over to a process that already waits on its
//! stdin instead of a create + start (all of a cold run but the program itself).
//!
//! Each idle container is held by its own small task that watches its streams: the engine ends
//! them when the process or the container dies (killed, OOM, engine restart), so a dead container
//! leaves the pool at once and is replaced, instead of waiting to fail a request. A container that
//! dies within a second of joining counts as a failed refill, so that an image whose command
//! stops by itself makes the filler back off instead of spin. A run asks a holder for its
//! container through a oneshot, and checks its streams once more before use (the engine's view is
//! checked after the run when it matters, see `run`). A filler task tops the pool up in the
//! background, backing off while the engine fails, and holding back while the engine has many
//! removals to do.
//!
//! Arming (an exec started in the container, see `engine`) costs the engine a quarter of a
//! container and saves a run ~40 ms. So the pool's first fill is armed (the daemon is ready with
//! fast runs), and later each holder arms its container only while the pool is *quiet*: full, no
//! refill under way and no run waiting. At light load that is right after every refill; under a
//! sustained load, bound by the engine's CPU, it never is, and runs take unarmed containers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::engine::{Engine, Started};
use crate::hooks::Hooks;
use crate::sandbox::SandboxError;

type Handoff = oneshot::Sender<Started>;

/// A container that dies sooner than this after joining the pool counts as a failed refill.
const DIED_YOUNG: Duration = Duration::from_secs(1);

pub(super) struct Pool {
    engine: Arc<Engine>,
    hooks: Arc<dyn Hooks>,
    target: usize,
    /// Whether idle containers get armed when the pool is quiet.
    arm: bool,
    /// Launches for runs yet to come that may be under way at once: the host's cores.
    spare: usize,
    state: Mutex<State>,
    /// Whether the pool is quiet (see the module's header), for holders waiting to arm.
    quiet: watch::Sender<bool>,
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
    /// Containers that died young since a run last took one.
    young_deaths: u32,
}

impl State {
    fn quiet(&self, target: usize) -> bool {
        !self.closed && self.waiting == 0 && self.creating == 0 && self.idle.len() >= target
    }
}

/// An idle container, reachable through its holder task.
struct Slot {
    id: u64,
    ask: oneshot::Sender<Handoff>,
    armed: bool,
}

impl Pool {
    /// Fills the pool before returning, so that the daemon is only ready once the first runs
    /// can be fast, and so that settings the engine rejects fail the startup, not a request.
    /// With `arm`, the first fill is armed, which also proves that the image's command stays up
    /// (see `Engine::arm`), and later containers are armed while the pool is quiet.
    pub async fn start(
        engine: Arc<Engine>,
        hooks: Arc<dyn Hooks>,
        target: usize,
        arm: bool,
    ) -> Result<(Arc<Pool>, JoinHandle<()>), SandboxError> {
        let pool = Arc::new(Pool {
            engine,
            hooks,
            target,
            arm,
            spare: std::thread::available_parallelism().map_or(1, |n| n.get()),
            state: Mutex::new(State {
                idle: VecDeque::new(),
                next_id: 0,
                closed: false,
                creating: 0,
                waiting: 0,
                young_deaths: 0,
            }),
            quiet: watch::Sender::new(false),
            wake: Notify::new(),
            added: Notify::new(),
        });
        let launches = (0..target).map(|_| {
            let engine = pool.engine.clone();
            async move {
                let began = Instant::now();
                let mut c = engine.launch().await?;
                if arm {
                    engine.arm(&mut c).await?;
                }
                Ok::<_, SandboxError>((c, began.elapsed()))
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

    /// Tells waiting holders whether the pool is quiet now, and the hooks how many idle
    /// containers there are and how many are armed; called after every change of `state`.
    fn settle(&self, state: &State) {
        self.hooks.pool_ready(state.idle.len());
        let quiet = state.quiet(self.target);
        self.quiet
            .send_if_modified(|q| std::mem::replace(q, quiet) != quiet);
        self.hooks
            .pool_armed(state.idle.iter().filter(|s| s.armed).count());
    }

    /// Records that a holder armed its container.
    fn armed(&self, id: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(slot) = state.idle.iter_mut().find(|s| s.id == id) {
            slot.armed = true;
        }
        self.settle(&state);
    }

    pub fn target(&self) -> usize {
        self.target
    }

    /// A started container still waiting for a program (an armed one if any), or `None` if the
    /// pool has none to give.
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
                // An armed container if there is one: the fastest hand-over.
                let at = state.idle.iter().position(|s| s.armed).unwrap_or(0);
                let popped = match state.idle.remove(at) {
                    Some(slot) => Some(slot),
                    None if !state.closed && state.waiting < state.creating => {
                        state.waiting += 1;
                        // One more waiting run makes room for one more launch.
                        self.wake.notify_one();
                        None
                    }
                    None => {
                        drop(state);
                        if !found_empty {
                            self.hooks.pool_empty();
                        }
                        return None;
                    }
                };
                self.settle(&state);
                popped
            };
            let Some(slot) = popped else {
                if !found_empty {
                    self.hooks.pool_empty();
                    found_empty = true;
                }
                // Counted out again even if the run is cancelled while it waits.
                let _waiting = Waiting(self);
                added.await;
                continue;
            };
            self.wake.notify_one();
            let (tx, rx) = oneshot::channel();
            if slot.ask.send(tx).is_err() {
                continue;
            }
            let Ok(mut c) = rx.await else { continue };
            if self.engine.usable(&mut c) {
                self.state.lock().unwrap().young_deaths = 0;
                return Some(c);
            }
            tracing::info!(
                container = c.name(),
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
            let drained = std::mem::take(&mut state.idle);
            self.settle(&state);
            drained
        };
        // Each holder sees its slot dropped and drops its container, which removes it.
        drop(drained);
        self.wake.notify_one();
        self.added.notify_waiters();
    }

    fn add(self: &Arc<Self>, c: Started) {
        let (ask, asked) = oneshot::channel();
        {
            let mut state = self.state.lock().unwrap();
            if state.closed {
                return;
            }
            let id = state.next_id;
            state.next_id += 1;
            let armed = c.armed();
            state.idle.push_back(Slot { id, ask, armed });
            let quiet = self.arm.then(|| self.quiet.subscribe());
            tokio::spawn(hold(
                Arc::downgrade(self),
                self.engine.clone(),
                id,
                c,
                asked,
                quiet,
            ));
            self.settle(&state);
        }
        self.added.notify_waiters();
    }

    /// Records how many refills are under way; fewer may leave waiting runs without one.
    fn set_creating(&self, n: usize) {
        let fewer = {
            let mut state = self.state.lock().unwrap();
            let fewer = n < state.creating;
            state.creating = n;
            self.settle(&state);
            fewer
        };
        if fewer {
            self.added.notify_waiters();
        }
    }

    /// Takes a dead container's slot out of the pool.
    fn forget(&self, id: u64, young: bool) {
        let found = {
            let mut state = self.state.lock().unwrap();
            let before = state.idle.len();
            state.idle.retain(|s| s.id != id);
            if young {
                state.young_deaths += 1;
            }
            self.settle(&state);
            state.idle.len() != before
        };
        if found {
            self.wake.notify_one();
        }
    }

    async fn fill(self: Arc<Self>) {
        let mut creating = JoinSet::new();
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        let mut removing = self.engine.watch_removing();
        // Young deaths seen, and how many times in a row the filler found new ones: containers
        // that die together (an engine restart) count once.
        let mut young_seen = 0;
        let mut young_streak = 0;
        loop {
            // Only now, after `add` has put a finished refill in the pool and woken the runs
            // waiting: a refill leaves the count once its container is there to take.
            self.set_creating(creating.len());
            let (closed, young) = {
                let state = self.state.lock().unwrap();
                (state.closed, state.young_deaths)
            };
            if closed {
                break;
            }
            if young == 0 {
                young_streak = 0;
            } else if young > young_seen {
                young_streak += 1;
                let delay = backoff(young_streak);
                tracing::warn!(
                    retry_in = ?delay,
                    "pool containers die right after they start; is the image's command one that \
                     waits for a program on stdin?"
                );
                retry_at = Some(Instant::now() + delay);
            }
            young_seen = young;
            // Every run ends in a removal, off the request path. Creations and removals compete
            // for the engine, so while as many removals as the pool holds (at least 2) are under
            // way, the filler starts nothing and waits for them: removals cannot pile up behind
            // ever more creations. (Runs that find the pool empty meanwhile start their own
            // container, bounded by the run slots.)
            let throttled = *removing.borrow_and_update() >= self.target.max(2);
            if retry_at.is_none() && !throttled {
                // Launches are CPU-bound in the engine: more at once than it has cores only share
                // them, so that every launch finishes later. Runs waiting for a container come
                // first; the rest of the refill (for runs yet to come) takes at most one launch a
                // core. At the end of a burst that leaves the engine to the last runs instead of
                // to a whole pool's worth of launches.
                let (ready, waiting) = {
                    let state = self.state.lock().unwrap();
                    (state.idle.len(), state.waiting)
                };
                let missing = self.target.saturating_sub(ready + creating.len());
                let room = (waiting + self.spare).saturating_sub(creating.len());
                for _ in 0..missing.min(room) {
                    let engine = self.engine.clone();
                    creating.spawn(async move {
                        let began = Instant::now();
                        engine.launch().await.map(|c| (c, began.elapsed()))
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
        let mut state = self.0.state.lock().unwrap();
        state.waiting -= 1;
        self.0.settle(&state);
    }
}

/// 100 ms, doubling, at most 5 s: quick recovery from a blip, no busy loop while the engine is
/// down.
fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5000))
}

/// Holds one idle container until a run asks for it or it dies, arming it when the pool turns
/// quiet (if `quiet` is given).
async fn hold(
    pool: Weak<Pool>,
    engine: Arc<Engine>,
    id: u64,
    mut c: Started,
    mut asked: oneshot::Receiver<Handoff>,
    mut quiet: Option<watch::Receiver<bool>>,
) {
    let joined = Instant::now();
    loop {
        let armable = quiet.is_some() && !c.armed();
        tokio::select! {
            handoff = &mut asked => {
                // If the run gave up waiting, the container comes back here and is dropped
                // (removed); so it is if the pool closed.
                if let Ok(handoff) = handoff {
                    drop(handoff.send(c));
                }
                return;
            }
            () = engine.idle(&mut c) => break,
            () = until_quiet(quiet.as_mut()), if armable => {}
        }
        // Asks wait meanwhile (tens of milliseconds); the container's death shows up as a
        // failed arming, then in `idle`.
        match engine.arm(&mut c).await {
            Ok(()) => {
                if let Some(pool) = pool.upgrade() {
                    pool.armed(id);
                }
            }
            Err(e) => {
                tracing::info!(container = c.name(), error = %e.message,
                    "arming a pool container failed; it serves unarmed");
                quiet = None;
            }
        }
    }
    if let Some(pool) = pool.upgrade() {
        let closing = pool.state.lock().unwrap().closed;
        if !closing {
            tracing::info!(container = c.name(), "pool container died; replacing it");
        }
        pool.forget(id, joined.elapsed() < DIED_YOUNG);
    }
}

/// Resolves when the pool turns quiet; never without a receiver, or once the pool is gone.
async fn until_quiet(quiet: Option<&mut watch::Receiver<bool>>) {
    if let Some(rx) = quiet
        && rx.wait_for(|q| *q).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
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
