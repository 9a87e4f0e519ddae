//! The `judge0-*` settings: the Judge0 CE API's prefix, its optional tokens, its allow-lists and
//! its submission queue (in-process, or a Redis stream shared by a fleet).

use std::time::Duration;

use super::Settings;
use crate::cache::SharedSettings;
use crate::cache::shared::target::{self, read_auth_file};

#[derive(Clone, Debug)]
pub struct Judge0Config {
    /// `/judge0`; `None`: the API is not served.
    pub prefix: Option<String>,
    pub auth_tokens: Vec<String>,
    pub authz_tokens: Vec<String>,
    pub callback_hosts: Vec<String>,
    pub compiler_options: Vec<String>,
    /// The queue's Redis; `None`: an in-process queue that dies with the process.
    pub queue: Option<SharedSettings>,
    pub max_queue: usize,
    pub ttl: Duration,
    pub claim_after: Duration,
}

fn words(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

pub(super) fn judge0_config(
    s: &Settings,
    shared: Option<&SharedSettings>,
    errors: &mut Vec<String>,
) -> Judge0Config {
    let prefix = s
        .judge0_prefix
        .as_deref()
        .map(|p| p.trim().trim_end_matches('/'))
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    if let Some(p) = &prefix
        && (!p.starts_with('/') || p.contains(['?', '#', ' ']))
    {
        errors.push(format!(
            "judge0-prefix {p:?} must be a path such as /judge0"
        ));
    }
    let ttl = s
        .submission_ttl
        .expect("submission-ttl has its default in DEFAULTS")
        .0;
    let claim_after = s
        .judge0_claim_after
        .expect("judge0-claim-after has its default in DEFAULTS")
        .0;
    if ttl < Duration::from_secs(1) {
        errors.push("submission-ttl must be at least 1s".into());
    }
    if claim_after < Duration::from_secs(1) {
        errors.push("judge0-claim-after must be at least 1s".into());
    }
    let max_queue = s
        .judge0_max_queue
        .expect("judge0-max-queue has its default in DEFAULTS");
    if max_queue == 0 {
        errors.push("judge0-max-queue must be at least 1".into());
    }
    let queue = match s.judge0_queue.as_deref().map(str::trim) {
        Some("") | None => shared.cloned(),
        Some(url) => {
            let auth = match s.shared_cache_auth_file.as_deref().map(read_auth_file) {
                Some(Err(e)) => {
                    errors.push(e);
                    None
                }
                Some(Ok(a)) => Some(a),
                None => None,
            };
            match target::parse(url, auth.as_ref()) {
                Ok(target) => Some(SharedSettings {
                    target,
                    url: url.to_owned(),
                    ttl,
                    budget: Duration::from_secs(1),
                    ca: shared.and_then(|s| s.ca.clone()),
                }),
                Err(e) => {
                    errors.push(format!("judge0-queue: {e}"));
                    None
                }
            }
        }
    };
    Judge0Config {
        prefix,
        auth_tokens: words(&s.judge0_auth_token),
        authz_tokens: words(&s.judge0_authz_token),
        callback_hosts: s.judge0_callback_host.clone().unwrap_or_default(),
        compiler_options: s.judge0_compiler_option.clone().unwrap_or_default(),
        queue,
        max_queue,
        ttl,
        claim_after,
    }
}
