//! Which sandbox backend a daemon runs on. `auto` (the default) makes a newcomer's
//! `cargo run` serve on whatever the machine has: Docker when the engine answers and holds every
//! language's image, else bubblewrap (whose own startup check, in `languages::open`, decides
//! whether it can make a sandbox). The choice and its reason are logged, shown in `STATUS=` and in
//! `GET /languages`, so that an operator never has to guess which isolation a run got.

use std::time::Duration;

use crate::config::{Backend, Config};
use crate::sandbox::docker::DEFAULT_DOCKER_HOST;

/// A dead engine socket fails at once; this bounds an engine that accepts and never answers.
const ENGINE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The backend the sandboxes are opened on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Never `Backend::Auto`.
    pub backend: Backend,
    pub reason: String,
    /// Whether the config said `auto`: then a backend that fails to open is reported with the
    /// other way out too.
    pub automatic: bool,
}

impl Choice {
    /// The backend the config names, unchecked: its own startup check runs when it opens.
    pub fn configured(backend: Backend) -> Choice {
        Choice {
            backend,
            reason: "configured".to_owned(),
            automatic: false,
        }
    }

    /// One line for the log and `STATUS=`: `bwrap (auto: …)` or `docker (configured)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.backend, self.reason)
    }

    /// The one refusal a host gets when neither backend can work there.
    pub fn refusal(&self, bwrap_error: &str) -> String {
        format!(
            "no sandbox backend works on this host. Docker: {}. bubblewrap: {bwrap_error}. Either \
             install bubblewrap (apt-get install -y bubblewrap), or start the Docker engine and \
             build the image (scripts/build-image.sh LANGUAGE, or scripts/build-test-image.sh \
             IMAGE); or name a backend with --backend",
            self.reason.strip_prefix("auto: ").unwrap_or(&self.reason)
        )
    }
}

/// Resolves `auto`; any other backend is taken as configured.
pub async fn choose(config: &Config) -> Choice {
    if config.backend != Backend::Auto {
        return Choice::configured(config.backend);
    }
    let images: Vec<String> = config.languages().into_iter().map(|l| l.image).collect();
    let (backend, reason) = match docker_has(&images).await {
        Ok(()) => (
            Backend::Docker,
            format!(
                "auto: the Docker engine answers and has the image {}",
                images.join(", ")
            ),
        ),
        Err(why) => (Backend::Bwrap, format!("auto: {why}")),
    };
    Choice {
        backend,
        reason,
        automatic: true,
    }
}

/// Connects to the engine as the Docker backend does (DOCKER_HOST or the default socket).
pub fn docker_client() -> Result<bollard::Docker, bollard::errors::Error> {
    match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        Some(host) => bollard::Docker::connect_with_host(&host),
        None => bollard::Docker::connect_with_host(DEFAULT_DOCKER_HOST),
    }
}

/// Ok when the engine answers and has every image; else what is missing, in words.
async fn docker_has(images: &[String]) -> Result<(), String> {
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
    let no_engine = |e: String| format!("no Docker engine answers at {host} ({e})");
    let docker = docker_client().map_err(|e| no_engine(e.to_string()))?;
    let check = async {
        docker.ping().await.map_err(|e| no_engine(e.to_string()))?;
        for image in images {
            docker.inspect_image(image).await.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404 | 400,
                    ..
                } => format!("the Docker engine at {host} has no image {image}"),
                e => no_engine(e.to_string()),
            })?;
        }
        Ok(())
    };
    tokio::time::timeout(ENGINE_CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| {
            Err(no_engine(format!(
                "no answer within {}s",
                ENGINE_CHECK_TIMEOUT.as_secs()
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_both_ways_out() {
        let c = Choice {
            backend: Backend::Bwrap,
            reason: "auto: no Docker engine answers at unix:///nowhere (gone)".to_owned(),
            automatic: true,
        };
        let text = c.refusal("bwrap is not installed");
        assert!(text.contains("Docker: no Docker engine answers"), "{text}");
        assert!(
            text.contains("bubblewrap: bwrap is not installed"),
            "{text}"
        );
        assert!(text.contains("apt-get install -y bubblewrap"), "{text}");
        assert!(text.contains("scripts/build-image.sh"), "{text}");
    }

    #[tokio::test]
    async fn a_configured_backend_is_taken_as_it_is() {
        let config = Config {
            backend: Backend::Bwrap,
            ..Config::default()
        };
        assert_eq!(choose(&config).await, Choice::configured(Backend::Bwrap));
    }
}
