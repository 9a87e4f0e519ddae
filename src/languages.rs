//! The languages one daemon serves: each has its own sandbox (its own Docker pool), its own
//! fingerprint in the cache key and its own `language` label on the run metrics; all share one
//! cache and one admission (`compile::SharedState`), so the daemon's memory and run slots are
//! bounded once however many languages it has. The HTTP routes and the WebSocket transport pick a
//! language through `Languages::get`.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::backend::{self, Choice};
use crate::compile::{self, CompileService, Options, SharedState};
use crate::config::{Backend, Config, LanguageConfig};
use crate::format;
use crate::hooks::Hooks;
use crate::run::{Maxima, Stages};
use crate::sandbox::bwrap::{BwrapOptions, BwrapSandbox};
use crate::sandbox::docker::{DockerOptions, DockerSandbox};
use crate::sandbox::{Limits, Sandbox, SandboxError};

/// Where scripts/build-image.sh records a sandbox's language and toolchain version, in the
/// rootfs; the Docker image carries the same as labels.
const VERSION_FILE: &str = "etc/compilerd-language";
const VERSION_LABEL: &str = "compilerd.version";

/// A formatter's pool: formatting is rare next to runs, one waiting container is enough.
const FORMAT_POOL_SIZE: usize = 1;

/// One language's opened sandboxes, before the services are built on them.
pub struct OpenLanguage {
    pub config: LanguageConfig,
    /// The toolchain's version as the image or rootfs records it; empty when it does not.
    pub version: String,
    /// How the language runs run requests; `None`: it takes none.
    pub stages: Option<Stages>,
    pub run: Arc<dyn Sandbox>,
    pub format: Option<Arc<dyn Sandbox>>,
}

/// What `open` made: the backend it chose and each language's sandboxes.
pub struct Opened {
    pub backend: Choice,
    pub languages: Vec<OpenLanguage>,
}

/// Chooses the backend (`backend::choose`) and opens every configured language's sandboxes on it,
/// with that backend's startup checks. Under `auto`, a bubblewrap that cannot work either gets
/// the one refusal that names both ways out.
pub async fn open(config: &Config, hooks: Arc<dyn Hooks>) -> Result<Opened, String> {
    let choice = backend::choose(config).await;
    tracing::info!(backend = %choice.backend, reason = %choice.reason, "sandbox backend");
    match open_on(config, choice.backend, hooks).await {
        Ok(languages) => Ok(Opened {
            backend: choice,
            languages,
        }),
        Err(e) if choice.automatic => Err(choice.refusal(&e)),
        Err(e) => Err(e),
    }
}

async fn open_on(
    config: &Config,
    backend: Backend,
    hooks: Arc<dyn Hooks>,
) -> Result<Vec<OpenLanguage>, String> {
    let mut opened = Vec::new();
    for lang in config.languages() {
        let fail = |what: &str, e: SandboxError| {
            format!(
                "language {}: {what} sandbox ({backend} backend) is not usable: {e}",
                lang.name
            )
        };
        let run = open_one(backend, &lang, None, hooks.clone())
            .await
            .map_err(|e| fail("run", e))?;
        let run = crate::faketime::wrap(run, backend, &lang).await;
        let format = match &lang.format_command {
            Some(cmd) => Some(
                open_one(backend, &lang, Some(cmd), hooks.clone())
                    .await
                    .map_err(|e| fail("format", e))?,
            ),
            None => None,
        };
        let version = version(backend, &lang).await;
        let stages = stages(backend, &lang).await;
        opened.push(OpenLanguage {
            config: lang,
            version,
            stages,
            run,
            format,
        });
    }
    Ok(opened)
}

/// The run sandbox of `lang`, or with `format_command` its formatter's, in the same image or
/// rootfs under the same isolation.
async fn open_one(
    backend: Backend,
    lang: &LanguageConfig,
    format_command: Option<&str>,
    hooks: Arc<dyn Hooks>,
) -> Result<Arc<dyn Sandbox>, SandboxError> {
    Ok(match backend {
        Backend::Auto => unreachable!("backend::choose resolves auto"),
        Backend::Docker => {
            let mut opts = DockerOptions::new(lang.image.clone(), lang.pool_size);
            opts.runtime = lang.runtime.clone();
            if let Some(cmd) = format_command {
                opts.command = Some(cmd.split_whitespace().map(str::to_owned).collect());
                opts.pool_size = lang.pool_size.min(FORMAT_POOL_SIZE);
            }
            Arc::new(DockerSandbox::connect(opts, lang.limits.clone(), hooks).await?)
        }
        Backend::Bwrap => {
            let opts = BwrapOptions {
                command: format_command.unwrap_or(&lang.command).to_owned(),
                rootfs: lang.rootfs.clone(),
                pool_size: match format_command {
                    Some(_) => lang.pool_size.min(FORMAT_POOL_SIZE),
                    None => lang.pool_size,
                },
            };
            Arc::new(BwrapSandbox::connect(opts, lang.limits.clone(), hooks).await?)
        }
    })
}

async fn version(backend: Backend, lang: &LanguageConfig) -> String {
    match backend {
        Backend::Auto => String::new(),
        Backend::Bwrap => lang
            .rootfs
            .as_deref()
            .and_then(|root| std::fs::read_to_string(root.join(VERSION_FILE)).ok())
            .and_then(|text| field(&text, "version"))
            .unwrap_or_default(),
        Backend::Docker => image_label(&lang.image, VERSION_LABEL)
            .await
            .unwrap_or_default(),
    }
}

/// The language's stages: the configured keys, else what the image or rootfs records.
async fn stages(backend: Backend, lang: &LanguageConfig) -> Option<Stages> {
    const KEYS: [&str; 4] = ["main", "compile", "keep", "run"];
    let recorded: Vec<Option<String>> = match backend {
        Backend::Auto => vec![None; KEYS.len()],
        Backend::Bwrap => {
            let text = lang
                .rootfs
                .as_deref()
                .and_then(|root| std::fs::read_to_string(root.join(VERSION_FILE)).ok())
                .unwrap_or_default();
            KEYS.iter().map(|k| field(&text, k)).collect()
        }
        Backend::Docker => {
            let mut out = Vec::new();
            for k in KEYS {
                out.push(image_label(&lang.image, &format!("compilerd.{k}")).await);
            }
            out
        }
    };
    let pick = |i: usize| {
        lang.stages[i]
            .clone()
            .or_else(|| recorded[i].clone())
            .filter(|v| !v.trim().is_empty())
    };
    let words = |v: String| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    Some(Stages {
        run: words(pick(3)?),
        main_file: pick(0).unwrap_or_else(|| "main".to_owned()),
        compile: pick(1).map(words),
        keep: pick(2).map(words).unwrap_or_default(),
    })
}

/// `key=value` lines.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

async fn image_label(image: &str, label: &str) -> Option<String> {
    let docker = backend::docker_client().ok()?;
    let info = docker.inspect_image(image).await.ok()?;
    info.config?.labels?.remove(label)
}

/// The digits of a toolchain's version as the image or rootfs records it (`python 3.11.2` →
/// `3.11.2`); `None` when it has none. Each API says "unknown" in its own way.
pub fn version_digits(version: &str) -> Option<String> {
    let last = version.split_whitespace().last().unwrap_or("");
    let v: String = last
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// One language as the routes see it.
pub struct Language {
    pub name: String,
    pub version: String,
    pub pool_size: usize,
    pub stages: Option<Stages>,
    /// Judge0's id when the configuration sets one.
    pub judge0_id: Option<u32>,
    /// How far a run request may raise the language's limits.
    pub maxima: Maxima,
    pub compile: Arc<CompileService>,
    /// `None`: the language has no formatter.
    pub format: Option<Arc<CompileService>>,
}

impl Language {
    pub fn limits(&self) -> &Limits {
        self.compile.limits()
    }
}

pub struct Languages {
    list: Vec<Arc<Language>>,
    default: usize,
    /// `GET /languages`, rendered once.
    listing: Bytes,
    backend: Choice,
}

#[derive(Serialize)]
struct Listed<'a> {
    name: &'a str,
    version: &'a str,
    /// The backend its sandboxes run on, and why that one (`backend::Choice`).
    backend: &'a str,
    backend_reason: &'a str,
    default: bool,
    format: bool,
    limits: ListedLimits,
    /// What programs may import besides the standard library, when the image declares it.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    modules: &'a [String],
}

#[derive(Serialize)]
struct ListedLimits {
    timeout_ms: u128,
    memory_bytes: u64,
    pids: u32,
    cpus: f64,
    tmpfs_bytes: u64,
    max_output_bytes: usize,
    pool_size: usize,
}

impl Languages {
    /// Builds each language's services on `shared`; `default` must name one of them (the
    /// config's validation makes sure of that).
    pub fn new(
        opened: Vec<OpenLanguage>,
        backend: Choice,
        default: &str,
        opts: &Options,
        shared: &SharedState,
        hooks: Arc<dyn Hooks>,
    ) -> Languages {
        let service = |sandbox: Arc<dyn Sandbox>, name: &str, limits: &Limits, render| {
            let opts = Options {
                limits: limits.clone(),
                ..opts.clone()
            };
            CompileService::with_shared(sandbox, opts, shared, name, render, hooks.clone())
        };
        let list: Vec<Arc<Language>> = opened
            .into_iter()
            .map(|o| {
                let name = o.config.name.clone();
                let limits = &o.config.limits;
                Arc::new(Language {
                    compile: {
                        let render = crate::goplay::render_for(o.run.as_ref());
                        service(o.run, &name, limits, render)
                    },
                    format: o.format.map(|f| {
                        // Its own cache fingerprint (a formatter's answer to a program is not
                        // its run's); the same metric label as the language's runs.
                        service(f, &name, limits, format::render as compile::Render)
                    }),
                    name,
                    version: o.version,
                    pool_size: o.config.pool_size,
                    stages: o.stages,
                    judge0_id: o.config.judge0_id,
                    maxima: o.config.maxima,
                })
            })
            .collect();
        let default = list.iter().position(|l| l.name == default).unwrap_or(0);
        let listed: Vec<Listed<'_>> = list
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let limits = l.limits();
                Listed {
                    name: &l.name,
                    version: &l.version,
                    backend: l.compile.sandbox().name(),
                    backend_reason: &backend.reason,
                    default: i == default,
                    format: l.format.is_some(),
                    modules: l.compile.sandbox().modules(),
                    limits: ListedLimits {
                        timeout_ms: limits.timeout.as_millis(),
                        memory_bytes: limits.memory_bytes,
                        pids: limits.pids,
                        cpus: limits.cpus,
                        tmpfs_bytes: limits.tmpfs_bytes,
                        max_output_bytes: limits.max_output_bytes,
                        pool_size: l.pool_size,
                    },
                }
            })
            .collect();
        let listing = Bytes::from(serde_json::to_vec(&listed).expect("listing serializes"));
        Languages {
            list,
            default,
            listing,
            backend,
        }
    }

    /// The language called `name`, or the default one for `None`; an unknown name is an error
    /// message that lists the languages, for a client to read.
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<Language>, String> {
        match name {
            None | Some("") => Ok(&self.list[self.default]),
            Some(name) => self.list.iter().find(|l| l.name == name).ok_or_else(|| {
                let names: Vec<&str> = self.list.iter().map(|l| l.name.as_str()).collect();
                format!(
                    "Unknown language {name:?}; this server runs: {}.",
                    names.join(", ")
                )
            }),
        }
    }

    pub fn default_language(&self) -> &Arc<Language> {
        &self.list[self.default]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Language>> {
        self.list.iter()
    }

    /// The backend the sandboxes run on, and why.
    pub fn backend(&self) -> &Choice {
        &self.backend
    }

    /// `GET /languages`'s JSON body.
    pub fn listing(&self) -> Bytes {
        self.listing.clone()
    }

    /// Every service of every language, runs and formatters.
    pub fn services(&self) -> impl Iterator<Item = &Arc<CompileService>> {
        self.list
            .iter()
            .flat_map(|l| std::iter::once(&l.compile).chain(l.format.as_ref()))
    }

    /// Resolves once no run of any language is in flight, for the drain.
    pub async fn wait_idle(&self) {
        for s in self.services() {
            s.wait_idle().await;
        }
    }

    /// Removes every language's sandboxes; after the last run.
    pub async fn shutdown(&self) {
        for s in self.services() {
            s.sandbox().shutdown().await;
        }
    }

    /// `pool 2/2` for one language, `go pool 2/2, c pool 1/2` for several.
    pub fn status(&self) -> String {
        if self.list.len() == 1 {
            return self.list[0].compile.sandbox().status();
        }
        let parts: Vec<String> = self
            .list
            .iter()
            .map(|l| format!("{} {}", l.name, l.compile.sandbox().status()))
            .collect();
        parts.join(", ")
    }
}

/// The version a rootfs records, for tests and tools.
pub fn rootfs_version(root: &Path) -> Option<String> {
    field(
        &std::fs::read_to_string(root.join(VERSION_FILE)).ok()?,
        "version",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_key_value_lines() {
        let text = "language=go\nversion=go 1.19.8\nstamp=abc\n";
        assert_eq!(field(text, "version").as_deref(), Some("go 1.19.8"));
        assert_eq!(field(text, "missing"), None);
    }
}
