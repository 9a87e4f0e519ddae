//! Where submissions wait and results are kept: in this process, or in Redis for a fleet. Both
//! take the same calls, so the API and the workers do not care which.

mod local;
mod redis;

use std::time::Duration;

use crate::config::Judge0Config;
use crate::judge0::record::Record;
use local::Local;
use redis::RedisQueue;

#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// 503 `{"error": "queue is full"}`.
    Full,
    /// The queue's Redis did not answer.
    Unavailable(String),
}

/// A submission a worker took.
#[derive(Debug, Clone)]
pub struct Claim {
    pub token: String,
    /// The stream entry's id, on Redis.
    pub entry: Option<String>,
    /// Taken over from a daemon that stopped renewing its claim.
    pub taken_over: bool,
}

pub enum Queue {
    Local(Local),
    Redis(RedisQueue),
}

impl Queue {
    pub fn new(config: &Judge0Config) -> Queue {
        match &config.queue {
            Some(settings) => Queue::Redis(RedisQueue::new(
                settings.clone(),
                config.max_queue,
                config.ttl,
                config.claim_after,
            )),
            None => Queue::Local(Local::new(config.max_queue, config.ttl)),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Queue::Redis(_))
    }

    /// Stores the record and queues it.
    pub async fn create(&self, record: &Record) -> Result<(), QueueError> {
        match self {
            Queue::Local(q) => q.create(record),
            Queue::Redis(q) => q.create(record).await,
        }
    }

    pub async fn store(&self, record: &Record) -> Result<(), QueueError> {
        match self {
            Queue::Local(q) => {
                q.store(record);
                Ok(())
            }
            Queue::Redis(q) => q.store(record).await,
        }
    }

    pub async fn get(&self, token: &str) -> Result<Option<Record>, QueueError> {
        match self {
            Queue::Local(q) => Ok(q.get(token)),
            Queue::Redis(q) => q.get(token).await,
        }
    }

    pub async fn claim(&self, wait: Duration) -> Result<Option<Claim>, QueueError> {
        match self {
            Queue::Local(q) => Ok(q.claim(wait).await),
            Queue::Redis(q) => q.claim(wait).await,
        }
    }

    pub async fn finish(&self, claim: &Claim, record: &Record) -> Result<(), QueueError> {
        match self {
            Queue::Local(q) => {
                q.store(record);
                Ok(())
            }
            Queue::Redis(q) => q.finish(claim, record).await,
        }
    }

    /// Returns a claimed submission to the queue, for another daemon (or later) to run.
    pub async fn give_back(&self, claim: &Claim) -> Result<(), QueueError> {
        match self {
            Queue::Local(q) => {
                q.give_back(claim);
                Ok(())
            }
            Queue::Redis(q) => q.give_back(claim).await,
        }
    }

    pub async fn heartbeat(&self, ids: &[String]) -> Result<(), QueueError> {
        match self {
            Queue::Local(_) => Ok(()),
            Queue::Redis(q) => q.heartbeat(ids).await,
        }
    }

    pub async fn stats(&self) -> Result<(usize, Duration), QueueError> {
        match self {
            Queue::Local(q) => Ok(q.stats()),
            Queue::Redis(q) => q.stats().await,
        }
    }
}
