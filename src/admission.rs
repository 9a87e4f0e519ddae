//! Admission control: at most `slots` runs at once and at most `max_queued` waiting for a slot;
//! past that a request is turned away at once (503) instead of piling up behind the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::hooks::Hooks;

pub struct Admission {
    slots: Arc<Semaphore>,
    total: usize,
    queued: AtomicUsize,
    max_queued: usize,
    hooks: Arc<dyn Hooks>,
}

/// A run slot; gives itself back (and updates the in-flight gauge) when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit is still held here, so one more slot is about to be free.
        let running = self.admission.running().saturating_sub(1);
        self.admission.hooks.runs_in_flight(running);
    }
}

/// All run slots are busy and the queue is full.
#[derive(Debug)]
pub struct Overloaded;

impl Admission {
    pub fn new(slots: usize, max_queued: usize, hooks: Arc<dyn Hooks>) -> Arc<Admission> {
        Arc::new(Admission {
            slots: Arc::new(Semaphore::new(slots)),
            total: slots,
            queued: AtomicUsize::new(0),
            max_queued,
            hooks,
        })
    }

    pub fn running(&self) -> usize {
        self.total - self.slots.available_permits()
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, Overloaded> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(Overloaded);
                }
                self.hooks.runs_queued(self.queued());
                // Decrement even if this future is dropped while waiting.
                let _unqueue = Unqueue(self);
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Overloaded)?
            }
        };
        self.hooks.runs_in_flight(self.running());
        Ok(Slot {
            _permit: permit,
            admission: self.clone(),
        })
    }
}

struct Unqueue<'a>(&'a Arc<Admission>);

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        let left = self.0.queued.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.hooks.runs_queued(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::NoHooks;

    #[tokio::test]
    async fn queue_is_bounded_and_slots_come_back() {
        let a = Admission::new(1, 1, Arc::new(NoHooks));
        let first = a.acquire().await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire().await.map(|_| ()) });
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            a.acquire().await.is_err(),
            "a third request must be turned away"
        );
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!((a.running(), a.queued()), (0, 0));
    }
}
