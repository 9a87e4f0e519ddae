//! Assembles a daemon from a validated `Config` and runs its life: serve, then on a stop request
//! or the self-halt deadline: lameduck (/healthz fails, requests still served), drain, stop
//! accepting, let every accepted request finish, remove the sandboxes, and say why we stopped.
//! Nothing here is global, so tests can run several daemons in one process.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cache::SharedCache;
use crate::compile::{Options, SharedState};
use crate::config::Config;
use crate::fdlimit;
use crate::hooks::Hooks;
use crate::http::{self, App, Cors};
use crate::judge0::Judge0;
use crate::languages::{Languages, Opened};
use crate::lifecycle::Health;
use crate::metrics::Metrics;
use crate::systemd;

/// Why the daemon stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM, SIGINT, or a test's stop request.
    Requested,
    /// The self-halt deadline passed; `halted` says whether `--halt-command` ran successfully.
    /// Without a halt command the caller exits with the status the unit maps to a poweroff.
    Halt { halted: bool },
}

/// Counts stop requests: the first starts the drain, the second cuts its wait short.
#[derive(Clone)]
pub struct StopRequests(Arc<watch::Sender<u32>>);

impl Default for StopRequests {
    fn default() -> Self {
        StopRequests(Arc::new(watch::channel(0).0))
    }
}

impl StopRequests {
    pub fn request(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    fn subscribe(&self) -> watch::Receiver<u32> {
        self.0.subscribe()
    }
}

/// What `run` is built from; the caller opened the sandboxes (`languages::open`) and the listener.
pub struct Daemon {
    pub config: Config,
    pub listener: TcpListener,
    pub languages: Opened,
    pub metrics: Option<Arc<Metrics>>,
    pub hooks: Arc<dyn Hooks>,
    pub stops: StopRequests,
}

/// Picks the self-halt delay uniformly in [lifetime/2, lifetime).
pub fn halt_delay(lifetime: Duration) -> Duration {
    let half = lifetime / 2;
    let span = lifetime.saturating_sub(half).as_nanos().max(1) as u64;
    half + Duration::from_nanos(rand::random_range(0..span))
}

impl Daemon {
    pub async fn run(self) -> Stopped {
        let Daemon {
            config,
            listener,
            languages,
            metrics,
            hooks,
            stops,
        } = self;
        let opts = Options {
            limits: config.limits.clone(),
            max_program_bytes: config.max_program_bytes,
            cache_entries: config.cache_entries,
            cache_bytes: config.cache_bytes,
            max_concurrent_runs: config.max_concurrent_runs,
            max_queued: config.max_queued,
        };
        let shared_cache = config
            .shared_cache
            .clone()
            .map(|s| SharedCache::start(s, hooks.clone()));
        let shared = SharedState::new(&opts, shared_cache, &hooks);
        if let Some(m) = &metrics {
            let names: Vec<&str> = languages
                .languages
                .iter()
                .map(|l| l.config.name.as_str())
                .collect();
            m.register_languages(&names);
        }
        let languages = Arc::new(Languages::new(
            languages.languages,
            languages.backend,
            &config.default_language(),
            &opts,
            &shared,
            hooks.clone(),
        ));
        // Status lines count runs and cache entries through any service: all share them.
        let compile = languages.default_language().compile.clone();
        let health = Health::new(hooks.clone());
        let judge0 = config.judge0.prefix.is_some().then(|| {
            let j = Judge0::new(
                config.judge0.clone(),
                &languages,
                hooks.clone(),
                config.max_concurrent_runs,
            );
            j.start(health.clone());
            j
        });
        let app = App::new(
            languages.clone(),
            Cors::new(config.allow_origin.clone()),
            health.clone(),
            metrics,
            hooks.clone(),
            config.read_timeout,
            config.ui,
            judge0.clone(),
        );

        let max_connections = config.max_connections.unwrap_or_else(|| {
            let nofile = fdlimit::nofile().map_or(1024, |(soft, _)| soft);
            fdlimit::default_max_connections(nofile, config.max_concurrent_runs + config.pool_size)
        });
        tracing::info!(max_connections, "connection limit");
        let (stop_accepting_tx, stop_accepting_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(listener, app, max_connections, async {
            let _ = stop_accepting_rx.await;
        }));

        let halt_at = config.shutdown.then(|| {
            let delay = halt_delay(config.lifetime);
            let wall = SystemTime::now() + delay;
            let at = humantime::format_rfc3339_seconds(wall);
            tracing::info!(delay_s = delay.as_secs_f64(), "shutting down at {at}");
            (tokio::time::Instant::now() + delay, wall)
        });
        hooks.halt_scheduled(halt_at.and_then(|(_, wall)| {
            Some(wall.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs())
        }));
        let halt_at = halt_at.map(|(at, _)| at);
        systemd::notify_ready();
        let status = systemd::spawn_status(
            compile.clone(),
            health.clone(),
            halt_at,
            languages.backend().describe(),
        );

        let mut stop_rx = stops.subscribe();
        let halting = tokio::select! {
            _ = stop_rx.wait_for(|n| *n >= 1) => false,
            _ = sleep_until_opt(halt_at) => true,
        };
        if halting {
            tracing::info!("self-halt deadline passed; entering lameduck");
        } else {
            tracing::info!("stop requested; entering lameduck");
        }
        health.enter_lameduck();
        systemd::notify_stopping();
        let drain_until = tokio::time::Instant::now() + config.drain;
        tracing::info!(
            drain_s = config.drain.as_secs_f64(),
            "/healthz now fails; serving during the drain"
        );
        let need = if halting { 1 } else { 2 };
        tokio::select! {
            _ = tokio::time::sleep_until(drain_until) => tracing::info!("drain period over; closing the listener"),
            _ = stop_rx.wait_for(|n| *n >= need) => tracing::info!("second stop request; closing the listener now"),
        }
        let _ = stop_accepting_tx.send(());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "server task failed");
        }
        if let Some(j) = &judge0 {
            j.shutdown().await;
        }
        languages.wait_idle().await;
        tracing::info!("every accepted request answered; removing sandboxes");
        languages.shutdown().await;
        status.abort();
        if !halting {
            tracing::info!("stopped");
            return Stopped::Requested;
        }
        let halted = match &config.halt_command {
            Some(cmd) => systemd::run_halt_command(cmd).await,
            None => false,
        };
        Stopped::Halt { halted }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_delay_is_within_bounds() {
        let life = Duration::from_secs(60);
        for _ in 0..1000 {
            let d = halt_delay(life);
            assert!(d >= life / 2 && d < life, "{d:?}");
        }
    }
}
