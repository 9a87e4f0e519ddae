//! Logging: journald with structured fields when stderr is the journal, text or JSON otherwise.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// True when systemd connected our stderr to the journal (JOURNAL_STREAM names its device:inode).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

type TextLayer<S> = tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    fn() -> std::io::Stderr,
>;

/// Colours only for a person at a terminal, never into pipes or files.
fn text_layer<S>() -> TextLayer<S> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr as fn() -> std::io::Stderr)
        .with_ansi(std::io::stderr().is_terminal())
}

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("COMPILERD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                // Fields keep their own names (REQUEST_ID, PROGRAM_HASH, ...), so that
                // `journalctl REQUEST_ID=7` finds a request.
                let layer = layer
                    .with_syslog_identifier("compilerd".into())
                    .with_field_prefix(None);
                registry.with(layer).init()
            }
            Err(e) => {
                registry.with(text_layer()).init();
                tracing::warn!(error = %e, "journald is not reachable; logging text to stderr");
            }
        },
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
        _ => registry.with(text_layer()).init(),
    }
}
