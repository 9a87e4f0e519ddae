//! A compilerd daemon in the test process, on 127.0.0.1:0, against a real sandbox backend.
#![allow(dead_code)]

pub mod cdp;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use compilerd::backend::Choice;
use compilerd::config::{Backend, Config};
use compilerd::hooks::Hooks;
use compilerd::languages::{OpenLanguage, Opened};
use compilerd::metrics::Metrics;
use compilerd::sandbox::Sandbox;
use compilerd::server::{Daemon, StopRequests, Stopped};

pub fn test_image() -> String {
    std::env::var("COMPILERD_TEST_IMAGE").unwrap_or_else(|_| "compilerd-test".into())
}

pub fn test_rootfs() -> std::path::PathBuf {
    std::env::var("COMPILERD_TEST_ROOTFS")
        .unwrap_or_else(|_| "/var/lib/compilerd-test/rootfs".into())
        .into()
}

/// Settings for tests: short deadline, no self-halt, no drain, the test image or rootfs.
pub fn config(backend: Backend) -> Config {
    let mut c = Config {
        address: "127.0.0.1:0".parse().unwrap(),
        backend,
        shutdown: false,
        drain: Duration::ZERO,
        image: test_image(),
        // COMPILERD_TEST_RUNTIME=runsc: the Docker backend's suites run under gVisor.
        runtime: std::env::var("COMPILERD_TEST_RUNTIME")
            .ok()
            .filter(|r| !r.is_empty()),
        rootfs: Some(test_rootfs()),
        max_concurrent_runs: 4,
        pool_size: 2,
        ..Config::default()
    };
    c.limits.timeout = Duration::from_millis(1500);
    c.limits.memory_bytes = 64 << 20;
    c
}

pub struct TestDaemon {
    pub addr: SocketAddr,
    pub stops: StopRequests,
    pub metrics: Arc<Metrics>,
    pub client: reqwest::Client,
    task: tokio::task::JoinHandle<Stopped>,
}

impl TestDaemon {
    pub async fn start(config: Config) -> TestDaemon {
        let metrics = Arc::new(Metrics::new());
        let hooks: Arc<dyn Hooks> = metrics.clone();
        let languages = compilerd::languages::open(&config, hooks.clone())
            .await
            .expect("sandboxes open");
        Self::start_languages(config, languages, metrics).await
    }

    /// A daemon over a given sandbox (e.g. `ScriptedSandbox`) as its one language, the flat
    /// settings' `default`; `metrics` are its hooks.
    pub async fn start_with(
        config: Config,
        sandbox: Arc<dyn Sandbox>,
        metrics: Arc<Metrics>,
    ) -> TestDaemon {
        let language = config.languages().into_iter().next().expect("a language");
        let languages = Opened {
            backend: Choice::configured(config.backend),
            languages: vec![OpenLanguage {
                config: language,
                version: String::new(),
                stages: None,
                run: sandbox,
                format: None,
            }],
        };
        Self::start_languages(config, languages, metrics).await
    }

    async fn start_languages(
        config: Config,
        languages: Opened,
        metrics: Arc<Metrics>,
    ) -> TestDaemon {
        let listener = tokio::net::TcpListener::bind(config.address).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hooks: Arc<dyn Hooks> = metrics.clone();
        let stops = StopRequests::default();
        let daemon = Daemon {
            config,
            listener,
            languages,
            metrics: Some(metrics.clone()),
            hooks,
            stops: stops.clone(),
        };
        let task = tokio::spawn(daemon.run());
        TestDaemon {
            addr,
            stops,
            metrics,
            client: reqwest::Client::new(),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn compile(&self, program: impl Into<reqwest::Body>) -> Reply {
        let r = self
            .client
            .post(self.url("/compile"))
            .body(program)
            .send()
            .await
            .unwrap();
        Reply::read(r).await
    }

    /// Sends a program in the background, for tests that act while it runs.
    pub fn spawn_compile(&self, program: &'static str) -> tokio::task::JoinHandle<Reply> {
        let request = self.client.post(self.url("/compile")).body(program);
        tokio::spawn(async move { Reply::read(request.send().await.unwrap()).await })
    }

    /// The value of one sample line of /metrics, e.g. `compilerd_runs_total{language=\"default\",outcome="ok"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics.render(), series)
    }

    /// Waits (bounded) until `cond` holds on the metrics; an awaited state, not a guessed delay.
    pub async fn wait_metric(&self, series: &str, cond: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cond(self.metric(series)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} never met the condition (now {})",
                self.metric(series)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the daemon and waits until it removed its sandboxes.
    pub async fn stop(self) {
        self.stops.request();
        self.stops.request();
        assert_eq!(self.task.await.unwrap(), Stopped::Requested);
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    find_metric(text, series).unwrap_or_else(|| panic!("no series {series}"))
}

/// A labelled series appears with its first sample; before that it is None.
pub fn find_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Reply {
    pub async fn read(r: reqwest::Response) -> Reply {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// All event messages joined, as a frontend would show them.
    pub fn output(&self) -> String {
        self.json["Events"]
            .as_array()
            .map(|evs| evs.iter().map(|e| e["Message"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }

    pub fn errors(&self) -> &str {
        self.json["Errors"].as_str().unwrap_or("")
    }
}
