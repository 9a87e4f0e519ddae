//! The one loop that watches a run on every backend: it hands the program over, reads the relay's
//! frames into the output collector, and stops at the first of the program's exit, the output cap
//! and the deadline. What the ending means (a memory kill, a sandbox that failed) is the
//! backend's to decide.

use std::future::Future;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use super::job::{JobFile, Measures};
use super::output::OutputCollector;
use super::relay::{Event, Exit, Frames};
use super::{SandboxError, SandboxErrorKind};

/// What a job's relay reports besides output: its measurements and kept files.
#[derive(Debug, Default)]
pub struct Report {
    pub measures: Option<Measures>,
    pub kept: Vec<JobFile>,
}

/// How the watch over a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The relay reported the program's exit; everything it wrote came before.
    Exited(Exit),
    /// The relay's stream ended without that report: the relay died with its sandbox, was
    /// killed, or never started.
    Vanished,
    /// The output passed the cap; the run must be killed.
    OverCap,
    /// The deadline passed; the run must be killed.
    Deadline,
}

/// Watches one run. `frames` is the relay's stdout; `feed` writes the program to the sandbox's
/// stdin, and is polled alongside until it finishes (it may never finish).
pub async fn supervise<S, F>(
    mut frames: S,
    collector: &mut OutputCollector,
    report: &mut Report,
    deadline: Instant,
    feed: F,
) -> Result<Ending, SandboxError>
where
    S: Stream<Item = Result<Bytes, SandboxError>> + Unpin,
    F: Future<Output = ()>,
{
    let mut decoder = Frames::default();
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired, feed);
    let mut feeding = true;
    loop {
        tokio::select! {
            biased;
            () = &mut expired => return Ok(Ending::Deadline),
            item = frames.next() => match item {
                Some(Ok(bytes)) => {
                    let events = decoder
                        .feed(bytes)
                        .map_err(|e| SandboxError::new(SandboxErrorKind::Internal, e.to_string()))?;
                    for event in events {
                        match event {
                            Event::Output(kind, data) => {
                                if collector.push(kind, &data).is_err() {
                                    return Ok(Ending::OverCap);
                                }
                            }
                            Event::Measured(m) => report.measures = Some(m),
                            Event::Kept(f) => report.kept.push(f),
                            Event::Exit(exit) => return Ok(Ending::Exited(exit)),
                        }
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(Ending::Vanished),
            },
            () = &mut feed, if feeding => feeding = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::StreamKind;
    use futures_util::stream;
    use std::time::Duration;

    fn frame(kind: u8, payload: &[u8]) -> Bytes {
        let mut v = vec![kind];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        Bytes::from(v)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn exit_after_output_in_order() {
        let items = vec![
            Ok(frame(b'o', b"a")),
            Ok(frame(b'e', b"b")),
            Ok(frame(b'x', &[0, 0, 0, 2, 0, 0, 0, 0])),
        ];
        let mut c = OutputCollector::new(100, None);
        let ending = supervise(
            stream::iter(items),
            &mut c,
            &mut Report::default(),
            later(),
            async {},
        )
        .await
        .unwrap();
        assert_eq!(
            ending,
            Ending::Exited(Exit {
                status: 2,
                oom_kills: Some(0)
            })
        );
        let kinds: Vec<_> = c.into_chunks().iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [StreamKind::Stdout, StreamKind::Stderr]);
    }

    #[tokio::test]
    async fn cap_stops_mid_frame_and_a_silent_end_is_vanished() {
        let mut c = OutputCollector::new(3, None);
        let items = vec![Ok(frame(b'o', b"abcdef"))];
        let ending = supervise(
            stream::iter(items),
            &mut c,
            &mut Report::default(),
            later(),
            async {},
        )
        .await;
        assert_eq!(ending.unwrap(), Ending::OverCap);
        let mut c = OutputCollector::new(3, None);
        let mut report = Report::default();
        let ending = supervise(
            stream::iter(vec![Ok(frame(b'o', b"a"))]),
            &mut c,
            &mut report,
            later(),
            async {},
        );
        assert_eq!(ending.await.unwrap(), Ending::Vanished);
    }

    #[tokio::test]
    async fn deadline_ends_a_silent_run() {
        let mut c = OutputCollector::new(3, None);
        let mut report = Report::default();
        let ending = supervise(
            stream::pending(),
            &mut c,
            &mut report,
            Instant::now() + Duration::from_millis(20),
            std::future::pending(),
        );
        assert_eq!(ending.await.unwrap(), Ending::Deadline);
    }
}
