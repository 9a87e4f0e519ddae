//! The `shared-cache*` settings of a fleet's Redis tier.

use std::time::Duration;

use super::Settings;
use crate::cache::SharedSettings;
use crate::cache::shared::target::{self, read_auth_file};

/// The `shared-cache*` settings; the auth file is read here so that `check-config` checks it.
pub(super) fn shared_settings(s: &Settings, errors: &mut Vec<String>) -> Option<SharedSettings> {
    let Some(url) = s.shared_cache.as_deref().filter(|u| !u.trim().is_empty()) else {
        if s.shared_cache_auth_file.is_some() || s.shared_cache_ca_file.is_some() {
            errors.push("shared-cache-auth-file or -ca-file is set but shared-cache is not".into());
        }
        return None;
    };
    let auth = match s.shared_cache_auth_file.as_deref().map(read_auth_file) {
        Some(Err(e)) => {
            errors.push(e);
            return None;
        }
        Some(Ok(a)) => Some(a),
        None => None,
    };
    let ca = match &s.shared_cache_ca_file {
        Some(path) => match std::fs::read(path) {
            Ok(pem) if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => {
                errors.push(format!(
                    "shared-cache-ca-file {} holds no PEM certificate",
                    path.display()
                ));
                return None;
            }
            Ok(_) if !url.trim().starts_with("rediss") => {
                errors.push(
                    "shared-cache-ca-file is for TLS: use a rediss:// or rediss-cluster:// URL"
                        .into(),
                );
                return None;
            }
            Ok(pem) => Some(pem),
            Err(e) => {
                errors.push(format!(
                    "cannot read shared-cache-ca-file {}: {e}",
                    path.display()
                ));
                return None;
            }
        },
        None => None,
    };
    let settings = SharedSettings {
        ca,
        target: match target::parse(url.trim(), auth.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                return None;
            }
        },
        url: url.trim().to_string(),
        ttl: s
            .shared_cache_ttl
            .expect("shared-cache-ttl has its default in DEFAULTS")
            .0,
        budget: s
            .shared_cache_timeout
            .expect("shared-cache-timeout has its default in DEFAULTS")
            .0,
    };
    if settings.ttl < Duration::from_secs(1) {
        errors.push("shared-cache-ttl must be at least 1s".into());
    }
    if settings.budget.is_zero() {
        errors.push("shared-cache-timeout must be more than 0".into());
    }
    if let Err(e) = settings.check() {
        errors.push(e);
    }
    Some(settings)
}
