//! `[languages.NAME]` tables: several languages per daemon, each resolved against the flat
//! settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ByteSize, Config, HumanDuration};
use crate::run::Maxima;
use crate::sandbox::Limits;

/// One `[languages.NAME]` table: its sandbox and, optionally, its own limits; what it leaves out
/// comes from the flat settings.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LanguageSettings {
    /// Docker image [default: compilerd-NAME, as scripts/build-image.sh NAME builds it].
    pub image: Option<String>,
    /// bwrap root [default: /var/lib/compilerd/rootfs/NAME].
    pub rootfs: Option<PathBuf>,
    /// bwrap: the run command [default: /usr/lib/compilerd/run].
    pub command: Option<String>,
    /// The formatter (program on stdin, formatted program on stdout), run in the same image or
    /// rootfs; without it the language cannot format.
    pub format_command: Option<String>,
    /// Run requests (Piston's API): the main file's name [default: the image's
    /// compilerd.main label, as scripts/build-image.sh sets it].
    pub main_file: Option<String>,
    /// Run requests: the compile stage's command, run in /tmp beside the files [default: the
    /// image's compilerd.compile label; none: no compile stage].
    pub compile_command: Option<String>,
    /// Run requests: what the compile stage leaves for the run stage, space-separated paths
    /// [default: the image's compilerd.keep label].
    pub compile_keep: Option<String>,
    /// Run requests: the run stage's command; the request's arguments follow it [default: the
    /// image's compilerd.run label; none: the language takes no run requests].
    pub run_command: Option<String>,
    pub timeout: Option<HumanDuration>,
    pub memory: Option<ByteSize>,
    pub pids: Option<u32>,
    pub cpus: Option<f64>,
    pub tmpfs_size: Option<ByteSize>,
    pub max_output_bytes: Option<ByteSize>,
    pub pool_size: Option<usize>,
    /// Judge0: the language's id [default: Judge0 CE 1.13.1's id for the language's name]. 89
    /// makes it Judge0's multi-file language, whose programs are a zip's `compile` (optional)
    /// and `run` scripts, run by /bin/sh in this language's image or rootfs.
    pub judge0_id: Option<u32>,
}

/// One language as the daemon runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct LanguageConfig {
    pub name: String,
    pub image: String,
    pub rootfs: Option<PathBuf>,
    pub command: String,
    pub format_command: Option<String>,
    /// main-file, compile-command, compile-keep, run-command as configured (the image's labels
    /// fill what is left out).
    pub stages: [Option<String>; 4],
    pub limits: Limits,
    /// How far a run request may raise `limits` (the flat settings').
    pub maxima: Maxima,
    pub pool_size: usize,
    /// Judge0's id when the table sets one.
    pub judge0_id: Option<u32>,
    /// Docker's OCI runtime, the flat setting's for every language; `None`: the engine's default.
    pub runtime: Option<String>,
}

/// The most languages one daemon serves: each is a label value of the run metrics.
pub const MAX_LANGUAGES: usize = 32;

/// The language name of a configuration without `[languages.NAME]` tables.
pub const FLAT_LANGUAGE: &str = "default";

pub(super) fn valid_language_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-_.".contains(&b))
}

impl Config {
    /// Every language, in name order, with the flat settings filling what a table leaves out;
    /// without tables, the flat settings are the one language `default`.
    pub fn languages(&self) -> Vec<LanguageConfig> {
        if self.language_tables.is_empty() {
            return vec![LanguageConfig {
                name: self
                    .default_language
                    .clone()
                    .unwrap_or_else(|| FLAT_LANGUAGE.to_owned()),
                image: self.image.clone(),
                rootfs: self.rootfs.clone(),
                command: self.command.clone(),
                format_command: self.format_command.clone(),
                stages: Default::default(),
                limits: self.limits.clone(),
                maxima: self.maxima,
                pool_size: self.pool_size,
                judge0_id: None,
                runtime: self.runtime.clone(),
            }];
        }
        self.language_tables
            .iter()
            .map(|(name, t)| {
                let g = &self.limits;
                LanguageConfig {
                    name: name.clone(),
                    image: t
                        .image
                        .clone()
                        .unwrap_or_else(|| format!("compilerd-{name}")),
                    rootfs: Some(t.rootfs.clone().unwrap_or_else(|| {
                        PathBuf::from(format!("/var/lib/compilerd/rootfs/{name}"))
                    })),
                    command: t
                        .command
                        .clone()
                        .unwrap_or_else(|| "/usr/lib/compilerd/run".to_owned()),
                    format_command: t.format_command.clone(),
                    stages: [
                        t.main_file.clone(),
                        t.compile_command.clone(),
                        t.compile_keep.clone(),
                        t.run_command.clone(),
                    ],
                    limits: Limits {
                        timeout: t.timeout.map_or(g.timeout, |d| d.0),
                        max_output_bytes: t
                            .max_output_bytes
                            .map_or(g.max_output_bytes, |b| b.0 as usize),
                        memory_bytes: t.memory.map_or(g.memory_bytes, |b| b.0),
                        pids: t.pids.unwrap_or(g.pids),
                        cpus: t.cpus.unwrap_or(g.cpus),
                        tmpfs_bytes: t.tmpfs_size.map_or(g.tmpfs_bytes, |b| b.0),
                    },
                    maxima: self.maxima,
                    pool_size: t.pool_size.unwrap_or(self.pool_size),
                    judge0_id: t.judge0_id,
                    runtime: self.runtime.clone(),
                }
            })
            .collect()
    }

    /// The name of the language of requests that name none.
    pub fn default_language(&self) -> String {
        match (&self.default_language, self.language_tables.keys().next()) {
            (Some(name), _) => name.clone(),
            (None, Some(first)) if self.language_tables.len() == 1 => first.clone(),
            _ => FLAT_LANGUAGE.to_owned(),
        }
    }
}
