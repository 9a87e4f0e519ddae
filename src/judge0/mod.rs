//! The Judge0 CE 1.13.1 API (README, "Judge0 API"; docs/design.md, "Submissions"): submissions
//! are checked (`submission`), stored and queued (`queue`: in this process, or a Redis stream a
//! fleet shares), taken by this daemon's workers (below) and judged (`judge`) on the same run
//! path as every other request; `api` is the HTTP side under the configured prefix.

pub mod api;
mod b64;
mod callback;
mod info;
pub mod judge;
pub mod langs;
pub mod queue;
pub mod record;
pub mod status;
pub mod submission;
mod zip;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Judge0Config;
use crate::hooks::Hooks;
use crate::languages::Languages;
use crate::lifecycle::Health;
use crate::run::Bounds;
use judge::Judged;
use langs::Table;
use queue::{Claim, Queue, QueueError};
use record::{Record, now_ms};
use status::Status;
use submission::Checks;

/// How long a claim waits for a submission before it looks at the daemon's state again.
const CLAIM_WAIT: Duration = Duration::from_millis(500);
/// A submission taken over more often than this (its daemons kept stopping while it ran, as a
/// submission that crashes its daemon would) is answered as an internal error, not run again.
const MAX_TAKEOVERS: u32 = 3;
/// Pause before trying again when every run slot is taken or Redis failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub struct Judge0 {
    pub config: Judge0Config,
    pub table: Table,
    pub queue: Queue,
    hooks: Arc<dyn Hooks>,
    bounds: Bounds,
    /// Submissions this daemon runs at once.
    slots: usize,
    working: AtomicUsize,
    /// Stream entries this daemon runs, whose claims the heartbeat renews.
    held: Mutex<HashSet<String>>,
    runs: TaskTracker,
    background: TaskTracker,
    /// Cancelled at the stop: no more claims.
    stop: CancellationToken,
    /// Cancelled once the last run landed: the heartbeat and the gauges end.
    done: CancellationToken,
}

impl Judge0 {
    pub fn new(
        config: Judge0Config,
        languages: &Languages,
        hooks: Arc<dyn Hooks>,
        slots: usize,
    ) -> Arc<Judge0> {
        let queue = Queue::new(&config);
        Arc::new(Judge0 {
            table: Table::new(languages),
            queue,
            config,
            hooks,
            bounds: Bounds::default(),
            slots: slots.max(1),
            working: AtomicUsize::new(0),
            held: Mutex::new(HashSet::new()),
            runs: TaskTracker::new(),
            background: TaskTracker::new(),
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
        })
    }

    /// The part of `path` after the prefix, if the path is the API's.
    pub fn route<'a>(&self, path: &'a str) -> Option<&'a str> {
        let prefix = self.config.prefix.as_deref()?;
        let rest = path.strip_prefix(prefix)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    pub fn checks(&self) -> Checks<'_> {
        Checks {
            table: &self.table,
            config: &self.config,
            bounds: self.bounds,
        }
    }

    /// (slots, working) for `/workers`.
    pub fn workers(&self) -> (usize, usize) {
        (self.slots, self.working.load(Ordering::Relaxed))
    }

    /// Starts taking submissions from the queue. On Redis, a daemon in lameduck stops taking
    /// them (the fleet's other daemons do) and finishes those it holds; in-process, it takes
    /// them until it stops, as no other daemon can.
    pub fn start(self: &Arc<Self>, health: Arc<Health>) {
        let this = self.clone();
        self.background
            .spawn(async move { this.claim_loop(health).await });
        let this = self.clone();
        self.background
            .spawn(async move { this.gauge_loop().await });
        if self.queue.is_shared() {
            let this = self.clone();
            self.background
                .spawn(async move { this.heartbeat_loop().await });
        }
    }

    /// Stops claiming, waits for the submissions in hand to be judged and stored.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.runs.close();
        self.runs.wait().await;
        self.done.cancel();
        self.background.close();
        self.background.wait().await;
    }

    async fn pause(&self, token: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(RETRY_PAUSE) => true,
            _ = token.cancelled() => false,
        }
    }

    async fn claim_loop(self: Arc<Self>, health: Arc<Health>) {
        let slots = Arc::new(Semaphore::new(self.slots));
        loop {
            if self.stop.is_cancelled() || (self.queue.is_shared() && health.is_lameduck()) {
                tracing::info!("judge0: no longer taking submissions");
                return;
            }
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = self.stop.cancelled() => return,
            };
            let claimed = tokio::select! {
                c = self.queue.claim(CLAIM_WAIT) => c,
                _ = self.stop.cancelled() => return,
            };
            match claimed {
                Ok(Some(claim)) if self.queue.is_shared() && health.is_lameduck() => {
                    // Read while the lameduck began: another daemon runs it.
                    if let Err(e) = self.queue.give_back(&claim).await {
                        tracing::warn!(token = %claim.token, error = ?e, "judge0: cannot give a submission back; another daemon takes it over later");
                    }
                }
                Ok(Some(claim)) => {
                    if claim.taken_over {
                        self.hooks.judge0_taken_over();
                        tracing::info!(token = %claim.token, "judge0: took over a submission from a daemon that stopped");
                    }
                    if let Some(id) = &claim.entry {
                        self.held.lock().unwrap().insert(id.clone());
                    }
                    let this = self.clone();
                    self.runs.spawn(async move {
                        let _permit = permit;
                        this.work(&claim).await;
                        if let Some(id) = &claim.entry {
                            this.held.lock().unwrap().remove(id);
                        }
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = ?e, "judge0: cannot take submissions from the queue");
                    if !self.pause(&self.stop).await {
                        return;
                    }
                }
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let every = self.config.claim_after / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.done.cancelled() => return,
            }
            let ids: Vec<String> = self.held.lock().unwrap().iter().cloned().collect();
            if let Err(e) = self.queue.heartbeat(&ids).await {
                tracing::warn!(error = ?e, "judge0: cannot renew the claims on running submissions");
            }
        }
    }

    async fn gauge_loop(self: Arc<Self>) {
        loop {
            if let Ok((length, oldest)) = self.queue.stats().await {
                self.hooks.judge0_queue(length, oldest);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.done.cancelled() => return,
            }
        }
    }

    /// Judges `rec` now, within the request (`wait=true`); `None` when no run slot is free.
    pub async fn run_now(&self, rec: &Record) -> Option<Record> {
        match judge::judge(&self.table, rec).await {
            Judged::Done(done) => {
                self.hooks.judge0_verdict(done.status().description());
                Some(*done)
            }
            Judged::Busy => None,
        }
    }

    async fn work(&self, claim: &Claim) {
        self.working.fetch_add(1, Ordering::Relaxed);
        let result = self.judge_claim(claim).await;
        self.working.fetch_sub(1, Ordering::Relaxed);
        let Some(done) = result else {
            return;
        };
        // The result must be kept before the entry is let go; Redis may be back in a moment.
        let mut tries = 0;
        while let Err(e) = self.queue.finish(claim, &done).await {
            tries += 1;
            tracing::warn!(token = %done.token, error = ?e, tries, "judge0: cannot store a result");
            if tries >= 50 || !self.pause(&self.done).await {
                // Left unacknowledged: another daemon (or this one) runs it again.
                return;
            }
        }
        if let Some(url) = &done.callback_url {
            callback::send(url, &done).await;
        }
    }

    async fn judge_claim(&self, claim: &Claim) -> Option<Record> {
        let rec = match self.queue.get(&claim.token).await {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                // Expired before it ran: say so under its token, and let the entry go.
                let lost = Record {
                    token: claim.token.clone(),
                    status_id: Status::INTERNAL_ERROR.id(),
                    message: Some("the submission expired before it ran".into()),
                    created_at: now_ms(),
                    finished_at: Some(now_ms()),
                    ..Default::default()
                };
                return Some(lost);
            }
            Err(e) => {
                tracing::warn!(token = %claim.token, error = ?e, "judge0: cannot read a submission");
                return None;
            }
        };
        if rec.is_done() {
            // Judged by a daemon that died before letting the entry go.
            return Some(rec);
        }
        let mut rec = rec;
        if claim.taken_over {
            rec.takeovers += 1;
            if rec.takeovers > MAX_TAKEOVERS {
                // Each daemon that ran it stopped while it ran: it is not run again.
                tracing::warn!(token = %rec.token, "judge0: a submission whose daemons kept stopping is given up");
                return Some(Record {
                    status_id: Status::INTERNAL_ERROR.id(),
                    message: Some(format!(
                        "the daemons that ran this submission stopped {} times",
                        rec.takeovers
                    )),
                    finished_at: Some(now_ms()),
                    ..rec
                });
            }
        }
        let processing = Record {
            status_id: Status::PROCESSING.id(),
            ..rec.clone()
        };
        if let Err(e) = self.queue.store(&processing).await {
            tracing::warn!(token = %rec.token, error = ?e, "judge0: cannot mark a submission processing");
        }
        loop {
            let started = std::time::Instant::now();
            match judge::judge(&self.table, &rec).await {
                Judged::Done(done) => {
                    self.hooks.judge0_verdict(done.status().description());
                    tracing::info!(
                        token = %done.token,
                        language_id = done.language_id,
                        status = done.status().description(),
                        taken_over = claim.taken_over,
                        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "judge0: judged"
                    );
                    return Some(*done);
                }
                Judged::Busy => {
                    if !self.pause(&self.done).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Stores and queues a new submission.
    pub async fn submit(&self, rec: &Record) -> Result<(), QueueError> {
        self.queue.create(rec).await
    }
}

/// A version 4 UUID, Judge0's token format.
pub fn new_token() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_uuids() {
        let t = new_token();
        assert_eq!(t.len(), 36);
        assert_eq!(&t[14..15], "4");
        assert_ne!(t, new_token());
    }
}
