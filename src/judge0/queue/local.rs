//! The queue without Redis: a bounded FIFO of tokens and a store of records with a TTL, bounded
//! in count, all in this process. Both die with it: a submission still queued or running when the
//! daemon stops is lost, and its token is unknown to any other daemon (README, "Judge0 API").

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Claim, QueueError};
use crate::judge0::record::Record;

/// The most records kept at once; the oldest go first past it.
const MAX_RECORDS: usize = 100_000;

struct Stored {
    record: Record,
    expires: Instant,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<(String, Instant)>,
    records: HashMap<String, Stored>,
    /// Tokens in the order they were first stored, for expiry and the count bound.
    order: VecDeque<String>,
}

pub struct Local {
    state: Mutex<State>,
    pushed: Notify,
    max_queue: usize,
    ttl: Duration,
}

impl Local {
    pub fn new(max_queue: usize, ttl: Duration) -> Local {
        Local {
            state: Mutex::new(State::default()),
            pushed: Notify::new(),
            max_queue,
            ttl,
        }
    }

    fn put(&self, state: &mut State, record: &Record) {
        let now = Instant::now();
        while let Some(front) = state.order.front() {
            let expired = state.records.get(front).is_none_or(|s| s.expires <= now);
            if !expired && state.order.len() < MAX_RECORDS {
                break;
            }
            let token = state.order.pop_front().expect("front exists");
            state.records.remove(&token);
        }
        let fresh = state
            .records
            .insert(
                record.token.clone(),
                Stored {
                    record: record.clone(),
                    expires: now + self.ttl,
                },
            )
            .is_none();
        if fresh {
            state.order.push_back(record.token.clone());
        }
    }

    pub fn create(&self, record: &Record) -> Result<(), QueueError> {
        let mut state = self.state.lock().unwrap();
        if state.waiting.len() >= self.max_queue {
            return Err(QueueError::Full);
        }
        self.put(&mut state, record);
        state
            .waiting
            .push_back((record.token.clone(), Instant::now()));
        drop(state);
        self.pushed.notify_one();
        Ok(())
    }

    pub fn store(&self, record: &Record) {
        let mut state = self.state.lock().unwrap();
        self.put(&mut state, record);
    }

    pub fn get(&self, token: &str) -> Option<Record> {
        let state = self.state.lock().unwrap();
        state
            .records
            .get(token)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.record.clone())
    }

    /// The next waiting submission; waits at most `wait` for one.
    pub async fn claim(&self, wait: Duration) -> Option<Claim> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.pushed.notified();
            if let Some((token, _)) = self.state.lock().unwrap().waiting.pop_front() {
                return Some(Claim {
                    token,
                    entry: None,
                    taken_over: false,
                });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Puts a claimed submission back at the head of the queue.
    pub fn give_back(&self, claim: &Claim) {
        self.state
            .lock()
            .unwrap()
            .waiting
            .push_front((claim.token.clone(), Instant::now()));
        self.pushed.notify_one();
    }

    /// (waiting, age of the oldest waiting).
    pub fn stats(&self) -> (usize, Duration) {
        let state = self.state.lock().unwrap();
        let age = state
            .waiting
            .front()
            .map_or(Duration::ZERO, |(_, at)| at.elapsed());
        (state.waiting.len(), age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(token: &str) -> Record {
        Record {
            token: token.into(),
            status_id: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn bounded_fifo_with_records() {
        let q = Local::new(2, Duration::from_secs(60));
        q.create(&rec("a")).unwrap();
        q.create(&rec("b")).unwrap();
        assert_eq!(q.create(&rec("c")), Err(QueueError::Full));
        assert_eq!(q.stats().0, 2);
        assert_eq!(q.claim(Duration::ZERO).await.unwrap().token, "a");
        let mut done = rec("a");
        done.status_id = 3;
        q.store(&done);
        assert_eq!(q.get("a").unwrap().status_id, 3);
        assert!(q.get("c").is_none());
        assert_eq!(q.claim(Duration::ZERO).await.unwrap().token, "b");
        assert!(q.claim(Duration::from_millis(1)).await.is_none());
    }

    #[tokio::test]
    async fn records_expire() {
        let q = Local::new(2, Duration::from_millis(1));
        q.store(&rec("a"));
        let until = Instant::now() + Duration::from_millis(2);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        assert!(q.get("a").is_none());
    }
}
