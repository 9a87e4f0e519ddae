//! The listener systemd passes us (socket activation), or one we bind ourselves.

use std::net::SocketAddr;

/// Takes the first inherited socket when `LISTEN_FDS`/`LISTEN_PID` name us, else binds `address`.
pub fn listener(address: SocketAddr) -> std::io::Result<(std::net::TcpListener, bool)> {
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(l) = fds.take_tcp_listener(0)? {
        return Ok((l, true));
    }
    let socket = std::net::TcpListener::bind(address)?;
    Ok((socket, false))
}

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::compile::CompileService;
use crate::lifecycle::Health;

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// READY=1: the listener is up and the sandbox backend answered.
pub fn notify_ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

pub fn notify_stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Keeps STATUS= current (at most once a second, only when it changed) and pets the watchdog
/// while the event loop is alive.
pub fn spawn_status(
    compile: Arc<CompileService>,
    health: Arc<Health>,
    halt_at: Option<tokio::time::Instant>,
    backend: String,
) -> tokio::task::JoinHandle<()> {
    let watchdog = sd_notify::watchdog_enabled();
    tokio::spawn(async move {
        let tick = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 2).min(Duration::from_secs(1))
        });
        let mut last = String::new();
        let mut interval = tokio::time::interval(tick);
        loop {
            interval.tick().await;
            let (running, queued, cached) = compile.load();
            let state = if health.is_lameduck() {
                "draining"
            } else {
                "serving"
            };
            let mut line =
                format!("{state}: {running} running, {queued} queued, cache {cached} entries");
            if let Some(at) = halt_at {
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                line.push_str(&format!(", halting in {}s", left.as_secs()));
            }
            let pool = compile.sandbox().status();
            if !pool.is_empty() {
                line.push_str(", ");
                line.push_str(&pool);
            }
            line.push_str(", backend ");
            line.push_str(&backend);
            if watchdog.is_some() {
                notify(&[NotifyState::Watchdog]);
            }
            if line != last {
                notify(&[NotifyState::Status(&line)]);
                last = line;
            }
        }
    })
}

/// Runs the operator's halt command with none of our systemd variables.
pub async fn run_halt_command(cmd: &str) -> bool {
    tracing::info!(command = cmd, "halting the machine");
    let status = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(std::process::Stdio::null())
        .status()
        .await;
    match status {
        Ok(s) if s.success() => true,
        Ok(s) => {
            tracing::error!(status = %s, "halt command failed");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "halt command could not start");
            false
        }
    }
}
