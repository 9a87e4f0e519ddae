//! One run in a started container: hand the program over, collect the output under the cap and
//! the deadline, and read how it ended. An armed container's program goes to its exec, any
//! other's to its main process (see `engine` for why there are two ways).
//!
//! A pooled container can die unnoticed just before the hand-over: its stream may end a little
//! after the engine already reports it stopped. Asking the engine before every hand-over would
//! cost a round trip (5-15 ms on a busy host, much of a pooled run), so it is asked after the run
//! instead, and only when the run failed the way a dead container's does: if the engine says the
//! container stopped before the hand-over (`stopped_before`), it never ran the program. Then
//! `drive` answers `None` and the caller runs the program again in another container: a program's
//! run has no effect outside its container, so running it twice is safe. With `last_try`, the
//! answer is the run's whatever the container's state (never `None`).

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerState;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::engine::{Attached, Engine, Guard, InputSink, Started};
use crate::sandbox::job::{LiveInput, StdinEvent, signal_name};
use crate::sandbox::output::OutputCollector;
use crate::sandbox::supervise::{Ending, Report, supervise};
use crate::sandbox::{LiveOutput, RunOutcome, SandboxError, SandboxErrorKind};

/// The memory high-water mark of container `id` as the host's cgroups count it (the engine's
/// cgroupfs and systemd layouts, v1 and v2); `None` when the engine is not on this host.
fn host_peak_memory(id: &str) -> Option<u64> {
    if id.is_empty() {
        return None;
    }
    [
        format!("/sys/fs/cgroup/memory/docker/{id}/memory.max_usage_in_bytes"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.max_usage_in_bytes"),
        format!("/sys/fs/cgroup/docker/{id}/memory.peak"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.peak"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
}

/// 128 + SIGKILL: what a run whose relay was killed under it reports.
const SIGKILL_EXIT: i64 = 137;

/// How long a run whose relay vanished waits for the engine's word on an OOM kill (see
/// `Events`); it comes a millisecond or so after the output ends.
const OOM_EVENT_WAIT: Duration = Duration::from_millis(250);
/// How long a run in a container's main process waits for the engine's word of its death before
/// its OOMKilled flag is read: the relay's stream ends first, and a gVisor sandbox killed whole
/// at the memory limit takes the engine longer to process than the exit of a process.
const DEATH_EVENT_WAIT: Duration = Duration::from_secs(1);

/// Hands the program over and collects the run. The deadline counts from here.
///
/// The program goes to the armed exec if there is one, else to the main process. Either way the
/// process that reads it is the relay (see `relay`), which reports the program's exit at the end
/// of its stream, a millisecond after the program exits, and stops forwarding the output of
/// anything the program left in the background a moment later; the container is removed after
/// the run, which ends those.
///
/// `program` is what the relay reads: its header, then a legacy program. `timeout` and
/// `max_output_bytes` are the run's; `report` gets a job's measurements and kept files.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drive(
    engine: &Engine,
    c: Started,
    program: Bytes,
    timeout: Duration,
    max_output_bytes: usize,
    last_try: bool,
    live: Option<LiveOutput>,
    report: &mut Report,
    live_input: Option<LiveInput>,
) -> Result<Option<RunOutcome>, SandboxError> {
    let Started {
        guard,
        id,
        main,
        exec,
    } = c;
    // With an exec, the main process stays attached, its stdin open, until the run ends: with
    // stdin_once the engine would close its stdin on hang-up, it would exit, and the container
    // with it.
    let (io, exec_id, _main) = match exec {
        Some(exec) => (exec.io, Some(exec.id), Some(main)),
        None => (main, None, None),
    };
    let Attached {
        output,
        input,
        early,
        ..
    } = io;
    let name = guard.name.as_str();
    let handed_over = SystemTime::now();
    let deadline = Instant::now() + timeout;
    let mut collector = OutputCollector::new(max_output_bytes, live);
    // What the relay wrote before it had the program (`usable` and `idle` keep no more than the
    // cap), then the rest.
    // A program in an exec is also over once its container stopped: the engine may never end
    // the exec's stream then (see `events`; under gVisor the memory limit stops the container).
    let died: Pin<Box<dyn Future<Output = ()> + Send + '_>> = match exec_id {
        Some(_) => Box::pin(engine.events.died(name)),
        None => Box::pin(std::future::pending()),
    };
    let frames = futures_util::stream::iter(early.into_iter().map(Ok))
        .chain(output)
        .take_until(died)
        .filter_map(|item| std::future::ready(relay_bytes(engine, name, item)));
    let ending = supervise(
        frames,
        &mut collector,
        report,
        deadline,
        feed(input, program, live_input, engine, name),
    )
    .await?;

    let output = match ending {
        Ending::Deadline => {
            return Ok(Some(cut_short(
                &guard,
                RunOutcome::TimedOut {
                    output: collector.into_chunks(),
                },
            )));
        }
        Ending::OverCap => {
            return Ok(Some(cut_short(
                &guard,
                RunOutcome::OutputTooLarge {
                    output: collector.into_chunks(),
                },
            )));
        }
        Ending::Exited(exit) => {
            let output = collector.into_chunks();
            // A relay that cannot see its cgroup (gVisor's kernel has none) leaves the peak to
            // the host's count, read while the container still exists.
            if let Some(m) = report.measures.as_mut()
                && m.peak_memory.is_none()
            {
                m.peak_memory = host_peak_memory(&id);
            }
            // The memory cgroup's own count, read by the relay: a program that exits 137 by
            // itself is not a memory kill, and a child killed by the limit while the program
            // went on is one.
            let oom = match exit.oom_kills {
                Some(kills) => kills > 0,
                None => exit.status != 0 && oom_flagged(engine, name, exec_id.as_deref()).await,
            };
            return Ok(Some(if oom {
                RunOutcome::OutOfMemory { output }
            } else {
                RunOutcome::Exited {
                    status: exit.status,
                    output,
                }
            }));
        }
        Ending::Vanished => collector.into_chunks(),
    };

    // The relay's stream ended without the program's exit: the container died (the memory limit,
    // or it was dead before the hand-over), or the program killed its relay.
    let state = engine
        .docker
        .inspect_container(name, None)
        .await
        .map_err(|e| engine.error(SandboxErrorKind::Io, "inspecting a finished run", e))?
        .state
        .unwrap_or_default();
    // A container that had stopped before the program arrived never ran it (it died idle, or the
    // engine restarted): its end is not the program's. The engine records when it stopped.
    if !last_try && stopped_before(&state, handed_over) {
        tracing::info!(
            container = name,
            "sandbox container was dead at hand-over; running the program again elsewhere"
        );
        return Ok(None);
    }
    // Its `oom` event as well as its flag: once, after a gVisor sandbox stopped on the limit, the
    // flag was seen unset (the exit's own view is written over it) while the event had come.
    if state.oom_killed == Some(true)
        || engine.events.oom_seen(name)
        || oom_flagged(engine, name, exec_id.as_deref()).await
    {
        return Ok(Some(RunOutcome::OutOfMemory { output }));
    }
    Ok(Some(RunOutcome::Exited {
        status: SIGKILL_EXIT,
        output,
    }))
}

/// Whether the engine saw the memory limit kill a process of the container: its OOMKilled flag
/// (set once the container stops) or, for an exec, the OOM event it announced before the exec
/// ended.
async fn oom_flagged(engine: &Engine, name: &str, exec: Option<&str>) -> bool {
    let seen = match exec {
        Some(exec) => {
            engine
                .events
                .oom_before_end(name, exec, OOM_EVENT_WAIT)
                .await
        }
        // The engine's state says OOMKilled only once it has processed the death.
        None => engine.events.oom_before_death(name, DEATH_EVENT_WAIT).await,
    };
    if seen {
        return true;
    }
    engine
        .docker
        .inspect_container(name, None)
        .await
        .ok()
        .and_then(|info| info.state)
        .is_some_and(|s| s.oom_killed == Some(true))
}

/// The relay's frames from the engine's stream. The relay writes only frames to stdout; its
/// stderr carries nothing but its own complaints, which go to the log.
fn relay_bytes(
    engine: &Engine,
    name: &str,
    item: Result<LogOutput, DockerError>,
) -> Option<Result<Bytes, SandboxError>> {
    match item {
        // Console is what the engine sends for a TTY; ours have none.
        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => Some(Ok(message)),
        Ok(LogOutput::StdErr { message }) => {
            tracing::warn!(container = name, relay = %String::from_utf8_lossy(&message).trim(), "the output relay complained");
            None
        }
        Ok(LogOutput::StdIn { .. }) => None,
        Err(e) => Some(Err(engine.error(
            SandboxErrorKind::Io,
            "reading the program's output",
            e,
        ))),
    }
}

/// Writes the program, then half-closes: the engine turns that into EOF on the program's stdin
/// and keeps the output flowing. Never finishes, so that the connection's write half stays open
/// until the run ends.
///
/// With `live`, stdin stays open after the header for what a live client sends (the end of its
/// stdin is the half-close), and its signals go to the program's processes through the engine.
async fn feed(
    mut input: InputSink,
    program: Bytes,
    live: Option<LiveInput>,
    engine: &Engine,
    name: &str,
) {
    // A failed write means the program exited or closed its stdin without reading it all; that
    // is the program's business, and its output still tells the story.
    let mut open = input.write_all(&program).await.is_ok();
    if let Some(mut events) = live {
        while let Some(event) = events.recv().await {
            match event {
                StdinEvent::Data(data) if open => open = input.write_all(&data).await.is_ok(),
                StdinEvent::Data(_) => {}
                StdinEvent::Eof => {
                    if open {
                        let _ = input.shutdown().await;
                    }
                    open = false;
                }
                StdinEvent::Signal(sig) => {
                    let name_of = signal_name(sig);
                    engine
                        .signal_program(name, name_of.trim_start_matches("SIG"))
                        .await
                }
            }
        }
    }
    if open {
        let _ = input.shutdown().await;
    }
    std::future::pending::<()>().await;
}

/// Ends a cut run: the container is killed, and the answer does not wait for the engine to
/// confirm the kill (that can take a second on a loaded host); the guard's forced removal follows
/// it either way. The stream was dropped first: the engine finishes a process's exit only once
/// its output is delivered, so a kill while we leave a flood unread would stall.
fn cut_short(guard: &Guard, outcome: RunOutcome) -> RunOutcome {
    let engine = guard.engine.clone();
    let doomed = guard.name.clone();
    tokio::spawn(async move { engine.kill(&doomed).await });
    outcome
}

/// Whether the engine's `state` of a container says it stopped before `when`; unknown counts as
/// no (the run's answer stands).
fn stopped_before(state: &ContainerState, when: SystemTime) -> bool {
    // Never finished reads "0001-01-01T00:00:00Z", which does not parse (before 1970): no.
    match state
        .finished_at
        .as_deref()
        .map(humantime::parse_rfc3339_weak)
    {
        Some(Ok(at)) => at < when,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn stopped_before_reads_the_engines_clock() {
        let at = |s: &str| ContainerState {
            finished_at: Some(s.to_owned()),
            ..Default::default()
        };
        let handed_over = humantime::parse_rfc3339_weak("2026-11-26T15:30:00Z").unwrap();
        assert!(stopped_before(
            &at("2026-11-26T15:29:59.999999999Z"),
            handed_over
        ));
        assert!(!stopped_before(
            &at("2026-11-26T15:30:00.040Z"),
            handed_over
        ));
        assert!(!stopped_before(&at("0001-01-01T00:00:00Z"), handed_over));
        assert!(!stopped_before(&ContainerState::default(), handed_over));
    }

    #[test]
    fn engine_timestamps_parse() {
        let at = humantime::parse_rfc3339_weak("2026-11-26T15:30:00.123456789Z").unwrap();
        let since = at.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(since.subsec_nanos(), 123_456_789);
        assert_eq!(since.as_secs() % 60, 0);
        // What the engine says of a container that never stopped.
        assert!(humantime::parse_rfc3339_weak("0001-01-01T00:00:00Z").is_err());
    }
}
