//! compilerd's binary: args → config → logging → run → ExitCode, with the exit code decided here
//! and only here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use compilerd::config::{Config, Settings};
use compilerd::hooks::Hooks;
use compilerd::metrics::Metrics;
use compilerd::server::{Daemon, StopRequests, Stopped};

/// The self-halt deadline passed and no --halt-command was given: the unit maps this status to a
/// poweroff (and to success), so the daemon itself never needs root.
const EXIT_HALT: u8 = 3;
const EXIT_CONFIG: u8 = 2;
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    version,
    about = "Runs playground programs in locked-down sandboxes and answers as JSON"
)]
struct Cli {
    /// A TOML file with settings; flags win over it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates the settings (flags and --config FILE) and exits 0, or says what is wrong.
    CheckConfig,
}

fn load(cli: &Cli) -> Result<Config, String> {
    let file = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    Config::from_settings(cli.settings.clone().over(file))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("compilerd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::CheckConfig) = cli.command {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    compilerd::logging::init(config.log_format);
    match compilerd::fdlimit::raise_nofile() {
        Ok((before, after)) => tracing::info!(before, after, "open file limit (RLIMIT_NOFILE)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(Stopped::Requested) | Ok(Stopped::Halt { halted: true }) => ExitCode::SUCCESS,
        Ok(Stopped::Halt { halted: false }) => ExitCode::from(EXIT_HALT),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Startup failures carry what was being done (`context`); the log line shows the whole chain.
async fn run(config: Config) -> anyhow::Result<Stopped> {
    let (std_listener, inherited) = compilerd::systemd::listener(config.address)
        .with_context(|| format!("cannot listen on {}", config.address))?;
    let listener = std_listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        .context("cannot serve on the listening socket")?;
    let local = listener
        .local_addr()
        .context("cannot read the listening socket's address")?;
    let metrics = Arc::new(Metrics::new());
    let hooks: Arc<dyn Hooks> = metrics.clone();
    let languages = compilerd::languages::open(&config, hooks.clone())
        .await
        .map_err(anyhow::Error::msg)
        .context("cannot open the sandboxes")?;
    tracing::info!(address = %local, inherited, backend = %languages.backend.describe(), "serving");

    let stops = StopRequests::default();
    spawn_signal_handler(stops.clone()).context("cannot handle signals")?;
    let daemon = Daemon {
        config,
        listener,
        languages,
        metrics: Some(metrics),
        hooks,
        stops,
    };
    Ok(daemon.run().await)
}

fn spawn_signal_handler(stops: StopRequests) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("got SIGTERM"),
                _ = int.recv() => tracing::info!("got SIGINT"),
            }
            stops.request();
        }
    });
    Ok(())
}
