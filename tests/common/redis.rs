//! A redis-server of the test's own on a loopback port (never the system's service), stopped when
//! dropped.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use compilerd::cache::SharedSettings;
use compilerd::cache::shared::target;

/// A port that was free a moment ago, for a server that only takes a port number.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Redis {
    pub port: u16,
    /// What the test's own client connects with (it may carry a password; a daemon's URL never).
    client_url: String,
    ca: Option<std::path::PathBuf>,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Fails loudly when redis-server is missing: these tests need the real thing.
    pub fn start_on(port: u16) -> Redis {
        Redis::start_with(port, format!("redis://127.0.0.1:{port}"), Vec::new())
    }

    /// A server that wants `password` from every client.
    pub fn start_with_password(password: &str) -> Redis {
        let port = free_port();
        let url = format!("redis://:{password}@127.0.0.1:{port}");
        Redis::start_with(port, url, vec!["--requirepass".into(), password.into()])
    }

    /// TLS only, with a certificate for 127.0.0.1 signed by a CA made here; returns the server
    /// and the CA's PEM file.
    pub fn start_tls() -> (Redis, std::path::PathBuf) {
        let port = free_port();
        let certs_dir = tempfile::tempdir().unwrap();
        let certs = certs_dir.path().to_path_buf();
        let sh = |script: &str| {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&certs)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("sh runs");
            assert!(ok.success(), "openssl: {script}");
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca \
            -keyout ca.key -out ca.pem",
        );
        sh(
            "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr",
        );
        sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && \
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile san.ext -out server.pem");
        let path = |f: &str| certs.join(f).display().to_string();
        let args = vec![
            "--tls-port".into(),
            port.to_string(),
            "--port".into(),
            "0".into(),
            "--tls-cert-file".into(),
            path("server.pem"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let ca = certs.join("ca.pem");
        let mut r = Redis {
            port,
            client_url: format!("rediss://127.0.0.1:{port}"),
            ca: Some(ca.clone()),
            args,
            child: None,
            dir: certs_dir,
        };
        r.restart();
        (r, ca)
    }

    fn start_with(port: u16, client_url: String, args: Vec<String>) -> Redis {
        let mut r = Redis {
            port,
            client_url,
            ca: None,
            args,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        if !self.args.iter().any(|a| a == "--tls-port") {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(&self.args)
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client().get_connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        match &self.ca {
            Some(ca) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).unwrap()),
                };
                redis::Client::build_with_tls(self.client_url.as_str(), certs).unwrap()
            }
            None => redis::Client::open(self.client_url.as_str()).unwrap(),
        }
    }

    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query(&mut self.client().get_connection().unwrap())
            .unwrap()
    }

    /// Settings for a daemon that shares through this server.
    pub fn settings(&self) -> SharedSettings {
        settings(&self.url())
    }
}

pub fn settings(url: &str) -> SharedSettings {
    SharedSettings {
        target: target::parse(url, None).unwrap(),
        url: url.into(),
        ttl: Duration::from_secs(3600),
        budget: Duration::from_millis(20),
        ca: None,
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
