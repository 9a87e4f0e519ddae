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

use std::time::{Duration, SystemTime};

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerState;
use bollard::query_parameters::WaitContainerOptions;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Fuse, FusedFuture};
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::engine::{Attached, Engine, Exec, Guard, InputSink, Started};
use crate::sandbox::output::OutputCollector;
use crate::sandbox::{LiveOutput, RunOutcome, SandboxError, SandboxErrorKind, StreamKind};

/// 128 + SIGKILL.
const SIGKILL_EXIT: i64 = 137;

/// While an exec'd program runs, how soon its exit is first asked about, and the longest gap
/// between two asks (the gap doubles). See `drive_exec` for why it asks at all.
const FIRST_EXIT_POLL: Duration = Duration::from_millis(50);
const MAX_EXIT_POLL: Duration = Duration::from_millis(400);
/// Once the output has ended, the exit is already recorded (the engine records it before it ends
/// the stream); should it not be, ask again this often.
const EXIT_RECHECK: Duration = Duration::from_millis(5);
/// How long the output may go on after the program exited before its leftovers (background
/// processes still holding stdout) are killed.
const LEFTOVER_GRACE: Duration = Duration::from_millis(50);
/// How long a failed exec'd run waits for the engine's word on its end (see `Events`); it comes a
/// millisecond or so after the output ends.
const EXIT_EVENT_WAIT: Duration = Duration::from_millis(250);

/// Why a run was killed before it ended by itself.
enum Cut {
    Deadline,
    OutputCap,
}

/// Hands the program over and collects the run. The deadline counts from here.
pub(super) async fn drive(
    engine: &Engine,
    c: Started,
    program: Bytes,
    last_try: bool,
    live: Option<LiveOutput>,
) -> Result<Option<RunOutcome>, SandboxError> {
    let Started { guard, main, exec } = c;
    match exec {
        // The main process stays attached, its stdin open, until the run ends: with stdin_once
        // the engine would close its stdin on hang-up, it would exit, and the container with it.
        Some(exec) => {
            let outcome = drive_exec(engine, &guard, exec, program, last_try, live).await;
            drop(main);
            outcome
        }
        None => drive_main(engine, &guard, main, program, last_try, live).await,
    }
}

/// A collector holding what the process printed before it had the program.
fn collector_with(
    engine: &Engine,
    early: Vec<LogOutput>,
    live: Option<LiveOutput>,
) -> OutputCollector {
    let mut collector = OutputCollector::new(engine.limits.max_output_bytes, live);
    for item in early {
        if let Some((kind, data)) = stream_of(item) {
            // `usable` and `idle` keep no more than the cap.
            let _ = collector.push(kind, &data);
        }
    }
    collector
}

/// Writes the program, then half-closes: the engine turns that into EOF on the program's stdin
/// and keeps the output flowing. Never finishes, so that the connection's write half stays open
/// until the run ends.
async fn feed(mut input: InputSink, program: Bytes) {
    // A failed write means the program exited or closed its stdin without reading it all; that
    // is the program's business, and its output still tells the story.
    if input.write_all(&program).await.is_ok() {
        let _ = input.shutdown().await;
    }
    std::future::pending::<()>().await;
}

/// Ends a cut run: the container is killed, and the answer does not wait for the engine to
/// confirm the kill (that can take a second on a loaded host); the guard's forced removal follows
/// it either way. The caller hangs up first: the engine finishes a process's exit only once its
/// output is delivered, so a kill while we leave a flood unread would stall.
fn cut_short(guard: &Guard, cut: Cut, collector: OutputCollector) -> RunOutcome {
    let engine = guard.engine.clone();
    let doomed = guard.name.clone();
    tokio::spawn(async move { engine.kill(&doomed).await });
    match cut {
        Cut::Deadline => RunOutcome::TimedOut {
            output: collector.into_chunks(),
        },
        Cut::OutputCap => RunOutcome::OutputTooLarge {
            output: collector.into_chunks(),
        },
    }
}

/// One item of a run's output: `Err` ends the run, `Ok(None)` is the end of the stream.
fn next_chunk(
    engine: &Engine,
    item: Option<Result<LogOutput, DockerError>>,
) -> Result<Option<Option<(StreamKind, Bytes)>>, SandboxError> {
    match item {
        Some(Ok(item)) => Ok(Some(stream_of(item))),
        Some(Err(e)) => Err(engine.error(SandboxErrorKind::Io, "reading the program's output", e)),
        None => Ok(None),
    }
}

/// The run of a program in the container's main process: the output ends, and the exit is
/// reported, once the engine has torn the container down.
async fn drive_main(
    engine: &Engine,
    guard: &Guard,
    main: Attached,
    program: Bytes,
    last_try: bool,
    live: Option<LiveOutput>,
) -> Result<Option<RunOutcome>, SandboxError> {
    let Attached {
        mut output,
        input,
        early,
        ..
    } = main;
    let name = guard.name.as_str();
    let handed_over = SystemTime::now();
    let deadline = Instant::now() + engine.limits.timeout;
    let mut collector = collector_with(engine, early, live);
    let mut write = Box::pin(feed(input, program));
    // The wait request goes out now, alongside the program, rather than after the output ends:
    // it saves a round trip on every run.
    let exit = container_exit(engine, name);
    tokio::pin!(exit);
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    let mut status = None;
    let mut output_done = false;

    // Done when the output has ended (the engine may report the exit before it delivered the
    // last bytes) and the exit is known.
    let cut = loop {
        if output_done && status.is_some() {
            break None;
        }
        tokio::select! {
            biased;
            () = &mut expired => break Some(Cut::Deadline),
            item = output.next(), if !output_done => match next_chunk(engine, item)? {
                Some(Some((kind, data))) => {
                    if collector.push(kind, &data).is_err() {
                        break Some(Cut::OutputCap);
                    }
                }
                Some(None) => {}
                None => output_done = true,
            },
            result = &mut exit, if status.is_none() => status = Some(result?),
            () = &mut write => unreachable!("the writer never finishes"),
        }
    };
    if let Some(cut) = cut {
        drop(output);
        drop(write);
        return Ok(Some(cut_short(guard, cut, collector)));
    }

    let status = status.unwrap_or_default();
    let output = collector.into_chunks();
    if status != 0 {
        let state = engine
            .docker
            .inspect_container(name, None)
            .await
            .map_err(|e| engine.error(SandboxErrorKind::Io, "inspecting a finished run", e))?
            .state
            .unwrap_or_default();
        // A container that had stopped before the program arrived never ran it (it died idle,
        // or the engine restarted): its status is not the program's. The engine records when
        // its main process exited.
        if !last_try && stopped_before(&state, handed_over) {
            tracing::info!(
                container = name,
                "sandbox container was dead at hand-over; running the program again elsewhere"
            );
            return Ok(None);
        }
        // See `drive_exec` on SIGKILL and the memory limit. A child killed by the limit while
        // the program went on to fail: the container outlived the OOM, so the engine has set
        // its flag by the time it reports the container stopped.
        if status == SIGKILL_EXIT || state.oom_killed == Some(true) {
            return Ok(Some(RunOutcome::OutOfMemory { output }));
        }
    }
    Ok(Some(RunOutcome::Exited { status, output }))
}

/// The run of a program in the container's exec.
async fn drive_exec(
    engine: &Engine,
    guard: &Guard,
    exec: Exec,
    program: Bytes,
    last_try: bool,
    live: Option<LiveOutput>,
) -> Result<Option<RunOutcome>, SandboxError> {
    let Exec {
        id: exec,
        io:
            Attached {
                mut output,
                input,
                early,
                ..
            },
    } = exec;
    let name = guard.name.as_str();
    let handed_over = SystemTime::now();
    let deadline = Instant::now() + engine.limits.timeout;
    let mut collector = collector_with(engine, early, live);
    let mut write = Box::pin(feed(input, program));
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    // The exec's stream normally ends ~1 ms after the program exits, and the exit code is then
    // already recorded. But processes the program left in the background keep the stream open as
    // long as they hold its stdout (seconds, or up to the deadline), whereas a container's main
    // process takes everything with it when it exits. So that a run still ends when the program
    // does, a run that goes on asks for the exit now and then, and once the program has exited,
    // kills what is left after a short grace (the engine may still be delivering the last
    // bytes). The exit status is the program's, read before that kill.
    let mut poll_gap = FIRST_EXIT_POLL;
    let poll = tokio::time::sleep_until(Instant::now() + FIRST_EXIT_POLL);
    tokio::pin!(poll);
    let mut asking: Fuse<BoxFuture<'_, Result<Option<i64>, SandboxError>>> = Fuse::terminated();
    let mut leftovers_killed = false;
    let mut status = None;
    let mut output_done = false;

    let cut = loop {
        if output_done && status.is_some() {
            break None;
        }
        tokio::select! {
            biased;
            () = &mut expired => break Some(Cut::Deadline),
            item = output.next(), if !output_done => match next_chunk(engine, item)? {
                Some(Some((kind, data))) => {
                    if collector.push(kind, &data).is_err() {
                        break Some(Cut::OutputCap);
                    }
                }
                Some(None) => {}
                None => {
                    output_done = true;
                    if status.is_none() && asking.is_terminated() {
                        poll.as_mut().reset(Instant::now());
                    }
                }
            },
            result = &mut asking => match result? {
                Some(code) => {
                    status = Some(code);
                    if !output_done {
                        poll.as_mut().reset(Instant::now() + LEFTOVER_GRACE);
                    }
                }
                None => {
                    let gap = if output_done { EXIT_RECHECK } else { poll_gap };
                    poll_gap = (poll_gap * 2).min(MAX_EXIT_POLL);
                    poll.as_mut().reset(Instant::now() + gap);
                }
            },
            () = &mut poll, if asking.is_terminated() && !leftovers_killed => {
                if status.is_none() {
                    asking = exec_exit(engine, &exec).boxed().fuse();
                    // Re-armed when the answer comes.
                    poll.as_mut().reset(deadline);
                } else {
                    // Exited, and the output still runs after the grace: leftovers. Their output
                    // up to the kill is still read, to the end of the stream.
                    leftovers_killed = true;
                    let engine = guard.engine.clone();
                    let doomed = name.to_owned();
                    tokio::spawn(async move { engine.kill(&doomed).await });
                }
            }
            () = &mut write => unreachable!("the writer never finishes"),
        }
    };
    drop(asking);
    if let Some(cut) = cut {
        // Killing the container kills the exec'd program with it.
        drop(output);
        drop(write);
        return Ok(Some(cut_short(guard, cut, collector)));
    }

    let status = status.unwrap_or_default();
    let output = collector.into_chunks();
    // The engine's OOMKilled flag cannot be trusted on its own: it is only set when the container
    // stops, and even then, when the killed process was the last one, the cgroup is gone before
    // the engine hears of the OOM (a plain exit 137, nearly always, on the Debian 12 engine this
    // project targets). Inside a sandbox only the kernel's OOM killer and the program itself send
    // SIGKILL (our cuts returned above; a kill of leftovers comes after the status was read), so
    // a SIGKILL exit counts as the memory limit. That includes the killer picking the container's
    // idle main process: the container stops, and the exec'd program dies with it (SIGKILL, or an
    // exec the engine has forgotten, which `exec_exit` reports as SIGKILL). A dead container's
    // exec ends that way too, so a container that stopped before the hand-over is asked about.
    if status == SIGKILL_EXIT {
        let state = engine
            .docker
            .inspect_container(name, None)
            .await
            .ok()
            .and_then(|info| info.state);
        if !last_try && state.is_some_and(|s| stopped_before(&s, handed_over)) {
            tracing::info!(
                container = name,
                "sandbox container was dead at hand-over; running the program again elsewhere"
            );
            return Ok(None);
        }
        return Ok(Some(RunOutcome::OutOfMemory { output }));
    }
    // A child killed by the limit while the program went on to fail: the engine announced the
    // OOM as an event (its OOMKilled flag would only be set once the container stops).
    if status != 0
        && engine
            .events
            .oom_before_end(name, &exec, EXIT_EVENT_WAIT)
            .await
    {
        return Ok(Some(RunOutcome::OutOfMemory { output }));
    }
    Ok(Some(RunOutcome::Exited { status, output }))
}

/// The container's exit status, once it has stopped.
async fn container_exit(engine: &Engine, name: &str) -> Result<i64, SandboxError> {
    let mut wait = engine
        .docker
        .wait_container(name, None::<WaitContainerOptions>);
    match wait.next().await {
        Some(Ok(r)) => Ok(r.status_code),
        // bollard reports a nonzero exit as an error; for us it is just the status.
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => {
            Err(engine.error(SandboxErrorKind::Io, "waiting for the program to exit", e))
        }
        None => Err(SandboxError::new(
            SandboxErrorKind::Io,
            "waiting for the program to exit: the engine closed the wait without a status",
        )),
    }
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

/// The exec'd program's exit status, or `None` while it runs (or is still starting: the engine
/// marks an exec running a little after the start call returns). An exec that could not start
/// gets an exit code too (126 or 127). An exec the engine no longer knows went with its container
/// (the engine forgets a stopped container's execs), so its program was killed: SIGKILL.
async fn exec_exit(engine: &Engine, exec: &str) -> Result<Option<i64>, SandboxError> {
    match engine.docker.inspect_exec(exec).await {
        Ok(info) => Ok(info.exit_code.filter(|_| info.running != Some(true))),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(Some(SIGKILL_EXIT)),
        Err(e) => Err(engine.error(SandboxErrorKind::Io, "reading the program's exit status", e)),
    }
}

/// Which stream a piece of output belongs to; `None` for what is not program output.
fn stream_of(item: LogOutput) -> Option<(StreamKind, Bytes)> {
    match item {
        // Console is what the engine sends for a TTY; ours have none, but it is stdout if seen.
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            Some((StreamKind::Stdout, message))
        }
        LogOutput::StdErr { message } => Some((StreamKind::Stderr, message)),
        LogOutput::StdIn { .. } => None,
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
