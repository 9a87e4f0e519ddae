//! Pre-spawned sandboxes, so that a run's setup (cgroup, fork, namespaces, mounts, the command's
//! start) happens off the request path: a run takes a sandbox whose command already waits on
//! stdin, and the filler makes the next one in the background.
//!
//! A sandbox serves exactly one program and is then killed with everything in it, as a fresh one
//! would be; nothing of one run can reach the next. A waiting sandbox has no reason to end, so one
//! found dead when taken (killed from outside, say) is dropped and the run takes the next, or
//! spawns its own. A failed spawn makes the filler back off; runs meanwhile spawn their own.
//!
//! A spawn takes a core for as long as the run it would compete with, so while at least half
//! the pool still waits, the filler lets the runs in flight answer and be torn down first (for
//! at most `MAX_DEFER`). Under load the pool drains below half and refills at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::err;
use super::run::{Prepared, Spawner};
use crate::hooks::Hooks;
use crate::sandbox::SandboxErrorKind;

/// The filler's first wait after a failed spawn; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The longest a refill waits for the runs in flight and their teardowns.
const MAX_DEFER: Duration = Duration::from_millis(50);

pub(super) struct Pool {
    shared: Arc<Shared>,
    /// Taken by `close`, which waits for the filler to end.
    filler: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    target: usize,
    waiting: Mutex<VecDeque<Prepared>>,
    /// Wakes the filler: a sandbox left the pool.
    taken: Notify,
    /// How many sandboxes wait, for `full`.
    ready: watch::Sender<usize>,
    hooks: Arc<dyn Hooks>,
    /// Spawns the filler is to fail on purpose (tests of the replacement).
    fail_next: AtomicUsize,
    /// Set by `close`: the filler finishes what it is making, takes it down and ends.
    closed: watch::Sender<bool>,
}

impl Pool {
    /// `busy` counts the runs in flight and the teardowns under way.
    pub(super) fn start(
        spawner: Arc<Spawner>,
        target: usize,
        hooks: Arc<dyn Hooks>,
        busy: watch::Receiver<usize>,
    ) -> Pool {
        let shared = Arc::new(Shared {
            target,
            waiting: Mutex::new(VecDeque::with_capacity(target)),
            taken: Notify::new(),
            ready: watch::channel(0).0,
            hooks,
            fail_next: AtomicUsize::new(0),
            closed: watch::channel(false).0,
        });
        let filler = tokio::spawn(fill(spawner, shared.clone(), busy));
        Pool {
            shared,
            filler: Mutex::new(Some(filler)),
        }
    }

    /// A live waiting sandbox, if there is one.
    pub(super) fn take(&self) -> Option<Prepared> {
        let mut waiting = self.shared.lock();
        while let Some(mut sandbox) = waiting.pop_front() {
            self.shared.taken.notify_one();
            if sandbox.alive() {
                self.shared.publish(waiting.len());
                return Some(sandbox);
            }
            tracing::warn!("a pre-spawned bwrap sandbox died while waiting; replacing it");
        }
        self.shared.publish(0);
        drop(waiting);
        self.shared.hooks.pool_empty();
        None
    }

    pub(super) fn len(&self) -> usize {
        self.shared.lock().len()
    }

    pub(super) fn target(&self) -> usize {
        self.shared.target
    }

    /// Returns once `target` sandboxes wait.
    pub(super) async fn full(&self) {
        let mut ready = self.shared.ready.subscribe();
        let _ = ready.wait_for(|&n| n >= self.shared.target).await;
    }

    /// bwrap's pid in each waiting sandbox.
    pub(super) fn waiting_pids(&self) -> Vec<u32> {
        self.shared
            .lock()
            .iter()
            .filter_map(Prepared::pid)
            .collect()
    }

    /// Stops the filler and takes down every waiting sandbox, cgroups included.
    pub(super) async fn close(&self) {
        self.shared.closed.send_replace(true);
        let filler = self
            .filler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(filler) = filler {
            let _ = filler.await;
        }
        let waiting: Vec<Prepared> = self.shared.lock().drain(..).collect();
        self.shared.publish(0);
        for sandbox in waiting {
            sandbox.discard().await;
        }
    }

    /// Makes the filler's next `n` spawns fail as a spawn can (tests).
    pub(super) fn fail_next_spawns(&self, n: usize) {
        self.shared.fail_next.store(n, Ordering::Relaxed);
    }
}

impl Drop for Pool {
    /// The waiting sandboxes go with the pool; each is killed as it is dropped.
    fn drop(&mut self) {
        let filler = self
            .filler
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(filler) = filler.take() {
            filler.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Prepared>> {
        // A panic while holding the lock cannot leave the queue half-changed.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The hooks first, so that whoever `full` wakes reads the same count there (the metrics).
    fn publish(&self, n: usize) {
        self.hooks.pool_ready(n);
        self.ready.send_replace(n);
    }

    fn injected_failure(&self) -> bool {
        self.fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Whether a refill should first let the `busy` runs and teardowns finish: only while at least
/// half the pool still waits, so that the next runs find a sandbox anyway.
fn defer_refill(waiting: usize, target: usize, busy: usize) -> bool {
    busy > 0 && waiting > 0 && 2 * waiting >= target
}

async fn fill(spawner: Arc<Spawner>, shared: Arc<Shared>, mut busy: watch::Receiver<usize>) {
    let mut backoff = MIN_BACKOFF;
    let mut closed = shared.closed.subscribe();
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        let waiting = shared.lock().len();
        if waiting >= shared.target {
            tokio::select! {
                _ = shared.taken.notified() => {}
                _ = closed.changed() => {}
            }
            continue;
        }
        if defer_refill(waiting, shared.target, *busy.borrow_and_update()) {
            tokio::select! {
                _ = busy.wait_for(|&n| n == 0) => {}
                _ = tokio::time::sleep(MAX_DEFER) => {}
                // Another was taken: the pool may now be below half.
                _ = shared.taken.notified() => continue,
                _ = closed.changed() => continue,
            }
        }
        let began = Instant::now();
        let made = if shared.injected_failure() {
            Err(err(SandboxErrorKind::Start, "spawn failed on purpose"))
        } else {
            spawner.prepare().await
        };
        match made {
            Ok(sandbox) => {
                backoff = MIN_BACKOFF;
                shared.hooks.pool_refill(began.elapsed());
                let mut waiting = shared.lock();
                if *shared.closed.borrow() {
                    drop(waiting);
                    sandbox.discard().await;
                    return;
                }
                waiting.push_back(sandbox);
                shared.publish(waiting.len());
            }
            Err(e) => {
                tracing::warn!(error = %e.message, retry_in = ?backoff, "cannot pre-spawn a bwrap sandbox");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = closed.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::defer_refill;

    #[test]
    fn refills_wait_for_runs_only_while_half_the_pool_waits() {
        // Light load, a pool of 2: one taken, one waits.
        assert!(defer_refill(1, 2, 1));
        // Nothing in flight: refill at once.
        assert!(!defer_refill(1, 2, 0));
        // Empty, or below half: refill at once whatever runs.
        assert!(!defer_refill(0, 2, 1));
        assert!(!defer_refill(0, 1, 1));
        assert!(!defer_refill(3, 8, 8));
        assert!(defer_refill(4, 8, 8));
    }
}
