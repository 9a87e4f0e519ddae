//! The output of Go programs built with the `faketime` tag, as on the Go playground: every write to
//! stdout or stderr comes framed with the program's fake time (header `00 00 'P' 'B'`, 8-byte
//! big-endian nanoseconds since the Unix epoch, 4-byte big-endian length, then the data). This
//! module turns it back into output whose stamps are that fake time, so that the answer's `Delay`s
//! are the delays the program asked for (a one-hour sleep answers at once with the hour in its
//! Delays) and the answer is the same on every run.
//!
//! Decoding follows the Go playground's recorder: per stream, a frame's time never runs backwards;
//! bytes outside frames (a panic the runtime could not frame, a notice of the sandbox) belong to
//! the stream's previous time, the epoch at first; consecutive data of one stream at one time is
//! one event. The streams are then merged by time, stderr first on a tie (the runtime stamps a
//! write to the other stream 1 ns later, so the order of writes survives).
//!
//! An image declares the framing (`output=` in its `/etc/compilerd-language`, label
//! `compilerd.output`); the language's run sandbox is then wrapped in `FakeTimeSandbox`:
//! - `go-faketime`: the output is framed;
//! - `go-playground`: the image's runner (images/go/runner) first writes one record on stdout,
//!   `00 00 'C' 'D'`, a 4-byte big-endian length and JSON saying how the build went
//!   (`goplay::Record`), then the program's framed output follows. Nothing of the program can
//!   come before it. The record becomes the first chunk of the decoded output, always (empty
//!   when there was none: the run ended during the build), and `goplay` renders the answer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{Backend, LanguageConfig};
use crate::sandbox::{Chunk, LiveOutput, RunOutcome, Sandbox, SandboxError, StreamKind};

/// The framings' names in an image's declaration.
pub const GO_FAKETIME: &str = "go-faketime";
pub const GO_PLAYGROUND: &str = "go-playground";
const MAGIC: &[u8; 4] = b"\0\0PB";
const RECORD_MAGIC: &[u8; 4] = b"\0\0CD";
const RECORD_HEADER: usize = 8;
const HEADER: usize = 16;
/// 2009-11-10 23:00:00 UTC, where fake time starts: the first event's `Delay` counts from here.
pub const EPOCH_NS: u64 = 1_257_894_000_000_000_000;

/// One stream's decoder; bytes go in as they arrive, decoded pieces come out at their fake time
/// (nanoseconds since the Unix epoch).
#[derive(Debug)]
struct StreamDecoder {
    /// Bytes not yet decoded: a header in the making, or a tail that may start one.
    pending: Vec<u8>,
    /// Data bytes still owed to the current frame.
    owed: usize,
    time: u64,
    record: RecordState,
}

/// The runner's record at the start of stdout (`go-playground`).
#[derive(Debug, PartialEq)]
enum RecordState {
    /// Not expected on this stream.
    None,
    /// Expected, not complete yet.
    Awaited,
    Read(Vec<u8>),
    /// Expected, but the stream began otherwise.
    Missing,
}

impl StreamDecoder {
    fn new() -> Self {
        StreamDecoder {
            pending: Vec::new(),
            owed: 0,
            time: EPOCH_NS,
            record: RecordState::None,
        }
    }

    fn with_record() -> Self {
        StreamDecoder {
            record: RecordState::Awaited,
            ..StreamDecoder::new()
        }
    }

    /// The record, once read (and taken only once).
    fn take_record(&mut self) -> Option<Vec<u8>> {
        match std::mem::replace(&mut self.record, RecordState::Missing) {
            RecordState::Read(r) => Some(r),
            other => {
                self.record = other;
                None
            }
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<(u64, Vec<u8>)>) {
        self.pending.extend_from_slice(data);
        let buf = std::mem::take(&mut self.pending);
        let mut rest = &buf[..];
        if self.record == RecordState::Awaited {
            let n = rest.len().min(RECORD_MAGIC.len());
            if rest[..n] != RECORD_MAGIC[..n] {
                self.record = RecordState::Missing;
            } else if rest.len() >= RECORD_HEADER {
                let len = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
                if rest.len() < RECORD_HEADER + len {
                    self.pending = buf;
                    return;
                }
                self.record = RecordState::Read(rest[RECORD_HEADER..RECORD_HEADER + len].to_vec());
                rest = &rest[RECORD_HEADER + len..];
            } else {
                self.pending = buf;
                return;
            }
        }
        loop {
            if self.owed > 0 {
                let n = self.owed.min(rest.len());
                if n > 0 {
                    out.push((self.time, rest[..n].to_vec()));
                }
                self.owed -= n;
                rest = &rest[n..];
            }
            if rest.is_empty() {
                break;
            }
            let Some(at) = find(rest, MAGIC) else {
                // Unframed bytes, but for a tail that may be the start of a header.
                let free = rest.len() - partial_magic(rest);
                if free > 0 {
                    out.push((self.time, rest[..free].to_vec()));
                }
                rest = &rest[free..];
                break;
            };
            if at > 0 {
                out.push((self.time, rest[..at].to_vec()));
            }
            rest = &rest[at..];
            if rest.len() < HEADER {
                break;
            }
            let stamp = u64::from_be_bytes(rest[4..12].try_into().expect("8 bytes"));
            let len = u32::from_be_bytes(rest[12..16].try_into().expect("4 bytes"));
            self.time = self.time.max(stamp);
            self.owed = len as usize;
            rest = &rest[HEADER..];
        }
        self.pending = rest.to_vec();
    }

    /// What is left at the end: a tail that was not a header after all is output; a header cut
    /// short (the output cap, a killed run) is dropped, as it has no data.
    fn finish(&mut self, out: &mut Vec<(u64, Vec<u8>)>) {
        let pending = std::mem::take(&mut self.pending);
        if self.record == RecordState::Awaited {
            // A record cut short: the run ended while the runner wrote it.
            self.record = RecordState::Missing;
            return;
        }
        if !pending.is_empty() && !pending.starts_with(MAGIC) {
            out.push((self.time, pending));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest tail of `data` that is a proper prefix of the magic.
fn partial_magic(data: &[u8]) -> usize {
    (1..MAGIC.len())
        .rev()
        .find(|&n| data.len() >= n && data[data.len() - n..] == MAGIC[..n])
        .unwrap_or(0)
}

fn stamp_of(time: u64) -> Duration {
    Duration::from_nanos(time.saturating_sub(EPOCH_NS))
}

/// Decodes a whole run's output, in the order the relay delivered it, into chunks stamped with
/// their fake time since the epoch, merged as the Go playground merges them. With `record`, the
/// runner's record comes first, as a chunk of its own (empty without one).
pub fn decode(output: &[Chunk], record: bool) -> Vec<Chunk> {
    let stdout = match record {
        true => StreamDecoder::with_record(),
        false => StreamDecoder::new(),
    };
    let mut streams = [
        (StreamKind::Stderr, StreamDecoder::new(), Vec::new()),
        (StreamKind::Stdout, stdout, Vec::new()),
    ];
    for c in output {
        let (_, dec, out) = streams
            .iter_mut()
            .find(|(k, ..)| *k == c.kind)
            .expect("two streams");
        dec.feed(&c.data, out);
    }
    let mut found = None;
    let [err, out] = streams.map(|(kind, mut dec, mut pieces)| {
        dec.finish(&mut pieces);
        if let Some(r) = dec.take_record() {
            found = Some(r);
        }
        let mut joined: Vec<(u64, Vec<u8>)> = Vec::new();
        for (t, data) in pieces {
            match joined.last_mut() {
                Some((last, buf)) if *last == t => buf.extend_from_slice(&data),
                _ => joined.push((t, data)),
            }
        }
        joined
            .into_iter()
            .map(move |(t, data)| (t, kind, data))
            .collect::<Vec<_>>()
    });
    let (mut err, mut out) = (err.into_iter().peekable(), out.into_iter().peekable());
    let mut merged = Vec::new();
    if record {
        merged.push(Chunk {
            kind: StreamKind::Stdout,
            data: found.unwrap_or_default(),
            at: Duration::ZERO,
        });
    }
    loop {
        let take_err = match (err.peek(), out.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(e), Some(o)) => e.0 <= o.0,
        };
        let (t, kind, data) = if take_err { err.next() } else { out.next() }.expect("peeked");
        merged.push(Chunk {
            kind,
            data,
            at: stamp_of(t),
        });
    }
    merged
}

/// Forwards live output decoded: each piece as soon as its bytes are in.
struct LiveDecoder {
    live: LiveOutput,
    stdout: StreamDecoder,
    stderr: StreamDecoder,
}

impl LiveDecoder {
    fn forward(&mut self, chunk: Chunk) {
        let dec = match chunk.kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        };
        let mut pieces = Vec::new();
        dec.feed(&chunk.data, &mut pieces);
        // A build that failed: its messages are what a live client sees of the run.
        if let Some(errors) = dec
            .take_record()
            .and_then(|r| crate::goplay::Record::parse(&r))
            .map(|r| r.errors)
            .filter(|e| !e.is_empty())
        {
            self.send(StreamKind::Stderr, vec![(EPOCH_NS, errors.into_bytes())]);
        }
        self.send(chunk.kind, pieces);
    }

    fn finish(mut self) {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            let mut pieces = Vec::new();
            match kind {
                StreamKind::Stdout => self.stdout.finish(&mut pieces),
                StreamKind::Stderr => self.stderr.finish(&mut pieces),
            }
            self.send(kind, pieces);
        }
    }

    fn send(&self, kind: StreamKind, pieces: Vec<(u64, Vec<u8>)>) {
        for (t, data) in pieces {
            // A live reader that has gone away does not stop the run.
            let _ = self.live.send(Chunk {
                kind,
                data,
                at: stamp_of(t),
            });
        }
    }
}

/// A run sandbox whose programs frame their output with fake time: the outcome's output, and the
/// live output, come back decoded.
pub struct FakeTimeSandbox {
    inner: Arc<dyn Sandbox>,
    /// `GO_FAKETIME` or `GO_PLAYGROUND`.
    framing: &'static str,
    /// The modules the image serves to programs (`module@version`), as it declares them.
    modules: Vec<String>,
}

impl FakeTimeSandbox {
    pub fn new(inner: Arc<dyn Sandbox>, framing: &'static str) -> Self {
        FakeTimeSandbox {
            inner,
            framing,
            modules: Vec::new(),
        }
    }

    fn record(&self) -> bool {
        self.framing == GO_PLAYGROUND
    }
}

#[async_trait]
impl Sandbox for FakeTimeSandbox {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn fingerprint(&self) -> String {
        format!("{}|output={}", self.inner.fingerprint(), self.framing)
    }

    async fn run(
        &self,
        program: Bytes,
        live: Option<LiveOutput>,
    ) -> Result<RunOutcome, SandboxError> {
        let outcome = match live {
            None => self.inner.run(program, None).await?,
            Some(live) => {
                // Decoded in this future (no task of its own): once the run is over, everything
                // it sent is already queued, so the live reader has it all before the end.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let mut decoder = LiveDecoder {
                    live,
                    stdout: match self.record() {
                        true => StreamDecoder::with_record(),
                        false => StreamDecoder::new(),
                    },
                    stderr: StreamDecoder::new(),
                };
                let run = self.inner.run(program, Some(tx));
                tokio::pin!(run);
                let result = loop {
                    tokio::select! {
                        biased;
                        Some(chunk) = rx.recv() => decoder.forward(chunk),
                        result = &mut run => break result,
                    }
                };
                while let Ok(chunk) = rx.try_recv() {
                    decoder.forward(chunk);
                }
                decoder.finish();
                result?
            }
        };
        let record = self.record();
        Ok(match outcome {
            RunOutcome::Exited { status, output } => RunOutcome::Exited {
                status,
                output: decode(&output, record),
            },
            RunOutcome::OutputTooLarge { output } => RunOutcome::OutputTooLarge {
                output: decode(&output, record),
            },
            RunOutcome::TimedOut { output } => RunOutcome::TimedOut {
                output: decode(&output, record),
            },
            RunOutcome::OutOfMemory { output } => RunOutcome::OutOfMemory {
                output: decode(&output, record),
            },
        })
    }

    fn output_framing(&self) -> Option<&'static str> {
        Some(self.framing)
    }

    fn modules(&self) -> &[String] {
        &self.modules
    }

    /// A run request's stages: a program built against the image's std writes framed output too
    /// (a compiler's messages are not framed, and pass through as they are). Live output is not
    /// decoded: no live transport runs jobs yet.
    async fn run_job(
        &self,
        job: crate::sandbox::job::Job,
        live: Option<LiveOutput>,
        input: Option<crate::sandbox::job::LiveInput>,
    ) -> Result<crate::sandbox::job::StageOutcome, SandboxError> {
        let mut stage = self.inner.run_job(job, live, input).await?;
        stage.outcome = match stage.outcome {
            RunOutcome::Exited { status, output } => RunOutcome::Exited {
                status,
                output: decode(&output, false),
            },
            RunOutcome::OutputTooLarge { output } => RunOutcome::OutputTooLarge {
                output: decode(&output, false),
            },
            RunOutcome::TimedOut { output } => RunOutcome::TimedOut {
                output: decode(&output, false),
            },
            RunOutcome::OutOfMemory { output } => RunOutcome::OutOfMemory {
                output: decode(&output, false),
            },
        };
        Ok(stage)
    }

    fn status(&self) -> String {
        self.inner.status()
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await
    }
}

/// The language's run sandbox, wrapped when its image or rootfs declares faketime framing.
pub async fn wrap(
    run: Arc<dyn Sandbox>,
    backend: Backend,
    lang: &LanguageConfig,
) -> Arc<dyn Sandbox> {
    let declared = |key| declared(backend, lang, key);
    let framing = match declared("output").await.as_deref() {
        Some(GO_FAKETIME) => GO_FAKETIME,
        Some(GO_PLAYGROUND) => GO_PLAYGROUND,
        _ => return run,
    };
    let modules = declared("modules")
        .await
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Arc::new(FakeTimeSandbox {
        inner: run,
        framing,
        modules,
    })
}

/// `KEY=` of the rootfs's `/etc/compilerd-language`, or the image's `compilerd.KEY` label.
async fn declared(backend: Backend, lang: &LanguageConfig, key: &str) -> Option<String> {
    if backend == Backend::Docker {
        let docker = match std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
            Some(host) => bollard::Docker::connect_with_host(&host).ok()?,
            None => bollard::Docker::connect_with_local_defaults().ok()?,
        };
        let info = docker.inspect_image(&lang.image).await.ok()?;
        return info.config?.labels?.remove(&format!("compilerd.{key}"));
    }
    let root = lang.rootfs.as_deref().unwrap_or(Path::new("/"));
    let text = std::fs::read_to_string(root.join("etc/compilerd-language")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn frame(t: u64, data: &[u8]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
        f.extend_from_slice(data);
        f
    }

    fn chunk(kind: StreamKind, data: Vec<u8>) -> Chunk {
        Chunk {
            kind,
            data,
            at: Duration::ZERO,
        }
    }

    fn events(chunks: &[Chunk]) -> Vec<(String, &'static str, u64)> {
        let decoded = decode(chunks, false);
        decoded
            .iter()
            .zip(crate::answer::delays(&decoded))
            .map(|(c, d)| {
                (
                    String::from_utf8_lossy(&c.data).into_owned(),
                    c.kind.as_str(),
                    d,
                )
            })
            .collect()
    }

    /// The Go playground's own example: A(out) B(err) A A, sleep 1s, B(err), sleep 1s, A(out),
    /// stamped as the runtime stamps them.
    #[test]
    fn the_playgrounds_example() {
        use StreamKind::{Stderr, Stdout};
        let e = EPOCH_NS;
        let writes = [
            (Stdout, e, "A\n"),
            (Stderr, e + 1, "B\n"),
            (Stdout, e + 2, "A\n"),
            (Stdout, e + 2, "A\n"),
            (Stderr, e + S, "B\n"),
            (Stdout, e + 2 * S, "A\n"),
        ];
        // The runtime writes header and data separately: two chunks per write.
        let mut chunks = Vec::new();
        for (kind, t, data) in writes {
            let f = frame(t, data.as_bytes());
            chunks.push(chunk(kind, f[..HEADER].to_vec()));
            chunks.push(chunk(kind, f[HEADER..].to_vec()));
        }
        assert_eq!(
            events(&chunks),
            [
                ("A\n".into(), "stdout", 0),
                ("B\n".into(), "stderr", 1),
                ("A\nA\n".into(), "stdout", 1),
                ("B\n".into(), "stderr", S - 2),
                ("A\n".into(), "stdout", S),
            ]
        );
    }

    #[test]
    fn unframed_bytes_keep_their_place_in_their_stream() {
        use StreamKind::{Stderr, Stdout};
        let e = EPOCH_NS;
        let mut out = b"before ".to_vec();
        out.extend(frame(e + 5 * S, b"x"));
        out.extend_from_slice(b" between ");
        out.extend(frame(e + 6 * S, b"y"));
        // A frame whose stamp is earlier than the previous one's keeps the previous time.
        out.extend(frame(e + S, b"z"));
        out.extend_from_slice(b"\0\0P");
        let chunks = [
            // Split in the middle of a header and of the magic.
            chunk(Stdout, out[..10].to_vec()),
            chunk(Stdout, out[10..].to_vec()),
            chunk(Stderr, b"timeout running program\n".to_vec()),
        ];
        assert_eq!(
            events(&chunks),
            [
                ("timeout running program\n".into(), "stderr", 0),
                ("before ".into(), "stdout", 0),
                ("x between ".into(), "stdout", 5 * S),
                // A tail that looked like a header's start is output at the end.
                ("yz\0\0P".into(), "stdout", S),
            ]
        );
    }

    /// The output cap or a kill can cut a frame anywhere: what came of its data is kept, a
    /// header without its data is not.
    #[test]
    fn cut_frames() {
        use StreamKind::Stdout;
        let mut out = frame(EPOCH_NS + 3, b"abcdef");
        out.truncate(HEADER + 2);
        assert_eq!(events(&[chunk(Stdout, out)]), [("ab".into(), "stdout", 3)]);
        let out = frame(EPOCH_NS, b"x")[..7].to_vec();
        assert_eq!(events(&[chunk(Stdout, out)]), []);
        // A tail that merely looks like the start of a magic is output.
        let out = b"end\0\0".to_vec();
        assert_eq!(
            events(&[chunk(Stdout, out)]),
            [("end\0\0".into(), "stdout", 0)]
        );
    }

    /// The runner's record leads stdout; the program cannot put one before it.
    #[test]
    fn the_record_comes_first() {
        use StreamKind::Stdout;
        let json = br#"{"Errors":"","IsTest":true}"#;
        let mut out = RECORD_MAGIC.to_vec();
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(json);
        out.extend(frame(EPOCH_NS, b"PASS\n"));
        let chunks = [
            chunk(Stdout, out[..5].to_vec()),
            chunk(Stdout, out[5..].to_vec()),
        ];
        let decoded = decode(&chunks, true);
        assert_eq!(decoded[0].data, json);
        assert_eq!(decoded[1].data, b"PASS\n");
        // Without a record (the run ended during the build), the first chunk is empty, and
        // what a program printed is output, not a record.
        let decoded = decode(&[chunk(Stdout, frame(EPOCH_NS, b"\0\0CD"))], true);
        assert_eq!(
            (decoded[0].data.len(), &decoded[1].data[..]),
            (0, &b"\0\0CD"[..])
        );
        let decoded = decode(&[chunk(Stdout, RECORD_MAGIC[..3].to_vec())], true);
        assert_eq!(decoded.len(), 1);
    }

    #[test]
    fn live_pieces_come_as_soon_as_their_bytes_are_in() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut dec = LiveDecoder {
            live: tx,
            stdout: StreamDecoder::new(),
            stderr: StreamDecoder::new(),
        };
        let f = frame(EPOCH_NS + S, b"hello\n");
        dec.forward(chunk(StreamKind::Stdout, f[..HEADER].to_vec()));
        assert!(rx.try_recv().is_err());
        dec.forward(chunk(StreamKind::Stdout, f[HEADER..].to_vec()));
        let c = rx.try_recv().unwrap();
        assert_eq!(
            (c.data.as_slice(), c.at),
            (&b"hello\n"[..], stamp_of(EPOCH_NS + S))
        );
        dec.forward(chunk(StreamKind::Stderr, b"pl\0".to_vec()));
        assert_eq!(rx.try_recv().unwrap().data, b"pl");
        dec.finish();
        assert_eq!(rx.try_recv().unwrap().data, b"\0");
    }
}
