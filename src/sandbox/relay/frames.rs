//! Decodes the relay's frames: one kind byte (`o` stdout, `e` stderr, `x` exit), a 4-byte
//! big-endian length, the payload. Output is passed on as it arrives, a frame's payload possibly
//! in several pieces, so that the output cap and live forwarding act on bytes, not frames.

use bytes::{Buf, Bytes};

use crate::sandbox::StreamKind;
use crate::sandbox::job::{JobFile, Measures};

const HEADER: usize = 5;
const EXIT_LEN: usize = 8;
const MEASURES_LEN: usize = 36;
/// The largest kept file the daemon takes from a stage (`job.c` sends whole files).
pub const MAX_KEPT_FRAME: usize = 256 << 20;

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
    /// A job's stage measurements, just before its exit.
    Measured(Measures),
    /// A file a job's stage kept, after its clean exit.
    Kept(JobFile),
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
    Measures,
    Kept(usize),
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
                        b'm' if len as usize == MEASURES_LEN => State::Measures,
                        b'f' if (8..=MAX_KEPT_FRAME).contains(&(len as usize)) => {
                            State::Kept(len as usize)
                        }
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
                State::Measures => {
                    if !self.fill(&mut data, MEASURES_LEN) {
                        break;
                    }
                    let p = &self.partial;
                    let w = |i: usize| u32::from_be_bytes(p[i..i + 4].try_into().unwrap());
                    let d = |i: usize| u64::from_be_bytes(p[i..i + 8].try_into().unwrap());
                    let signal = w(4);
                    events.push(Event::Measured(Measures {
                        status: i64::from(w(0) as i32),
                        signal: (signal != 0).then_some(signal as i32),
                        limit: w(8),
                        cpu: std::time::Duration::from_micros(d(12)),
                        wall: std::time::Duration::from_micros(d(20)),
                        peak_memory: (d(28) != u64::MAX).then_some(d(28)),
                    }));
                    self.partial.clear();
                    self.state = State::Header;
                }
                State::Kept(len) => {
                    let len = *len;
                    if !self.fill(&mut data, len) {
                        break;
                    }
                    let p = std::mem::take(&mut self.partial);
                    let name_len = u32::from_be_bytes(p[0..4].try_into().unwrap()) as usize;
                    if 8 + name_len > len {
                        return Err(FrameError {
                            kind: b'f',
                            len: len as u32,
                        });
                    }
                    let path = String::from_utf8_lossy(&p[4..4 + name_len]).into_owned();
                    let mode =
                        u32::from_be_bytes(p[4 + name_len..8 + name_len].try_into().unwrap());
                    events.push(Event::Kept(JobFile {
                        path,
                        executable: mode & 0o111 != 0,
                        content: Bytes::copy_from_slice(&p[8 + name_len..]),
                    }));
                    self.state = State::Header;
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
                    Event::Measured(_) | Event::Kept(_) => unreachable!(),
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
    fn decodes_measures_and_kept_files() {
        let mut m = Vec::new();
        for w in [0u32, 9, 1] {
            m.extend_from_slice(&w.to_be_bytes());
        }
        for d in [300_000u64, 400_000, u64::MAX] {
            m.extend_from_slice(&d.to_be_bytes());
        }
        let mut all = frame(b'm', &m);
        let mut f = 4u32.to_be_bytes().to_vec();
        f.extend_from_slice(b"prog");
        f.extend_from_slice(&0o755u32.to_be_bytes());
        f.extend_from_slice(b"ELF");
        all.extend(frame(b'f', &f));
        let events = Frames::default().feed(Bytes::from(all)).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Measured(Measures {
                    status: 0,
                    signal: Some(9),
                    limit: 1,
                    cpu: std::time::Duration::from_millis(300),
                    wall: std::time::Duration::from_millis(400),
                    peak_memory: None,
                }),
                Event::Kept(JobFile {
                    path: "prog".into(),
                    executable: true,
                    content: Bytes::from_static(b"ELF"),
                }),
            ]
        );
    }

    #[test]
    fn rejects_unknown_frames() {
        let mut f = Frames::default();
        assert!(f.feed(Bytes::from(frame(b'z', b"x"))).is_err());
        let mut f = Frames::default();
        assert!(f.feed(Bytes::from(frame(b'x', b"short"))).is_err());
    }
}
