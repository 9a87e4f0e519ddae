//! How many client connections are open at once. Past the limit a new connection gets a short
//! `503` and is closed, instead of waiting unseen in the listen backlog or taking the fds the runs
//! need.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::hooks::Hooks;

/// Refused connections being closed politely at once; past this they are dropped outright.
const REFUSING: usize = 64;
/// How long a refused client has to take its answer and hang up.
const REFUSE_LINGER: Duration = Duration::from_secs(1);

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 62\r\n\
\r\n\
{\"Errors\":\"Server busy: too many connections.\",\"Events\":null}\n";

pub struct ConnectionLimit {
    open: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    hooks: Arc<dyn Hooks>,
}

/// Held for as long as an accepted connection is open.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    limit: Arc<ConnectionLimit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.hooks.connection_closed();
    }
}

impl ConnectionLimit {
    pub fn new(max: usize, hooks: Arc<dyn Hooks>) -> Arc<ConnectionLimit> {
        Arc::new(ConnectionLimit {
            open: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(REFUSING)),
            hooks,
        })
    }

    /// A slot for a new connection, or None when `max` are open (then `refuse` it).
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        match self.open.clone().try_acquire_owned() {
            Ok(permit) => {
                self.hooks.connection_opened();
                Some(Slot {
                    _permit: permit,
                    limit: self.clone(),
                })
            }
            Err(_) => {
                self.hooks.connection_refused();
                None
            }
        }
    }

    /// Answers 503 and closes. Closing with the client's request unread would reset the
    /// connection before the client reads the answer, so its bytes are read and dropped for a
    /// moment first, by a bounded number of tasks.
    pub fn refuse(&self, mut stream: TcpStream) {
        let _ = stream.try_write(REFUSAL);
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let drain = async {
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(REFUSE_LINGER, drain).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["Errors"], "Server busy: too many connections.");
    }
}
