//! Settings come from flags and an optional TOML file (`--config`); a flag wins over the file, the
//! file over the default. `Settings` is the raw, all-optional form shared by clap and serde so that
//! a key and its flag can never drift apart; `Config` is the validated form the daemon runs on.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args};
use serde::Deserialize;

use crate::sandbox::Limits;

/// A duration written like `3500ms`, `30s` or `60m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 3500ms, 30s or 60m"))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A byte count written as a plain number or with a unit: `65536`, `64KiB`, `128MiB`, `1GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}; write e.g. 65536, 64KiB or 128MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "KiB" | "k" => 1 << 10,
            "M" | "MB" | "MiB" | "m" => 1 << 20,
            "G" | "GB" | "GiB" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?}; use KiB, MiB or GiB"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Docker,
    Bwrap,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Docker => "docker",
            Backend::Bwrap => "bwrap",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald when stderr is the journal, text otherwise.
    Auto,
    Journald,
    Text,
    Json,
}

/// Every setting, each both a flag and a key of the TOML file.
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address to listen on: `:PORT` (all interfaces) or `HOST:PORT` [default: :8181]. Ignored when
    /// systemd passes a socket.
    #[arg(long)]
    pub address: Option<String>,
    /// Whether to halt this machine at a random time in [lifetime/2, lifetime) [default: true].
    #[arg(long, action = ArgAction::Set, value_name = "BOOL")]
    pub shutdown: Option<bool>,
    /// How long this machine lives when --shutdown is true [default: 60m].
    #[arg(long)]
    pub lifetime: Option<HumanDuration>,
    /// Command run to halt the machine; without it the daemon exits with status 3, which the
    /// shipped unit maps to a poweroff.
    #[arg(long)]
    pub halt_command: Option<String>,
    /// How long /healthz fails while requests are still served before the listener closes
    /// [default: 30s].
    #[arg(long)]
    pub drain: Option<HumanDuration>,
    /// Sandbox backend [default: docker].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Docker image whose default command reads the program on stdin [default: playground].
    #[arg(long)]
    pub image: Option<String>,
    /// bwrap: the command run inside the sandbox [default: /bin/sh].
    #[arg(long)]
    pub command: Option<String>,
    /// bwrap: a directory used as the read-only root; without it the host's /usr, /bin, /lib* are
    /// bound read-only.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Per-run deadline, from the moment the program is handed over [default: 3500ms].
    #[arg(long)]
    pub timeout: Option<HumanDuration>,
    /// Largest accepted program [default: 65536].
    #[arg(long)]
    pub max_program_bytes: Option<ByteSize>,
    /// Largest output (stdout + stderr) before the run is killed [default: 65536].
    #[arg(long)]
    pub max_output_bytes: Option<ByteSize>,
    /// Cached answers, at most [default: 10000].
    #[arg(long)]
    pub cache_entries: Option<usize>,
    /// Cached answers' total size, at most [default: 256MiB].
    #[arg(long)]
    pub cache_bytes: Option<ByteSize>,
    /// Allowed CORS origin; repeat for several [default: *].
    #[arg(long)]
    pub allow_origin: Option<Vec<String>>,
    /// Runs at once [default: number of CPUs].
    #[arg(long)]
    pub max_concurrent_runs: Option<usize>,
    /// Requests waiting for a run slot before new ones get 503 [default: 64].
    #[arg(long)]
    pub max_queued: Option<usize>,
    /// Docker: containers kept started and waiting for a program [default: --max-concurrent-runs].
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// Memory per run, swap included [default: 128MiB].
    #[arg(long)]
    pub memory: Option<ByteSize>,
    /// Processes per run [default: 64].
    #[arg(long)]
    pub pids: Option<u32>,
    /// CPUs per run [default: 1].
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Size of the writable /tmp of a run [default: 16MiB].
    #[arg(long)]
    pub tmpfs_size: Option<ByteSize>,
    /// How long a client may take to send a request's head, and again its body [default: 10s].
    #[arg(long)]
    pub read_timeout: Option<HumanDuration>,
    /// Log format [default: auto].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Serve a playground page at / [default: true].
    #[arg(long, action = ArgAction::Set, value_name = "BOOL")]
    pub ui: Option<bool>,
}

impl Settings {
    /// Reads a TOML file; unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// `self` (flags) over `file`.
    pub fn over(self, file: Settings) -> Settings {
        macro_rules! pick {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(file.$f),)* } };
        }
        pick!(
            address,
            shutdown,
            lifetime,
            halt_command,
            drain,
            backend,
            image,
            command,
            rootfs,
            timeout,
            max_program_bytes,
            max_output_bytes,
            cache_entries,
            cache_bytes,
            allow_origin,
            max_concurrent_runs,
            max_queued,
            pool_size,
            memory,
            pids,
            cpus,
            tmpfs_size,
            read_timeout,
            log_format,
            ui
        )
    }
}

/// Which origins may read /compile's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowOrigin {
    Any,
    List(Vec<String>),
}

/// The validated settings the daemon runs on.
#[derive(Clone, Debug)]
pub struct Config {
    pub address: SocketAddr,
    pub shutdown: bool,
    pub lifetime: Duration,
    pub halt_command: Option<String>,
    pub drain: Duration,
    pub backend: Backend,
    pub image: String,
    pub command: String,
    pub rootfs: Option<PathBuf>,
    pub limits: Limits,
    pub max_program_bytes: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub allow_origin: AllowOrigin,
    pub max_concurrent_runs: usize,
    pub max_queued: usize,
    pub pool_size: usize,
    pub read_timeout: Duration,
    pub log_format: LogFormat,
    pub ui: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_settings(Settings::default()).expect("defaults are valid")
    }
}

/// `:8181` means every interface, as in the Go server's flag.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_string()
    };
    full.to_socket_addrs()
        .map_err(|e| format!("invalid address {s:?}: {e}; write :PORT or HOST:PORT"))?
        .next()
        .ok_or_else(|| format!("address {s:?} resolves to nothing"))
}

impl Config {
    pub fn from_settings(s: Settings) -> Result<Config, String> {
        let mut errors = Vec::new();
        let address = parse_address(s.address.as_deref().unwrap_or(":8181")).unwrap_or_else(|e| {
            errors.push(e);
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let cpus_default = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_concurrent_runs = s.max_concurrent_runs.unwrap_or(cpus_default);
        let limits = Limits {
            timeout: s.timeout.map_or(Duration::from_millis(3500), |d| d.0),
            max_output_bytes: s.max_output_bytes.map_or(65536, |b| b.0 as usize),
            memory_bytes: s.memory.map_or(128 << 20, |b| b.0),
            pids: s.pids.unwrap_or(64),
            cpus: s.cpus.unwrap_or(1.0),
            tmpfs_bytes: s.tmpfs_size.map_or(16 << 20, |b| b.0),
        };
        let allow_origin = match s.allow_origin {
            None => AllowOrigin::Any,
            Some(list) if list.iter().any(|o| o == "*") => AllowOrigin::Any,
            Some(list) => AllowOrigin::List(list),
        };
        let c = Config {
            address,
            shutdown: s.shutdown.unwrap_or(true),
            lifetime: s.lifetime.map_or(Duration::from_secs(3600), |d| d.0),
            halt_command: s.halt_command.filter(|c| !c.trim().is_empty()),
            drain: s.drain.map_or(Duration::from_secs(30), |d| d.0),
            backend: s.backend.unwrap_or(Backend::Docker),
            image: s.image.unwrap_or_else(|| "playground".into()),
            command: s.command.unwrap_or_else(|| "/bin/sh".into()),
            rootfs: s.rootfs,
            limits,
            max_program_bytes: s.max_program_bytes.map_or(65536, |b| b.0 as usize),
            cache_entries: s.cache_entries.unwrap_or(10_000),
            cache_bytes: s.cache_bytes.map_or(256 << 20, |b| b.0 as usize),
            allow_origin,
            max_concurrent_runs,
            max_queued: s.max_queued.unwrap_or(64),
            pool_size: s.pool_size.unwrap_or(max_concurrent_runs),
            read_timeout: s.read_timeout.map_or(Duration::from_secs(10), |d| d.0),
            log_format: s.log_format.unwrap_or(LogFormat::Auto),
            ui: s.ui.unwrap_or(true),
        };
        c.check(&mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.join("\n"))
        }
    }

    fn check(&self, errors: &mut Vec<String>) {
        let l = &self.limits;
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                errors.push(msg.to_string());
            }
        };
        need(!l.timeout.is_zero(), "timeout must be more than 0");
        need(
            l.max_output_bytes > 0,
            "max-output-bytes must be more than 0",
        );
        need(
            self.max_program_bytes > 0,
            "max-program-bytes must be more than 0",
        );
        need(
            l.memory_bytes >= 6 << 20,
            "memory must be at least 6MiB (Docker's minimum)",
        );
        need(l.pids >= 2, "pids must be at least 2");
        need(
            l.cpus > 0.0 && l.cpus.is_finite(),
            "cpus must be more than 0",
        );
        need(l.tmpfs_bytes > 0, "tmpfs-size must be more than 0");
        need(
            self.max_concurrent_runs > 0,
            "max-concurrent-runs must be at least 1",
        );
        need(
            !self.read_timeout.is_zero(),
            "read-timeout must be more than 0",
        );
        need(!self.image.is_empty(), "image must not be empty");
        need(!self.command.trim().is_empty(), "command must not be empty");
        need(
            !self.shutdown || !self.lifetime.is_zero(),
            "lifetime must be more than 0 when shutdown is true",
        );
        if let AllowOrigin::List(list) = &self.allow_origin {
            need(
                list.iter().all(|o| !o.is_empty()),
                "allow-origin must not be empty",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_go_server() {
        let c = Config::default();
        assert_eq!(c.address.port(), 8181);
        assert!(c.shutdown);
        assert_eq!(c.limits.timeout, Duration::from_millis(3500));
        assert_eq!(c.max_program_bytes, 65536);
        assert_eq!(c.cache_entries, 10_000);
        assert_eq!(c.allow_origin, AllowOrigin::Any);
        assert!(c.ui);
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!("128MiB".parse::<ByteSize>().unwrap().0, 128 << 20);
        assert_eq!("65536".parse::<ByteSize>().unwrap().0, 65536);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(
            "3500ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(3500)
        );
        assert_eq!(
            "60m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn file_rejects_unknown_keys_and_flags_win() {
        assert!(toml::from_str::<Settings>("tiemout = \"1s\"").is_err());
        let file: Settings =
            toml::from_str("timeout = \"1s\"\nmax-queued = 3\nmemory = \"64MiB\"\nui = false")
                .unwrap();
        let flags = Settings {
            timeout: Some("2s".parse().unwrap()),
            ..Settings::default()
        };
        let c = Config::from_settings(flags.over(file)).unwrap();
        assert_eq!(c.limits.timeout, Duration::from_secs(2));
        assert_eq!(c.max_queued, 3);
        assert_eq!(c.limits.memory_bytes, 64 << 20);
        assert!(!c.ui);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address(":9000").unwrap().port(), 9000);
        assert_eq!(
            parse_address("127.0.0.1:0").unwrap().to_string(),
            "127.0.0.1:0"
        );
        assert!(parse_address("nonsense").is_err());
    }

    #[test]
    fn bad_values_are_all_reported() {
        let s = Settings {
            pids: Some(0),
            cpus: Some(0.0),
            ..Settings::default()
        };
        let err = Config::from_settings(s).unwrap_err();
        assert!(err.contains("pids") && err.contains("cpus"), "{err}");
    }
}
