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
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Fails loudly when redis-server is missing: these tests need the real thing.
    pub fn start_on(port: u16) -> Redis {
        let mut r = Redis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
        redis::Client::open(self.url()).unwrap()
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
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
