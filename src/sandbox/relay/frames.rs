//! Decodes the relay's frames: one kind byte (`o` stdout, `e` stderr, `x` exit), a 4-byte
//! big-endian length, the payload. Output is passed on as it arrives, a frame's payload possibly
//! in several pieces, so that the output cap and live forwarding act on bytes, not frames.

use bytes::{Buf, Bytes};

use crate::sandbox::StreamKind;

const HEADER: usize = 5;
const EXIT_LEN: usize = 8;

/// How the program ended, as the relay saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128+N for signal N.
    pub status: i64,
    /// OOM kills the sandbox's memory cgroup counted during the run; `None` where the relay could
    /// not read the counter.
    pub oom_kills: Option<u32>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Output(StreamKind, Bytes),
    Exit(Exit),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the sandbox's output relay sent a malformed frame (kind {kind:#04x}, length {len})")]
pub struct FrameError {
    kind: u8,
    len: u32,
}

#[derive(Debug)]
enum State {
    Header,
    Output(StreamKind, usize),
    Exit,
    /// After the exit frame; anything more is ignored.
    Done,
}

#[derive(Debug)]
pub struct Frames {
    state: State,
    partial: Vec<u8>,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            state: State::Header,
            partial: Vec::with_capacity(HEADER + EXIT_LEN),
        }
    }
}

impl Frames {
    /// Takes the next bytes of the stream; returns the events they complete, in order.
    pub fn feed(&mut self, mut data: Bytes) -> Result<Vec<Event>, FrameError> {
        let mut events = Vec::new();
        while data.has_remaining() {
            match &mut self.state {
                State::Header => {
                    if !self.fill(&mut data, HEADER) {
                        break;
                    }
                    let kind = self.partial[0];
                    let len = u32::from_be_bytes(self.partial[1..HEADER].try_into().unwrap());
                    self.partial.clear();
                    self.state = match kind {
                        b'o' | b'e' if len == 0 => State::Header,
                        b'o' => State::Output(StreamKind::Stdout, len as usize),
                        b'e' => State::Output(StreamKind::Stderr, len as usize),
                        b'x' if len as usize == EXIT_LEN => State::Exit,
                        _ => return Err(FrameError { kind, len }),
                    };
                }
                State::Output(kind, left) => {
                    let piece = data.split_to((*left).min(data.len()));
                    *left -= piece.len();
                    events.push(Event::Output(*kind, piece));
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Exit => {
                    if !self.fill(&mut data, EXIT_LEN) {
                        break;
                    }
                    let word =
                        |i: usize| u32::from_be_bytes(self.partial[i..i + 4].try_into().unwrap());
                    let (status, kills) = (word(0), word(4));
                    events.push(Event::Exit(Exit {
                        status: i64::from(status as i32),
                        oom_kills: (kills != u32::MAX).then_some(kills),
                    }));
                    self.state = State::Done;
                }
                State::Done => break,
            }
        }
        Ok(events)
    }

    /// Moves bytes from `data` into `partial` until it holds `want`; whether it does.
    fn fill(&mut self, data: &mut Bytes, want: usize) -> bool {
        let take = (want - self.partial.len()).min(data.len());
        self.partial.extend_from_slice(&data.split_to(take));
        self.partial.len() == want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_across_any_split() {
        let mut all = frame(b'o', b"hello");
        all.extend(frame(b'e', b""));
        all.extend(frame(b'e', b"err"));
        all.extend(frame(b'x', &[0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]));
        for split in 0..all.len() {
            let mut f = Frames::default();
            let mut events = f.feed(Bytes::copy_from_slice(&all[..split])).unwrap();
            events.extend(f.feed(Bytes::copy_from_slice(&all[split..])).unwrap());
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut exit = None;
            for e in events {
                match e {
                    Event::Output(StreamKind::Stdout, d) => out.extend_from_slice(&d),
                    Event::Output(StreamKind::Stderr, d) => err.extend_from_slice(&d),
                    Event::Exit(x) => exit = Some(x),
                }
            }
            assert_eq!((&out[..], &err[..]), (&b"hello"[..], &b"err"[..]));
            assert_eq!(
                exit,
                Some(Exit {
                    status: 3,
                    oom_kills: None
                })
            );
        }
    }

    #[test]
    fn rejects_unknown_frames() {
        let mut f = Frames::default();
        assert!(f.feed(Bytes::from(frame(b'z', b"x"))).is_err());
        let mut f = Frames::default();
        assert!(f.feed(Bytes::from(frame(b'x', b"short"))).is_err());
    }
}
