//! One stage of a run, as a sandbox runs it (see docs/design.md, "The run model"): a command line,
//! files written under /tmp, stdin, CPU and wall limits, and the files to send back after a clean
//! exit (a compile stage's output, which a later stage gets as files). The relay reads it as a
//! header on its stdin (`relay/job.c`) and reports the stage's measurements before its exit.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::supervise::Report;
use super::{Chunk, Limits, RunOutcome};

/// What the relay reads first when the daemon hands a legacy program over: run the sandbox's own
/// command, the program follows on stdin.
pub const LEGACY_HEADER: &[u8; 8] = b"CJOB\0\0\0\0";
const JOB_MAGIC: &[u8; 8] = b"CJOB\0\0\0\x01";

/// The relay's input for a legacy run: the header, then the program.
pub fn legacy_input(program: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(LEGACY_HEADER.len() + program.len());
    b.put_slice(LEGACY_HEADER);
    b.put_slice(program);
    b.freeze()
}

/// A file of a stage: a relative path (checked by `run::request`) and its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobFile {
    pub path: String,
    pub executable: bool,
    pub content: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The command line, run with execvp in /tmp.
    pub argv: Vec<String>,
    pub files: Vec<JobFile>,
    pub stdin: Bytes,
    /// Wall time, CPU time, memory, processes and output of this stage.
    pub limits: Limits,
    pub cpu_time: Option<Duration>,
    /// Sent back after an exit with status 0, as long as they fit in `keep_max` together.
    pub keep: Vec<String>,
    pub keep_max: u64,
    /// The stage's stdin comes live through `LiveInput` (`stdin` is then not sent).
    pub live_stdin: bool,
}

/// What a live client sends a running stage.
#[derive(Debug, PartialEq, Eq)]
pub enum StdinEvent {
    Data(Bytes),
    /// The end of its stdin.
    Eof,
    /// A signal for every process of the stage.
    Signal(i32),
}

/// A running stage's live input; its sender's end closes stdin too.
pub type LiveInput = tokio::sync::mpsc::UnboundedReceiver<StdinEvent>;

impl Job {
    /// The header the relay reads on its stdin.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(
            256 + self.stdin.len() + self.files.iter().map(|f| f.content.len()).sum::<usize>(),
        );
        let str32 = |b: &mut BytesMut, s: &[u8]| {
            b.put_u32(s.len() as u32);
            b.put_slice(s);
        };
        b.put_slice(JOB_MAGIC);
        b.put_u32(self.argv.len() as u32);
        for a in &self.argv {
            str32(&mut b, a.as_bytes());
        }
        b.put_u32(self.files.len() as u32);
        for f in &self.files {
            str32(&mut b, f.path.as_bytes());
            b.put_u32(if f.executable { 0o755 } else { 0o644 });
            b.put_u64(f.content.len() as u64);
            b.put_slice(&f.content);
        }
        if self.live_stdin {
            b.put_u64(u64::MAX);
        } else {
            b.put_u64(self.stdin.len() as u64);
            b.put_slice(&self.stdin);
        }
        let ms =
            |d: Option<Duration>| d.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32);
        b.put_u32(ms(self.cpu_time));
        b.put_u32(ms(Some(self.limits.timeout)));
        b.put_u32(self.keep.len() as u32);
        for k in &self.keep {
            str32(&mut b, k.as_bytes());
        }
        b.put_u64(self.keep_max);
        b.freeze()
    }

    /// How long the daemon waits before it kills the sandbox itself: the relay stops the stage at
    /// its wall time and reports it; this catches a relay that cannot.
    pub fn deadline(&self) -> Duration {
        self.limits.timeout + Duration::from_secs(1)
    }
}

/// Which limit ended a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    Time,
    Cpu,
    Memory,
    Output,
}

/// What the relay measured of a stage (see `relay/job.c`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measures {
    pub status: i64,
    /// The signal that ended the stage's main process, if one did.
    pub signal: Option<i32>,
    /// 1 CPU, 2 wall time, as the relay saw them.
    pub limit: u32,
    pub cpu: Duration,
    pub wall: Duration,
    pub peak_memory: Option<u64>,
}

/// One stage's outcome: how it ended (the same table as a legacy run's) and its measurements.
#[derive(Debug, PartialEq)]
pub struct StageOutcome {
    pub outcome: RunOutcome,
    /// `None` when the relay never reported (the daemon killed the sandbox first).
    pub measures: Option<Measures>,
    /// The wall time the daemon saw, from asking for a sandbox to the end (a cold start included):
    /// the wall time of a run the relay could not measure.
    pub elapsed: Duration,
    /// The kept files, after a clean exit.
    pub files: Vec<JobFile>,
}

impl StageOutcome {
    pub fn new(outcome: RunOutcome, report: Report, elapsed: Duration) -> StageOutcome {
        StageOutcome {
            outcome,
            measures: report.measures,
            elapsed,
            files: report.kept,
        }
    }

    pub fn output(&self) -> &[Chunk] {
        match &self.outcome {
            RunOutcome::Exited { output, .. }
            | RunOutcome::OutputTooLarge { output }
            | RunOutcome::TimedOut { output }
            | RunOutcome::OutOfMemory { output } => output,
        }
    }

    /// The limit that ended the stage, if one did.
    pub fn limit_hit(&self) -> Option<LimitHit> {
        match (&self.outcome, self.measures.map(|m| m.limit)) {
            (RunOutcome::OutputTooLarge { .. }, _) => Some(LimitHit::Output),
            (RunOutcome::OutOfMemory { .. }, _) => Some(LimitHit::Memory),
            (_, Some(1)) => Some(LimitHit::Cpu),
            (RunOutcome::TimedOut { .. }, _) | (_, Some(2)) => Some(LimitHit::Time),
            _ => None,
        }
    }

    /// The exit code, when the stage's process exited by itself.
    pub fn exit_code(&self) -> Option<i64> {
        match (&self.outcome, self.measures) {
            (RunOutcome::Exited { .. }, Some(m)) if m.signal.is_some() => None,
            (RunOutcome::Exited { status, .. }, _) => Some(*status),
            _ => None,
        }
    }

    /// The signal that ended it: the relay's word, or SIGKILL for a stage the daemon killed.
    pub fn signal(&self) -> Option<i32> {
        match &self.outcome {
            RunOutcome::Exited { .. } => self.measures.and_then(|m| m.signal),
            _ => Some(libc::SIGKILL),
        }
    }

    /// Whether the stage ran to a clean exit (a compile stage's success).
    pub fn succeeded(&self) -> bool {
        self.exit_code() == Some(0) && self.limit_hit().is_none()
    }
}

/// A signal's name, as Piston and shells write it.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("SIG{sig}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let job = Job {
            argv: vec!["a".into()],
            files: vec![JobFile {
                path: "m".into(),
                executable: false,
                content: Bytes::from_static(b"xy"),
            }],
            stdin: Bytes::from_static(b"in"),
            limits: Limits {
                timeout: Duration::from_millis(5),
                ..Limits::default()
            },
            cpu_time: None,
            keep: vec![],
            keep_max: 7,
            live_stdin: false,
        };
        let b = job.encode();
        let mut want =
            b"CJOB\0\0\0\x01\0\0\0\x01\0\0\0\x01a\0\0\0\x01\0\0\0\x01m\0\0\x01\xa4".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(b"xy");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(b"in");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&b[..], &want[..]);
        assert_eq!(signal_name(9), "SIGKILL");
    }
}
