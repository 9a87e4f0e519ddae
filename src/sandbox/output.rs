//! Collects a run's stdout and stderr in order, under one cap for both, so that every backend
//! stops a flood the same way and at the same byte.

use super::{Chunk, StreamKind};

/// The cap was crossed: the backend must kill the run now.
#[derive(Debug, PartialEq, Eq)]
pub struct OverCap;

#[derive(Debug)]
pub struct OutputCollector {
    cap: usize,
    total: usize,
    chunks: Vec<Chunk>,
}

impl OutputCollector {
    pub fn new(cap: usize) -> Self {
        OutputCollector {
            cap,
            total: 0,
            chunks: Vec::new(),
        }
    }

    /// Appends output; consecutive data of the same stream is merged into one chunk.
    /// Output of exactly `cap` bytes is accepted; one byte more is `OverCap`.
    pub fn push(&mut self, kind: StreamKind, data: &[u8]) -> Result<(), OverCap> {
        if data.is_empty() {
            return Ok(());
        }
        self.total = self.total.saturating_add(data.len());
        if self.total > self.cap {
            return Err(OverCap);
        }
        match self.chunks.last_mut() {
            Some(last) if last.kind == kind => last.data.extend_from_slice(data),
            _ => self.chunks.push(Chunk {
                kind,
                data: data.to_vec(),
            }),
        }
        Ok(())
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
        let mut c = OutputCollector::new(100);
        c.push(StreamKind::Stdout, b"a").unwrap();
        c.push(StreamKind::Stdout, b"b").unwrap();
        c.push(StreamKind::Stderr, b"c").unwrap();
        c.push(StreamKind::Stdout, b"d").unwrap();
        let chunks = c.into_chunks();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].data, b"ab");
        assert_eq!(chunks[1].kind, StreamKind::Stderr);
        assert_eq!(chunks[2].data, b"d");
    }

    #[test]
    fn cap_counts_both_streams_and_allows_exactly_cap() {
        let mut c = OutputCollector::new(4);
        c.push(StreamKind::Stdout, b"ab").unwrap();
        c.push(StreamKind::Stderr, b"cd").unwrap();
        assert_eq!(c.push(StreamKind::Stdout, b"e"), Err(OverCap));
    }
}
