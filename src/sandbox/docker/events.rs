//! What the engine says about our containers outside the run's own connection: which had a process
//! killed by the memory limit, and which execs have ended.
//!
//! Why: a program that goes on after one of its children was killed by the memory limit (a
//! compiler driver whose compiler was killed, say) exits with its own status, and the engine
//! records the OOM in the container's state only when the container stops, which a run no longer
//! waits for (see `engine`). The engine does announce the OOM at once as an `oom` event, and it
//! announces an exec's end (`exec_die`) after any earlier event of its container, so once the
//! run's `exec_die` is in, whether an `oom` came before it is settled.
//!
//! The container's own end (`die`) is followed too: when the memory limit kills a gVisor sandbox,
//! its kernel dies with the program and the whole container stops. The engine (seen with 20.10 and
//! runsc) then handles the container's exit before the exec's, forgets the exec on the way (its
//! `exec_die` says exit code 127) and never closes the exec's output stream until the container is
//! removed; a run in an exec learns that it is over from `die` instead. The engine announces a
//! container's `oom` before its `die`, so by then the OOM is recorded.
//!
//! One subscription per sandbox, filtered on its instance label; events of containers that are not
//! (or no longer) watched are dropped, so the record stays as small as the set of live containers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::sweep::LABEL_INSTANCE;

#[derive(Default)]
pub(super) struct Events {
    watched: Mutex<HashMap<String, Watched>>,
    /// Bumped on every recorded event, for waiters.
    changed: watch::Sender<u64>,
    /// The subscription is up (as far as we know: it is only known to be down once it failed).
    following: AtomicBool,
}

#[derive(Default)]
struct Watched {
    oom: bool,
    died: bool,
    ended_execs: HashSet<String>,
}

impl Events {
    /// Starts recording events for the container `name` (before it is created).
    pub fn watch(&self, name: &str) {
        self.watched
            .lock()
            .unwrap()
            .insert(name.to_owned(), Watched::default());
    }

    /// Stops recording events for `name` and forgets what was recorded.
    pub fn forget(&self, name: &str) {
        self.watched.lock().unwrap().remove(name);
    }

    /// Whether the container `name` had a process killed by the memory limit before its exec
    /// `exec` ended. Waits, at most `within`, for the engine's word that the exec ended; without
    /// it (no subscription, or the engine is slow) the answer is what was recorded so far.
    pub async fn oom_before_end(&self, name: &str, exec: &str, within: Duration) -> bool {
        self.oom_once(name, within, |w| w.ended_execs.contains(exec))
            .await
    }

    /// The same for a run in the container's main process: settled by the engine's word that the
    /// container died (a relay killed under its run ends its stream before the engine has
    /// processed the death, and with it the memory kill).
    pub async fn oom_before_death(&self, name: &str, within: Duration) -> bool {
        self.oom_once(name, within, |w| w.died).await
    }

    /// Whether `name` had a memory kill, once that is recorded or `ended` says the end is, waiting
    /// at most `within`.
    async fn oom_once(
        &self,
        name: &str,
        within: Duration,
        ended: impl Fn(&Watched) -> bool,
    ) -> bool {
        let mut changed = self.changed.subscribe();
        let settled = |events: &Events| {
            let watched = events.watched.lock().unwrap();
            match watched.get(name) {
                Some(w) => (w.oom, w.oom || ended(w)),
                None => (false, true),
            }
        };
        let (oom, done) = settled(self);
        if done || !self.following.load(Ordering::Relaxed) {
            return oom;
        }
        let wait = async {
            loop {
                if changed.changed().await.is_err() {
                    return;
                }
                if settled(self).1 {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
        settled(self).0
    }

    /// Whether the engine announced that the memory limit killed a process of `name`.
    pub fn oom_seen(&self, name: &str) -> bool {
        self.watched
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|w| w.oom)
    }

    /// Resolves once the engine announces that the container `name` stopped; never, when it does
    /// not (not watched, or no subscription), so a run then ends as it always did.
    pub async fn died(&self, name: &str) {
        let mut changed = self.changed.subscribe();
        loop {
            if self
                .watched
                .lock()
                .unwrap()
                .get(name)
                .is_some_and(|w| w.died)
            {
                return;
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn record(&self, event: &EventMessage) {
        let Some(attributes) = event.actor.as_ref().and_then(|a| a.attributes.as_ref()) else {
            return;
        };
        let Some(name) = attributes.get("name") else {
            return;
        };
        let mut watched = self.watched.lock().unwrap();
        let Some(w) = watched.get_mut(name) else {
            return;
        };
        match event.action.as_deref() {
            Some("oom") => w.oom = true,
            Some("die") => w.died = true,
            Some("exec_die") => {
                if let Some(exec) = attributes.get("execID") {
                    w.ended_execs.insert(exec.clone());
                }
            }
            _ => return,
        }
        drop(watched);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Follows the engine's `oom`, `die` and `exec_die` events for the containers labelled with
    /// `instance`, resubscribing when the stream breaks, until the task is aborted.
    pub fn follow(self: &Arc<Self>, docker: Docker, instance: &str) -> JoinHandle<()> {
        let events = self.clone();
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            (
                "event",
                vec!["oom".to_owned(), "die".to_owned(), "exec_die".to_owned()],
            ),
            ("label", vec![format!("{LABEL_INSTANCE}={instance}")]),
        ]);
        // From the start of the engine's in-memory event log, not from now: nothing is lost
        // while the subscription is being set up, and an instance's label is new, so nothing
        // older matches. After a break, from the last event seen (replays are harmless).
        let mut since = "1".to_owned();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let options = EventsOptionsBuilder::new()
                    .since(&since)
                    .filters(&filters)
                    .build();
                let mut stream = docker.events(Some(options));
                events.following.store(true, Ordering::Relaxed);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(event) => {
                            if let Some(t) = event.time_nano {
                                since = format!("{}.{:09}", t / 1_000_000_000, t % 1_000_000_000);
                            }
                            events.record(&event);
                            pause = Duration::from_millis(100);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "engine event stream failed");
                            break;
                        }
                    }
                }
                events.following.store(false, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        })
    }
}
