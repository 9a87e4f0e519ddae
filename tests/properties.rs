//! Property tests against the public API: settings parsing (sizes, durations, TOML files,
//! flags over file, validation) and the answer cache's accounting (entries and bytes always within
//! their budgets and equal to what is stored, under any sequence of inserts, replacements and
//! lookups, checked against a model LRU).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use compilerd::cache::{Cache, ENTRY_OVERHEAD, Key, Stored};
use compilerd::config::{ByteSize, Config, HumanDuration, Settings};
use compilerd::hooks::Hooks;
use proptest::prelude::*;

const UNITS: [(&str, u64); 10] = [
    ("", 1),
    ("B", 1),
    ("K", 1 << 10),
    ("KB", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("GB", 1 << 30),
    ("GiB", 1 << 30),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A number with any known unit parses to number × unit, or to an error when that overflows.
    #[test]
    fn sizes_parse_to_number_times_unit(n in any::<u64>(), unit in 0..UNITS.len(), space in any::<bool>()) {
        let (name, mult) = UNITS[unit];
        let text = format!("{n}{}{name}", if space && !name.is_empty() { " " } else { "" });
        match (text.parse::<ByteSize>(), n.checked_mul(mult)) {
            (Ok(b), Some(want)) => prop_assert_eq!(b.0, want),
            (Err(e), None) => prop_assert!(e.contains("too large"), "{}", e),
            (got, want) => prop_assert!(false, "{:?} -> {:?}, want {:?}", text, got, want),
        }
    }

    /// Any text at all: a size or an error, never a panic.
    #[test]
    fn any_text_is_a_size_or_an_error(text in ".{0,40}") {
        let _ = text.parse::<ByteSize>();
        let _ = text.parse::<HumanDuration>();
    }

    #[test]
    fn durations_in_ms_s_m_parse_exactly(n in 0u64..1_000_000, unit in 0usize..3) {
        let (suffix, want) = [
            ("ms", Duration::from_millis(n)),
            ("s", Duration::from_secs(n)),
            ("m", Duration::from_secs(n * 60)),
        ][unit];
        prop_assert_eq!(format!("{n}{suffix}").parse::<HumanDuration>().unwrap().0, want);
    }

    /// Any TOML-ish text: settings or an error naming the problem, never a panic; a file that
    /// parses validates to a config or to errors, never a panic.
    #[test]
    fn any_config_file_is_settings_or_an_error(
        lines in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "timeout", "memory", "pids", "cpus", "max-queued", "cache-bytes",
                    "max-connections", "read-timeout", "backend", "tiemout", "address",
                    "allow-origin", "shutdown", "tmpfs-size",
                ]),
                prop::sample::select(vec![
                    "\"1s\"", "\"0s\"", "0", "1", "-1", "2.5", "\"64MiB\"", "\"12 parsecs\"",
                    "true", "\"bwrap\"", "\"docker\"", "[\"*\"]", "[\"\"]", "\":0\"",
                    "18446744073709551615", "\"\"", "nan",
                ]),
            ),
            0..8,
        )
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if let Ok(settings) = toml::from_str::<Settings>(&text) {
            match Config::from_settings(settings) {
                Ok(c) => {
                    prop_assert!(!c.limits.timeout.is_zero());
                    prop_assert!(c.limits.pids >= 2);
                    prop_assert!(c.limits.cpus > 0.0);
                    prop_assert!(c.max_connections != Some(0));
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }
    }

    /// Flags win over the file key by key; a key set in neither takes the default.
    #[test]
    fn flags_win_over_the_file(
        flag_pids in prop::option::of(2u32..1000),
        file_pids in prop::option::of(2u32..1000),
        flag_queued in prop::option::of(0usize..1000),
        file_queued in prop::option::of(0usize..1000),
        flag_conns in prop::option::of(1usize..100_000),
        file_conns in prop::option::of(1usize..100_000),
    ) {
        let flags = Settings { pids: flag_pids, max_queued: flag_queued, max_connections: flag_conns, ..Settings::default() };
        let file = Settings { pids: file_pids, max_queued: file_queued, max_connections: file_conns, ..Settings::default() };
        let c = Config::from_settings(flags.over(file)).unwrap();
        prop_assert_eq!(c.limits.pids, flag_pids.or(file_pids).unwrap_or(64));
        prop_assert_eq!(c.max_queued, flag_queued.or(file_queued).unwrap_or(64));
        prop_assert_eq!(c.max_connections, flag_conns.or(file_conns));
    }

    /// Every invalid value is reported, all in one error.
    #[test]
    fn every_bad_value_is_named(bad_pids in any::<bool>(), bad_cpus in any::<bool>(), bad_conns in any::<bool>()) {
        let s = Settings {
            pids: Some(if bad_pids { 1 } else { 8 }),
            cpus: Some(if bad_cpus { 0.0 } else { 1.0 }),
            max_connections: Some(if bad_conns { 0 } else { 10 }),
            ..Settings::default()
        };
        match Config::from_settings(s) {
            Ok(_) => prop_assert!(!bad_pids && !bad_cpus && !bad_conns),
            Err(e) => {
                prop_assert_eq!(e.contains("pids"), bad_pids, "{}", e);
                prop_assert_eq!(e.contains("cpus"), bad_cpus, "{}", e);
                prop_assert_eq!(e.contains("max-connections"), bad_conns, "{}", e);
            }
        }
    }
}

/// What the cache reported through its hooks.
#[derive(Default)]
struct Reported {
    size: Mutex<Option<(usize, usize)>>,
    evicted: Mutex<u64>,
}

impl Hooks for Reported {
    fn cache_size(&self, entries: usize, bytes: usize) {
        *self.size.lock().unwrap() = Some((entries, bytes));
    }
    fn cache_evicted(&self, n: u64) {
        *self.evicted.lock().unwrap() += n;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert { key: u8, len: usize },
    Get { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..24, 0usize..2048).prop_map(|(key, len)| Op::Insert { key, len }),
        1 => (0u8..24).prop_map(|key| Op::Get { key }),
    ]
}

fn key(k: u8) -> Key {
    [k; 20]
}

fn cost(len: usize) -> usize {
    len + ENTRY_OVERHEAD
}

/// The cache as specified: most recent last; an insert replaces, then evicts least recent first
/// until both budgets hold; an entry larger than the byte budget (or any, with no entries allowed)
/// is not stored.
struct Model {
    lru: VecDeque<(u8, usize)>,
    max_entries: usize,
    max_bytes: usize,
}

impl Model {
    fn bytes(&self) -> usize {
        self.lru.iter().map(|&(_, len)| cost(len)).sum()
    }

    fn touch(&mut self, k: u8) -> Option<usize> {
        let i = self.lru.iter().position(|&(key, _)| key == k)?;
        let e = self.lru.remove(i).unwrap();
        self.lru.push_back(e);
        Some(e.1)
    }

    /// Returns how many entries were evicted.
    fn insert(&mut self, k: u8, len: usize) -> u64 {
        if self.max_entries == 0 || cost(len) > self.max_bytes {
            return 0;
        }
        if let Some(i) = self.lru.iter().position(|&(key, _)| key == k) {
            self.lru.remove(i);
        }
        self.lru.push_back((k, len));
        let mut evicted = 0;
        while self.lru.len() > self.max_entries || self.bytes() > self.max_bytes {
            self.lru.pop_front();
            evicted += 1;
        }
        evicted
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cache_accounting_stays_within_bounds_and_matches_a_model(
        max_entries in 0usize..12,
        max_bytes in 0usize..(8 * (2048 + ENTRY_OVERHEAD)),
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let hooks = Arc::new(Reported::default());
        let cache = Cache::new(max_entries, max_bytes, None, hooks.clone());
        let mut model = Model { lru: VecDeque::new(), max_entries, max_bytes };
        let mut evicted = 0u64;
        for op in ops {
            match op {
                Op::Insert { key: k, len } => {
                    cache.insert(key(k), Stored { status: 200, body: Bytes::from(vec![k; len]), playground: Bytes::new() });
                    evicted += model.insert(k, len);
                }
                Op::Get { key: k } => {
                    let got = cache.get(&key(k)).map(|s| s.body.len());
                    prop_assert_eq!(got, model.touch(k), "lookup of {}", k);
                }
            }
            let (entries, bytes) = cache.size();
            prop_assert!(entries <= max_entries && bytes <= max_bytes, "{} entries, {} bytes", entries, bytes);
            prop_assert_eq!((entries, bytes), (model.lru.len(), model.bytes()));
            if let Some(reported) = *hooks.size.lock().unwrap() {
                prop_assert_eq!(reported, (entries, bytes), "the size hook is stale");
            }
            prop_assert_eq!(*hooks.evicted.lock().unwrap(), evicted);
        }
        // Every stored body is the one inserted last under its key.
        for &(k, len) in model.lru.clone().iter() {
            let body = cache.get(&key(k)).unwrap().body;
            prop_assert_eq!(body, Bytes::from(vec![k; len]));
        }
    }
}
