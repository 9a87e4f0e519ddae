//! Collects a run's stdout and stderr in order, under one cap for both, so that every backend
//! stops a flood the same way and at the same byte. Each write is stamped with its time since the
//! hand-over (the answer's `Delay`s come from these stamps), and, for live transports, forwarded
//! as it is accepted.

use std::time::{Duration, Instant};

use super::{Chunk, LiveOutput, StreamKind};

/// Writes of one stream closer together than this share a chunk: the answer stays small when a
/// program prints line by line, and its replay is off by at most this much.
pub const MERGE_WINDOW: Duration = Duration::from_millis(10);

/// The cap was crossed: the backend must kill the run now.
#[derive(Debug, PartialEq, Eq)]
pub struct OverCap;

#[derive(Debug)]
pub struct OutputCollector {
    cap: usize,
    total: usize,
    started: Instant,
    chunks: Vec<Chunk>,
    live: Option<LiveOutput>,
}

impl OutputCollector {
    /// Starts the clock for the stamps now.
    pub fn new(cap: usize, live: Option<LiveOutput>) -> Self {
        OutputCollector {
            cap,
            total: 0,
            started: Instant::now(),
            chunks: Vec::new(),
            live,
        }
    }

    /// Appends one write. Output of exactly `cap` bytes is accepted; past it, the part that still
    /// fits is kept and the answer is `OverCap`.
    pub fn push(&mut self, kind: StreamKind, data: &[u8]) -> Result<(), OverCap> {
        if data.is_empty() {
            return Ok(());
        }
        let room = self.cap - self.total.min(self.cap);
        let over = data.len() > room;
        let data = &data[..data.len().min(room)];
        self.total = self.total.saturating_add(data.len());
        if !data.is_empty() {
            let at = self.started.elapsed();
            if let Some(live) = &self.live {
                // A live reader that has gone away does not stop the run.
                let _ = live.send(Chunk {
                    kind,
                    data: data.to_vec(),
                    at,
                });
            }
            match self.chunks.last_mut() {
                Some(last) if last.kind == kind && at.saturating_sub(last.at) < MERGE_WINDOW => {
                    last.data.extend_from_slice(data)
                }
                _ => self.chunks.push(Chunk {
                    kind,
                    data: data.to_vec(),
                    at,
                }),
            }
        }
        if over { Err(OverCap) } else { Ok(()) }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn into_chunks(self) -> Vec<Chunk> {
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_same_stream_and_keeps_order() {
        let mut c = OutputCollector::new(100, None);
        c.push(StreamKind::Stdout, b"a").unwrap();
        c.push(StreamKind::Stdout, b"b").unwrap();
        c.push(StreamKind::Stderr, b"c").unwrap();
        c.push(StreamKind::Stdout, b"d").unwrap();
        let chunks = c.into_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].data, b"ab");
        assert_eq!(chunks[1].kind, StreamKind::Stderr);
        assert_eq!(chunks[2].data, b"d");
        assert!(chunks[0].at <= chunks[1].at && chunks[1].at <= chunks[2].at);
    }

    #[test]
    fn writes_apart_in_time_stay_apart() {
        let mut c = OutputCollector::new(100, None);
        c.push(StreamKind::Stdout, b"a").unwrap();
        std::thread::sleep(MERGE_WINDOW * 2);
        c.push(StreamKind::Stdout, b"b").unwrap();
        let chunks = c.into_chunks();
        assert_eq!(chunks.len(), 2);
        assert!(chunks[1].at - chunks[0].at >= MERGE_WINDOW * 2);
    }

    #[test]
    fn cap_counts_both_streams_keeps_what_fits() {
        let mut c = OutputCollector::new(5, None);
        c.push(StreamKind::Stdout, b"ab").unwrap();
        c.push(StreamKind::Stderr, b"cd").unwrap();
        assert_eq!(c.push(StreamKind::Stdout, b"efg"), Err(OverCap));
        assert_eq!(c.total(), 5);
        let chunks = c.into_chunks();
        assert_eq!(chunks[2].data, b"e");
    }

    #[test]
    fn live_gets_each_accepted_write() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut c = OutputCollector::new(3, Some(tx));
        c.push(StreamKind::Stdout, b"ab").unwrap();
        let _ = c.push(StreamKind::Stderr, b"cd");
        assert_eq!(rx.try_recv().unwrap().data, b"ab");
        let second = rx.try_recv().unwrap();
        assert_eq!(
            (second.kind, &second.data[..]),
            (StreamKind::Stderr, &b"c"[..])
        );
        assert!(rx.try_recv().is_err());
    }
}
