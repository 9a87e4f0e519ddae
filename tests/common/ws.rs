//! A WebSocket client of /socket speaking the Go playground's protocol, and the checks that a
//! killed run left nothing on the host.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on every wait for a message.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Msg {
    pub id: String,
    pub kind: String,
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(addr: SocketAddr) -> Ws {
        Ws::connect_from(addr, None)
            .await
            .expect("upgrade accepted")
    }

    /// Connects with an `Origin` header, as a browser page does; a refused upgrade comes back as
    /// its status and body.
    pub async fn connect_from(addr: SocketAddr, origin: Option<&str>) -> Result<Ws, (u16, String)> {
        let mut req = format!("ws://{addr}/socket").into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Ws { ws }),
            Err(Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn run(&mut self, id: &str, program: &str) {
        self.send(json!({"Id": id, "Kind": "run", "Body": program, "Options": {"Race": false}}))
            .await;
    }

    pub async fn kill(&mut self, id: &str) {
        self.send(json!({"Id": id, "Kind": "kill"})).await;
    }

    /// The next protocol message; None when the server closed the connection.
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a message within the patience");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("messages are JSON");
                    let field = |k: &str| v[k].as_str().expect("string field").to_owned();
                    return Some(Msg {
                        id: field("Id"),
                        kind: field("Kind"),
                        body: field("Body"),
                        at: Instant::now(),
                    });
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Messages up to and including the `end` of run `id` (messages of other runs included).
    pub async fn until_end(&mut self, id: &str) -> Vec<Msg> {
        let mut all = Vec::new();
        loop {
            let m = self.next().await.expect("connection open until the end");
            let done = m.id == id && m.kind == "end";
            all.push(m);
            if done {
                return all;
            }
        }
    }

    /// Closes the connection without a goodbye, as a closed browser tab or a dead network does.
    pub fn vanish(self) {
        drop(self.ws);
    }
}

/// What one run sent: its output by stream, and its `end` body.
pub fn summary(msgs: &[Msg], id: &str) -> (String, String, String) {
    let of = |kind: &str| -> String {
        msgs.iter()
            .filter(|m| m.id == id && m.kind == kind)
            .map(|m| m.body.as_str())
            .collect()
    };
    let ends: Vec<&Msg> = msgs
        .iter()
        .filter(|m| m.id == id && m.kind == "end")
        .collect();
    assert_eq!(ends.len(), 1, "exactly one end for run {id}: {msgs:?}");
    (of("stdout"), of("stderr"), ends[0].body.clone())
}

/// A host process whose command line contains `marker` (a sandboxed program, seen from the host),
/// with its memory cgroup directory.
pub fn find_marked(marker: &str) -> Option<(u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(marker) {
            return None;
        }
        let cgroups = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        let dir = cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if controllers.split(',').any(|c| c == "memory") {
                Some(std::path::PathBuf::from(format!(
                    "/sys/fs/cgroup/memory{path}"
                )))
            } else if controllers.is_empty() {
                Some(std::path::PathBuf::from(format!("/sys/fs/cgroup{path}")))
            } else {
                None
            }
        })?;
        Some((pid, dir))
    })
}

/// Waits (bounded) until the process `marker` names exists; returns it.
pub async fn wait_marked(marker: &str) -> (u32, std::path::PathBuf) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(found) = find_marked(marker) {
            return found;
        }
        assert!(Instant::now() < deadline, "no process {marker} appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the process and its cgroup are gone; returns how long that took. Fails after
/// `within`.
pub async fn wait_gone(pid: u32, cgroup: &std::path::Path, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && !cgroup.exists() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "after {within:?}: process {pid} alive: {alive}, cgroup {} left: {}",
            cgroup.display(),
            cgroup.exists()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
