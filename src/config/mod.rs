//! Settings come from flags and an optional TOML file (`--config`); a flag wins over the file, the
//! file over the default. `Settings` is the raw, all-optional form shared by clap and serde so that
//! a key and its flag can never drift apart; `Config` is the validated form the daemon runs on.

mod judge0;
mod languages;
mod shared;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args};
use serde::Deserialize;

use crate::cache::SharedSettings;
use crate::run::Maxima;
use crate::sandbox::Limits;

pub use judge0::Judge0Config;
use languages::valid_language_name;
pub use languages::{FLAT_LANGUAGE, LanguageConfig, LanguageSettings, MAX_LANGUAGES};
use shared::shared_settings;
pub use units::{ByteSize, HumanDuration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Docker when the engine answers and has every language's image, else bubblewrap when it
    /// can make a sandbox (`backend::choose`).
    Auto,
    Docker,
    Bwrap,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
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

/// Every fixed default, written as in the TOML file: the one place defaults live. `from_settings`
/// takes what a setting leaves out from here; tests hold the flags' help, the shipped config and
/// the README's settings table to it. Defaults worked out at startup (runs at once, pool size,
/// connection limit, default language) are not fixed values: their flags' help says how.
pub const DEFAULTS: &str = r#"
address = ":8181"
shutdown = false
lifetime = "60m"
drain = "30s"
backend = "auto"
image = "playground"
command = "/bin/sh"
timeout = "3500ms"
max-program-bytes = 65536
max-output-bytes = 65536
cache-entries = 10000
cache-bytes = "256MiB"
allow-origin = ["*"]
max-queued = 64
memory = "128MiB"
pids = 64
cpus = 1.0
tmpfs-size = "16MiB"
max-run-timeout = "15s"
max-run-cpu-time = "15s"
max-run-memory = "512MiB"
max-run-output-bytes = 1048576
read-timeout = "10s"
log-format = "auto"
shared-cache-ttl = "7d"
shared-cache-timeout = "20ms"
ui = true
judge0-prefix = "/judge0"
judge0-max-queue = 100
submission-ttl = "1d"
judge0-claim-after = "60s"
"#;

/// Every setting, each both a flag and a key of the TOML file.
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address to listen on: `:PORT` (all interfaces) or `HOST:PORT` [default: :8181]. Ignored when
    /// systemd passes a socket.
    #[arg(long)]
    pub address: Option<String>,
    /// Whether to halt this machine at a random time in [lifetime/2, lifetime), for preemptible
    /// VMs [default: false].
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
    /// Sandbox backend: `auto` takes Docker when the engine answers and has the image, else
    /// bubblewrap [default: auto].
    #[arg(long)]
    pub backend: Option<Backend>,
    /// Docker image whose default command reads the program on stdin [default: playground].
    #[arg(long)]
    pub image: Option<String>,
    /// Docker: the engine's OCI runtime for the sandbox containers, e.g. `runsc` (gVisor), which
    /// the engine must list (daemon.json `runtimes`) [default: the engine's default].
    #[arg(long)]
    pub runtime: Option<String>,
    /// bwrap: the command run inside the sandbox [default: /bin/sh].
    #[arg(long)]
    pub command: Option<String>,
    /// bwrap: a directory used as the read-only root; without it the host's /usr, /bin, /lib* are
    /// bound read-only.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The formatter of POST /fmt (program on stdin, formatted program on stdout), run in the
    /// image or rootfs; without it /fmt answers 400. Flat settings only: a `[languages.NAME]`
    /// table has its own.
    #[arg(long)]
    pub format_command: Option<String>,
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
    /// Sandboxes kept started, each waiting for one program (Docker containers, bwrap sandboxes)
    /// [default: --max-concurrent-runs].
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// Memory per run, swap included [default: 128MiB].
    #[arg(long)]
    pub memory: Option<ByteSize>,
    /// Processes per run [default: 64].
    #[arg(long)]
    pub pids: Option<u32>,
    /// CPUs per run [default: 1.0].
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Size of the writable /tmp of a run [default: 16MiB].
    #[arg(long)]
    pub tmpfs_size: Option<ByteSize>,
    /// The most wall time a run request (Piston's API) may ask for, per stage [default: 15s].
    #[arg(long)]
    pub max_run_timeout: Option<HumanDuration>,
    /// The most CPU time a run request may ask for, per stage [default: 15s].
    #[arg(long)]
    pub max_run_cpu_time: Option<HumanDuration>,
    /// The most memory a run request may ask for, per stage [default: 512MiB].
    #[arg(long)]
    pub max_run_memory: Option<ByteSize>,
    /// The most output a run request may ask for, per stage [default: 1048576].
    #[arg(long)]
    pub max_run_output_bytes: Option<ByteSize>,
    /// How long a client may take to send a request's head, and again its body [default: 10s].
    #[arg(long)]
    pub read_timeout: Option<HumanDuration>,
    /// Client connections open at once; more are answered 503 and closed [default: from the fd
    /// limit].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Log format [default: auto].
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// The language of requests that name none [default: the only one, or `default` when no
    /// `[languages.NAME]` table is given].
    #[arg(long)]
    pub default_language: Option<String>,
    /// `[languages.NAME]` tables, file only; without any, the flat settings are one language.
    #[arg(skip)]
    pub languages: Option<BTreeMap<String, LanguageSettings>>,
    /// A shared answer cache on Redis for a fleet: `redis://HOST:PORT[/DB]`, `rediss://...` (TLS),
    /// or `redis-cluster://HOST:PORT[,HOST:PORT...]` (a Redis Cluster by its seed nodes;
    /// `rediss-cluster://` for TLS) [default: none].
    #[arg(long, value_name = "URL")]
    pub shared_cache: Option<String>,
    /// How long an answer stays in the shared cache [default: 7d].
    #[arg(long)]
    pub shared_cache_ttl: Option<HumanDuration>,
    /// How long a lookup waits for the shared cache before the request goes on without it
    /// [default: 20ms].
    #[arg(long)]
    pub shared_cache_timeout: Option<HumanDuration>,
    /// A file with the shared cache's password (one line), or a user name and its password (two
    /// lines); credentials never go in the URL.
    #[arg(long, value_name = "FILE")]
    pub shared_cache_auth_file: Option<PathBuf>,
    /// TLS (`rediss://`): PEM certificates of the CA that signed the servers' certificates,
    /// instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub shared_cache_ca_file: Option<PathBuf>,
    /// Serve a playground page at / [default: true].
    #[arg(long, action = ArgAction::Set, value_name = "BOOL")]
    pub ui: Option<bool>,
    /// Where the Judge0 CE API is served; empty: not served [default: /judge0].
    #[arg(long)]
    pub judge0_prefix: Option<String>,
    /// Judge0: tokens a client must send in X-Auth-Token (or the query parameter of that name),
    /// space-separated; without it, none is asked for.
    #[arg(long)]
    pub judge0_auth_token: Option<String>,
    /// Judge0: tokens `POST /authorize` takes in X-Auth-User, space-separated; without it, 403.
    #[arg(long)]
    pub judge0_authz_token: Option<String>,
    /// Judge0: hosts a submission's callback_url may name; repeat for several [default: none, so
    /// callback_url is refused].
    #[arg(long)]
    pub judge0_callback_host: Option<Vec<String>>,
    /// Judge0: compiler_options words a submission may use; repeat for several [default: none].
    #[arg(long)]
    pub judge0_compiler_option: Option<Vec<String>>,
    /// Judge0: the Redis of the submission queue, a URL as for --shared-cache (same auth and CA
    /// files) [default: the --shared-cache URL; without either, an in-process queue].
    #[arg(long, value_name = "URL")]
    pub judge0_queue: Option<String>,
    /// Judge0: submissions waiting to run before new ones get 503 "queue is full" [default: 100].
    #[arg(long)]
    pub judge0_max_queue: Option<usize>,
    /// Judge0: how long a submission and its result are kept [default: 1d].
    #[arg(long)]
    pub submission_ttl: Option<HumanDuration>,
    /// Judge0 on Redis: how long a claimed submission may go without its daemon's heartbeat
    /// before another daemon takes it over [default: 60s].
    #[arg(long)]
    pub judge0_claim_after: Option<HumanDuration>,
}

impl Settings {
    /// `DEFAULTS` as settings.
    pub fn defaults() -> Settings {
        toml::from_str(DEFAULTS).expect("DEFAULTS is a valid settings file")
    }

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
            runtime,
            command,
            rootfs,
            format_command,
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
            max_run_timeout,
            max_run_cpu_time,
            max_run_memory,
            max_run_output_bytes,
            read_timeout,
            max_connections,
            log_format,
            default_language,
            languages,
            shared_cache,
            shared_cache_ttl,
            shared_cache_timeout,
            shared_cache_auth_file,
            shared_cache_ca_file,
            ui,
            judge0_prefix,
            judge0_auth_token,
            judge0_authz_token,
            judge0_callback_host,
            judge0_compiler_option,
            judge0_queue,
            judge0_max_queue,
            submission_ttl,
            judge0_claim_after
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
    /// Docker's OCI runtime; `None`: the engine's default.
    pub runtime: Option<String>,
    pub command: String,
    pub rootfs: Option<PathBuf>,
    pub format_command: Option<String>,
    pub limits: Limits,
    /// How far a run request may raise the limits.
    pub maxima: Maxima,
    pub max_program_bytes: usize,
    pub cache_entries: usize,
    pub cache_bytes: usize,
    pub allow_origin: AllowOrigin,
    pub max_concurrent_runs: usize,
    pub max_queued: usize,
    pub pool_size: usize,
    pub read_timeout: Duration,
    /// None: sized from the fd limit when the daemon starts (`fdlimit::default_max_connections`).
    pub max_connections: Option<usize>,
    pub log_format: LogFormat,
    /// As written; `languages()` resolves them against the flat settings.
    pub language_tables: BTreeMap<String, LanguageSettings>,
    pub default_language: Option<String>,
    pub shared_cache: Option<SharedSettings>,
    pub ui: bool,
    pub judge0: Judge0Config,
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
        let s = s.over(Settings::defaults());
        // Only for keys that DEFAULTS holds (a unit test proves it parses into all of them).
        macro_rules! fixed {
            ($f:ident) => {
                s.$f.clone()
                    .expect(concat!(stringify!($f), " has its default in DEFAULTS"))
            };
        }
        let mut errors = Vec::new();
        let shared_cache = shared_settings(&s, &mut errors);
        let judge0 = judge0::judge0_config(&s, shared_cache.as_ref(), &mut errors);
        let address = parse_address(&fixed!(address)).unwrap_or_else(|e| {
            errors.push(e);
            SocketAddr::from(([0, 0, 0, 0], 0))
        });
        let cpus_default = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max_concurrent_runs = s.max_concurrent_runs.unwrap_or(cpus_default);
        let limits = Limits {
            timeout: fixed!(timeout).0,
            max_output_bytes: fixed!(max_output_bytes).0 as usize,
            memory_bytes: fixed!(memory).0,
            pids: fixed!(pids),
            cpus: fixed!(cpus),
            tmpfs_bytes: fixed!(tmpfs_size).0,
        };
        let allow_origin = match fixed!(allow_origin) {
            list if list.iter().any(|o| o == "*") => AllowOrigin::Any,
            list => AllowOrigin::List(list),
        };
        let c = Config {
            address,
            shutdown: fixed!(shutdown),
            lifetime: fixed!(lifetime).0,
            halt_command: s.halt_command.filter(|c| !c.trim().is_empty()),
            drain: fixed!(drain).0,
            backend: fixed!(backend),
            image: fixed!(image),
            runtime: s.runtime,
            command: fixed!(command),
            rootfs: s.rootfs,
            format_command: s.format_command,
            limits,
            maxima: Maxima {
                wall: fixed!(max_run_timeout).0,
                cpu: fixed!(max_run_cpu_time).0,
                memory: fixed!(max_run_memory).0,
                pids: Maxima::default().pids,
                output: fixed!(max_run_output_bytes).0 as usize,
            },
            max_program_bytes: fixed!(max_program_bytes).0 as usize,
            cache_entries: fixed!(cache_entries),
            cache_bytes: fixed!(cache_bytes).0 as usize,
            allow_origin,
            max_concurrent_runs,
            max_queued: fixed!(max_queued),
            pool_size: s.pool_size.unwrap_or(max_concurrent_runs),
            read_timeout: fixed!(read_timeout).0,
            max_connections: s.max_connections,
            log_format: fixed!(log_format),
            language_tables: s.languages.unwrap_or_default(),
            default_language: s.default_language,
            shared_cache,
            ui: fixed!(ui),
            judge0,
        };
        c.check(&mut errors);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.join("\n"))
        }
    }

    fn check(&self, errors: &mut Vec<String>) {
        check_limits("", &self.limits, errors);
        for lang in self.languages() {
            let at = format!("[languages.{}] ", lang.name);
            if !self.language_tables.is_empty() {
                check_limits(&at, &lang.limits, errors);
            }
            if !valid_language_name(&lang.name) {
                errors.push(format!(
                    "{at}language names are 1 to 32 of a-z, 0-9, +, -, _ and ."
                ));
            }
            if lang.image.is_empty() || lang.command.trim().is_empty() {
                errors.push(format!("{at}image and command must not be empty"));
            }
            if lang
                .format_command
                .as_ref()
                .is_some_and(|c| c.trim().is_empty())
            {
                errors.push(format!("{at}format-command must not be empty"));
            }
            if lang.judge0_id == Some(0) {
                errors.push(format!("{at}judge0-id must be more than 0"));
            }
        }
        if self.language_tables.len() > MAX_LANGUAGES {
            errors.push(format!("at most {MAX_LANGUAGES} languages"));
        }
        let default = self.default_language();
        if !self.language_tables.is_empty() && !self.language_tables.contains_key(&default) {
            let names: Vec<&str> = self.language_tables.keys().map(String::as_str).collect();
            errors.push(format!(
                "default-language {default:?} is none of the languages ({}){}",
                names.join(", "),
                if self.default_language.is_none() {
                    "; with several languages, name the default one"
                } else {
                    ""
                }
            ));
        }
        let mut need = |ok: bool, msg: &str| {
            if !ok {
                errors.push(msg.to_string());
            }
        };
        need(
            !self.maxima.wall.is_zero()
                && !self.maxima.cpu.is_zero()
                && self.maxima.memory > 0
                && self.maxima.output > 0,
            "max-run-timeout, max-run-cpu-time, max-run-memory and max-run-output-bytes must be more than 0",
        );
        need(
            self.max_program_bytes > 0,
            "max-program-bytes must be more than 0",
        );
        need(
            self.max_concurrent_runs > 0,
            "max-concurrent-runs must be at least 1",
        );
        need(
            !self.read_timeout.is_zero(),
            "read-timeout must be more than 0",
        );
        need(
            self.max_connections != Some(0),
            "max-connections must be at least 1",
        );
        need(!self.image.is_empty(), "image must not be empty");
        need(
            self.runtime.as_deref().is_none_or(valid_runtime_name),
            "runtime must be the name of one of the engine's runtimes (letters, digits, . _ -)",
        );
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

/// A name the engine could list: its runtimes are daemon.json keys, never empty nor a path.
fn valid_runtime_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The checks of one set of limits; `at` names the table they come from.
pub(super) fn check_limits(at: &str, l: &Limits, errors: &mut Vec<String>) {
    let mut need = |ok: bool, msg: &str| {
        if !ok {
            errors.push(format!("{at}{msg}"));
        }
    };
    need(!l.timeout.is_zero(), "timeout must be more than 0");
    need(
        l.max_output_bytes > 0,
        "max-output-bytes must be more than 0",
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DEFAULTS`, key by key, each value as people write it ("3500ms", 64, *).
    fn defaults_as_written() -> Vec<(String, String)> {
        let table: toml::Table = toml::from_str(DEFAULTS).unwrap();
        table.into_iter().map(|(k, v)| (k, plain(&v))).collect()
    }

    fn plain(v: &toml::Value) -> String {
        match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Array(a) => a.iter().map(plain).collect::<Vec<_>>().join(","),
            other => other.to_string(),
        }
    }

    fn repo_file(name: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
    }

    #[test]
    fn defaults_fill_every_fixed_setting() {
        let d = Settings::defaults();
        let filled = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(filled.limits.timeout, d.timeout.unwrap().0);
        assert_eq!(filled.read_timeout, d.read_timeout.unwrap().0);
        // The sandbox's own defaults (it does not read the config) are the ones written here.
        assert_eq!(filled.limits, Limits::default());
    }

    #[test]
    fn flag_help_states_each_default() {
        use clap::{Args as _, Command};
        let cmd = Settings::augment_args(Command::new("compilerd"));
        for (key, value) in defaults_as_written() {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .unwrap_or_else(|| panic!("no flag --{key}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.contains(&format!("[default: {value}]")),
                "--{key}'s help does not say [default: {value}]: {help}"
            );
        }
    }

    /// The shipped file shows every default (commented out); a key it sets must be a default too,
    /// unless it is one the package deliberately sets otherwise.
    #[test]
    fn shipped_config_shows_the_defaults() {
        let shipped = repo_file("packaging/config.toml");
        // What comes after the first language table's example is about tables, not the flat keys.
        let flat = shipped.split("[languages").next().unwrap();
        // A fleet names its backend, so that no machine changes backend because an engine was down at
        // boot.
        let deliberate = ["backend", "ui"];
        for (key, value) in defaults_as_written() {
            let line = flat
                .lines()
                .find(|l| {
                    l.trim_start_matches('#')
                        .strip_prefix(key.as_str())
                        .is_some_and(|r| r.starts_with(" ="))
                })
                .unwrap_or_else(|| panic!("packaging/config.toml does not show {key}"));
            let written = line.trim_start_matches('#');
            let parsed: toml::Table = toml::from_str(written).unwrap();
            let shown = plain(&parsed[key.as_str()]);
            if line.starts_with('#') || !deliberate.contains(&key.as_str()) {
                assert_eq!(shown, value, "packaging/config.toml: {line}");
            }
        }
    }

    #[test]
    fn readme_settings_table_states_the_defaults() {
        let readme = repo_file("README.md");
        for (key, value) in defaults_as_written() {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{key}` |")))
                .unwrap_or_else(|| panic!("README's settings table has no row for --{key}"));
            let cell = row.split('|').nth(2).unwrap().trim();
            assert_eq!(cell, format!("`{value}`"), "README: {row}");
        }
    }

    #[test]
    fn defaults_match_the_go_server() {
        let c = Config::default();
        assert_eq!(c.address.port(), 8181);
        assert!(
            !c.shutdown,
            "a daemon started by hand never halts anything by surprise"
        );
        assert_eq!(c.backend, Backend::Auto);
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
    fn language_tables_inherit_the_flat_settings() {
        let file: Settings = toml::from_str(
            "memory = \"64MiB\"\ndefault-language = \"go\"\n\
             [languages.go]\nmemory = \"512MiB\"\nformat-command = \"/usr/lib/compilerd/fmt\"\n\
             [languages.sh]\nimage = \"compilerd-test\"\n",
        )
        .unwrap();
        let c = Config::from_settings(file).unwrap();
        let langs = c.languages();
        assert_eq!(langs.len(), 2);
        assert_eq!(
            (langs[0].name.as_str(), langs[0].limits.memory_bytes),
            ("go", 512 << 20)
        );
        assert_eq!(langs[0].image, "compilerd-go");
        assert_eq!(langs[1].limits.memory_bytes, 64 << 20);
        assert_eq!(langs[1].image, "compilerd-test");
        assert_eq!(c.default_language(), "go");

        let flat = Config::default();
        assert_eq!(flat.languages()[0].name, FLAT_LANGUAGE);
        assert_eq!(flat.languages()[0].image, "playground");
    }

    #[test]
    fn every_language_table_is_checked() {
        let bad = |toml: &str| Config::from_settings(toml::from_str(toml).unwrap()).unwrap_err();
        let e = bad("[languages.go]\npids = 0\n[languages.c]\ntimeout = \"0s\"\n");
        assert!(
            e.contains("[languages.go] pids") && e.contains("[languages.c] timeout"),
            "{e}"
        );
        assert!(e.contains("name the default one"), "{e}");
        let e = bad("default-language = \"rust\"\n[languages.go]\n");
        assert!(e.contains("\"rust\" is none of the languages (go)"), "{e}");
        let e = bad("[languages.\"Go Lang\"]\n");
        assert!(e.contains("language names"), "{e}");
        assert!(toml::from_str::<Settings>("[languages.go]\nimgae = \"x\"\n").is_err());
    }

    #[test]
    fn shared_cache_settings() {
        assert!(Config::default().shared_cache.is_none());
        let file: Settings = toml::from_str(
            "shared-cache = \"redis-cluster://127.0.0.1:7000,127.0.0.1:7001\"\nshared-cache-ttl = \"1d\"",
        )
        .unwrap();
        let c = Config::from_settings(file).unwrap();
        let shared = c.shared_cache.unwrap();
        assert_eq!(shared.ttl, Duration::from_secs(86400));
        assert_eq!(shared.budget, Duration::from_millis(20));
        let bad = Settings {
            shared_cache: Some("redis://:pw@127.0.0.1:6379".into()),
            ..Settings::default()
        };
        assert!(
            Config::from_settings(bad)
                .unwrap_err()
                .contains("auth-file")
        );
        let missing = Settings {
            shared_cache: Some("redis://127.0.0.1:6379".into()),
            shared_cache_auth_file: Some("/nonexistent/auth".into()),
            ..Settings::default()
        };
        assert!(
            Config::from_settings(missing)
                .unwrap_err()
                .contains("/nonexistent/auth")
        );
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

    #[test]
    fn runtime_is_a_name_the_engine_could_list() {
        let with = |name: &str| {
            let file: Settings = toml::from_str(&format!("runtime = {name:?}")).unwrap();
            Config::from_settings(file).map(|c| c.runtime)
        };
        assert_eq!(with("runsc"), Ok(Some("runsc".to_owned())));
        assert_eq!(
            with("io.containerd.runc.v2"),
            Ok(Some("io.containerd.runc.v2".into()))
        );
        for bad in ["", "/usr/bin/runsc", "runsc --network=none"] {
            assert!(with(bad).unwrap_err().contains("runtime"), "{bad:?}");
        }
        assert_eq!(Config::default().runtime, None);
    }
}
