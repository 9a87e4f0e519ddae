//! One cgroup per run. Rlimits cannot stand in for it: RLIMIT_AS bounds each process, not the
//! run, and RLIMIT_NPROC counts every process of the host user, so one run's fork bomb would
//! starve every other run. A cgroup bounds the run as a whole, records an OOM kill, and lists every
//! process of the run so that none can be missed when it is killed.
//!
//! cgroup v2 is used when the daemon's own cgroup offers the memory and pids controllers (systemd
//! with `Delegate=yes`); otherwise the v1 hierarchies (the hybrid layout of older systemd hosts,
//! which is what CI has). Run cgroups are made inside the daemon's own cgroup of each hierarchy, so
//! they stay within whatever limits and delegation the service manager gave the daemon. Their
//! names carry the daemon's pid so that a restarted daemon can sweep what a crashed one left.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procfs::process::Process;
use rustix::process::{
    Pid, PidfdFlags, Signal, kill_process, pidfd_open, pidfd_send_signal, test_kill_process,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sandbox::Limits;

const PREFIX: &str = "compilerd-";

/// How long killing a run may take before it is left to a background thread.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// bwrap's monitor outside the namespaces, besides the program's own processes (the output relay
/// inside counts as one of them, as a container's init does).
pub(super) const BWRAP_TASKS: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub(super) const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    pub(super) fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

#[derive(Debug)]
struct Hierarchy {
    /// The daemon's own cgroup here; run cgroups are made inside it.
    parent: PathBuf,
    v2: bool,
    controllers: Vec<Controller>,
    /// v2 `memory.swap.max` / v1 `memory.memsw.limit_in_bytes` exists: swap can be limited too.
    swap: bool,
    /// v2 `cgroup.kill` exists (Linux 5.14).
    kill_file: bool,
}

/// Where and how this daemon makes run cgroups.
#[derive(Debug)]
pub(super) struct Cgroups {
    hierarchies: Vec<Hierarchy>,
    /// `compilerd-<pid>-<instance>-`: unique among daemons and among sandboxes of one process.
    prefix: String,
    seq: AtomicU64,
    memory: u64,
    pids: u32,
    cpus: f64,
}

/// What detection found, with the reasons for whatever it could not use.
pub(super) struct Detected {
    pub cgroups: Option<Cgroups>,
    pub notes: Vec<String>,
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn proc_error(e: procfs::ProcError) -> io::Error {
    io::Error::other(e.to_string())
}

fn mounts() -> io::Result<Vec<Mount>> {
    let infos = Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(proc_error)?;
    Ok(infos
        .into_iter()
        .map(|m| Mount {
            // procfs leaves mountinfo's octal escapes in place.
            root: unescape(&m.root),
            point: PathBuf::from(unescape(&m.mount_point.to_string_lossy())),
            fstype: m.fs_type,
            super_opts: m.super_options.into_keys().collect::<Vec<_>>().join(","),
        })
        .collect())
}

/// The daemon's cgroups as (controllers joined by commas, path): "" is the v2 line.
fn own_cgroups() -> io::Result<Vec<(String, String)>> {
    let groups = Process::myself()
        .and_then(|p| p.cgroups())
        .map_err(proc_error)?;
    Ok(groups
        .into_iter()
        .map(|g| (g.controllers.join(","), g.pathname))
        .collect())
}

/// The directory of cgroup `path` in a hierarchy mounted at `mount` (which may show only a subtree).
fn locate(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())?
    };
    Some(mount.point.join(rel.trim_start_matches('/')))
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // One write call: cgroup files take one value per write.
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn pid_alive(pid: i32) -> bool {
    let Some(pid) = Pid::from_raw(pid) else {
        return false;
    };
    match test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// SIGKILL to a pid read from one of our cgroups; a pid that is gone already is no error.
fn kill_pid(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

fn procs_of(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Reads `key N` from a flat keyed file such as memory.events.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Makes and removes a scratch cgroup to prove that we may; returns which optional files it has.
fn probe(parent: &Path, name: &str, v2: bool) -> Result<(bool, bool), String> {
    let dir = parent.join(name);
    fs::create_dir(&dir)
        .map_err(|e| format!("cannot create cgroups in {}: {e}", parent.display()))?;
    let swap = if v2 {
        dir.join("memory.swap.max").exists()
    } else {
        dir.join("memory.memsw.limit_in_bytes").exists()
    };
    let kill_file = v2 && dir.join("cgroup.kill").exists();
    fs::remove_dir(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    Ok((swap, kill_file))
}

fn detect_v2(
    mounts: &[Mount],
    own: &[(String, String)],
    probe_name: &str,
) -> Result<Hierarchy, String> {
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or("cgroup v2 is not mounted")?;
    let path = own
        .iter()
        .find(|(c, _)| c.is_empty())
        .map(|(_, p)| p.as_str())
        .ok_or("the daemon has no cgroup v2 path")?;
    let dir = locate(mount, path).ok_or("the daemon's cgroup v2 is outside the mounted tree")?;
    let offered = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let offered: Vec<&str> = offered.split_whitespace().collect();
    let wanted: Vec<Controller> = Controller::ALL
        .into_iter()
        .filter(|c| offered.contains(&c.name()))
        .collect();
    if !wanted.contains(&Controller::Memory) || !wanted.contains(&Controller::Pids) {
        return Err(format!(
            "cgroup v2 {} offers controllers [{}], not memory and pids (on a hybrid host they belong to v1; under systemd, Delegate=yes hands them over)",
            dir.display(),
            offered.join(" ")
        ));
    }
    enable_subtree(&dir, &wanted, mount)?;
    let (swap, kill_file) = probe(&dir, probe_name, true)?;
    Ok(Hierarchy {
        parent: dir,
        v2: true,
        controllers: wanted,
        swap,
        kill_file,
    })
}

/// Enables the controllers for children of `dir`. v2 allows that only in a cgroup without
/// processes of its own (the root aside), so if the daemon is alone in its delegated cgroup it
/// moves itself into a leaf first, the layout systemd's delegation documentation asks for.
fn enable_subtree(dir: &Path, wanted: &[Controller], mount: &Mount) -> Result<(), String> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control).unwrap_or_default();
    if wanted
        .iter()
        .all(|c| enabled.split_whitespace().any(|e| e == c.name()))
    {
        return Ok(());
    }
    let line = wanted
        .iter()
        .map(|c| format!("+{}", c.name()))
        .collect::<Vec<_>>()
        .join(" ");
    match write_file(&control, &line) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EBUSY) || dir == mount.point => {
            return Err(format!(
                "cannot enable {line} in {}: {e}",
                control.display()
            ));
        }
        Err(_) => {}
    }
    let me = std::process::id() as i32;
    let others: Vec<i32> = procs_of(dir).into_iter().filter(|&p| p != me).collect();
    if !others.is_empty() {
        return Err(format!(
            "cgroup v2 {} holds other processes ({others:?}); give the daemon a delegated cgroup of its own (systemd: Delegate=yes)",
            dir.display()
        ));
    }
    let leaf = dir.join("compilerd-daemon");
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
    }
    write_file(&leaf.join("cgroup.procs"), &me.to_string())
        .map_err(|e| format!("cannot move the daemon into {}: {e}", leaf.display()))?;
    write_file(&control, &line)
        .map_err(|e| format!("cannot enable {line} in {}: {e}", control.display()))
}

fn detect_v1(
    mounts: &[Mount],
    own: &[(String, String)],
    probe_name: &str,
    notes: &mut Vec<String>,
) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for c in Controller::ALL {
        let has = |list: &str| list.split(',').any(|x| x == c.name());
        let Some(mount) = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && has(&m.super_opts))
        else {
            notes.push(format!("cgroup v1 {}: not mounted", c.name()));
            continue;
        };
        let Some(dir) = own
            .iter()
            .find(|(list, _)| has(list))
            .and_then(|(_, p)| locate(mount, p))
        else {
            notes.push(format!(
                "cgroup v1 {}: the daemon's cgroup is not visible",
                c.name()
            ));
            continue;
        };
        // Co-mounted controllers (cpu,cpuacct,...) share one directory.
        if let Some(h) = out.iter_mut().find(|h| h.parent == dir) {
            h.controllers.push(c);
            continue;
        }
        match probe(&dir, probe_name, false) {
            Ok((swap, _)) => out.push(Hierarchy {
                parent: dir,
                v2: false,
                controllers: vec![c],
                swap,
                kill_file: false,
            }),
            Err(e) => notes.push(format!("cgroup v1 {}: {e}", c.name())),
        }
    }
    out
}

impl Cgroups {
    /// Finds a usable cgroup setup for these limits; `instance` tells sandboxes of one process apart.
    pub(super) fn detect(limits: &Limits, instance: u64) -> Detected {
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid}-{instance}-");
        let probe_name = format!("{prefix}probe");
        let mut notes = Vec::new();
        let (mounts, own) = match (mounts(), own_cgroups()) {
            (Ok(m), Ok(o)) => (m, o),
            (Err(e), _) | (_, Err(e)) => {
                notes.push(format!("cannot read the process's cgroups: {e}"));
                return Detected {
                    cgroups: None,
                    notes,
                };
            }
        };
        let hierarchies = match detect_v2(&mounts, &own, &probe_name) {
            Ok(h) => vec![h],
            Err(e) => {
                notes.push(e);
                detect_v1(&mounts, &own, &probe_name, &mut notes)
            }
        };
        let cgroups = (!hierarchies.is_empty()).then(|| Cgroups {
            hierarchies,
            prefix,
            seq: AtomicU64::new(0),
            memory: limits.memory_bytes,
            pids: limits.pids,
            cpus: limits.cpus,
        });
        Detected { cgroups, notes }
    }

    pub(super) fn enforces(&self, c: Controller) -> bool {
        self.hierarchies.iter().any(|h| h.controllers.contains(&c))
    }

    /// "v2" or "v1"; and whether swap is limited along with memory.
    pub(super) fn describe(&self) -> String {
        let version = if self.hierarchies.iter().any(|h| h.v2) {
            "v2"
        } else {
            "v1"
        };
        let mut parts: Vec<String> = Vec::new();
        for h in &self.hierarchies {
            let names: Vec<&str> = h.controllers.iter().map(|c| c.name()).collect();
            let swap = if h.controllers.contains(&Controller::Memory) && !h.swap {
                " (swap not limited)"
            } else {
                ""
            };
            parts.push(format!(
                "{} in {}{swap}",
                names.join(","),
                h.parent.display()
            ));
        }
        format!("cgroup {version}: {}", parts.join("; "))
    }

    /// The directories runs are made in, for sweeping and for tests.
    pub(super) fn parents(&self) -> impl Iterator<Item = &Path> {
        self.hierarchies.iter().map(|h| h.parent.as_path())
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Kills and removes run cgroups left by daemons that are gone (a crash, a SIGKILL).
    pub(super) fn sweep(&self) -> Vec<PathBuf> {
        let mut swept = Vec::new();
        for h in &self.hierarchies {
            let Ok(entries) = fs::read_dir(&h.parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                    continue;
                };
                let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                    continue;
                };
                if pid_alive(pid) {
                    continue;
                }
                let dir = entry.path();
                for p in procs_of(&dir) {
                    kill_pid(p);
                }
                if remove_when_empty(&dir) {
                    swept.push(dir);
                }
            }
        }
        swept
    }

    /// Makes the cgroups of one run, with its limits set.
    pub(super) fn create(&self) -> io::Result<RunCgroup> {
        let name = format!(
            "{}{}",
            self.prefix,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let mut run = RunCgroup {
            dirs: Vec::with_capacity(self.hierarchies.len()),
            oom_file: None,
            kill_file: None,
            memory_dir: None,
            pids_dir: None,
            removed: false,
        };
        for h in &self.hierarchies {
            let dir = h.parent.join(&name);
            fs::create_dir(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
            run.dirs.push(dir.clone());
            for &c in &h.controllers {
                self.limit(&dir, h, c)?;
            }
            if h.controllers.contains(&Controller::Memory) {
                run.memory_dir = Some((dir.clone(), h.v2, h.swap));
            }
            if h.controllers.contains(&Controller::Pids) {
                run.pids_dir = Some(dir.clone());
            }
            if h.controllers.contains(&Controller::Memory) {
                run.oom_file = Some(dir.join(if h.v2 {
                    "memory.events"
                } else {
                    "memory.oom_control"
                }));
            }
            if h.kill_file {
                run.kill_file = Some(dir.join("cgroup.kill"));
            }
        }
        Ok(run)
    }

    fn limit(&self, dir: &Path, h: &Hierarchy, c: Controller) -> io::Result<()> {
        let pids = (self.pids.saturating_add(BWRAP_TASKS)).to_string();
        const PERIOD: u64 = 100_000;
        let quota = ((self.cpus * PERIOD as f64).round() as u64).max(1000);
        match (c, h.v2) {
            (Controller::Memory, true) => {
                write_file(&dir.join("memory.max"), &self.memory.to_string())?;
                if h.swap {
                    // Docker's --memory-swap equal to --memory: no swap on top.
                    write_file(&dir.join("memory.swap.max"), "0")?;
                }
            }
            (Controller::Memory, false) => {
                write_file(&dir.join("memory.limit_in_bytes"), &self.memory.to_string())?;
                if h.swap {
                    write_file(
                        &dir.join("memory.memsw.limit_in_bytes"),
                        &self.memory.to_string(),
                    )?;
                }
            }
            (Controller::Pids, _) => write_file(&dir.join("pids.max"), &pids)?,
            (Controller::Cpu, true) => {
                write_file(&dir.join("cpu.max"), &format!("{quota} {PERIOD}"))?
            }
            (Controller::Cpu, false) => {
                write_file(&dir.join("cpu.cfs_period_us"), &PERIOD.to_string())?;
                write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        Ok(())
    }
}

/// A process handle that cannot be confused with a later process of the same pid.
struct Pidfd(OwnedFd);

impl Pidfd {
    fn open(pid: i32) -> io::Result<Pidfd> {
        let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        Ok(Pidfd(pidfd_open(pid, PidfdFlags::empty())?))
    }

    fn kill(&self) {
        // The process may have exited since the pidfd was opened: nothing left to do then.
        let _ = pidfd_send_signal(&self.0, Signal::KILL);
    }

    /// A pidfd becomes readable when its process has exited.
    async fn exited(self) {
        // SAFETY: no crate wraps this; the AsyncFd owns the OwnedFd, which stays open and
        // unchanged until it is dropped.
        match unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) } {
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Removes an emptied cgroup, retrying briefly: a killed task leaves its cgroup a moment after
/// the signal. True once it is gone.
fn remove_when_empty(dir: &Path) -> bool {
    for attempt in 0..200u32 {
        match fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(_) => {
                for p in procs_of(dir) {
                    kill_pid(p);
                }
                std::thread::sleep(Duration::from_millis(1 + u64::from(attempt.min(50))));
            }
        }
    }
    false
}

/// The cgroups of one run. Dropping it without `remove` kills whatever is left in it and removes
/// it on a background thread.
#[derive(Debug)]
pub(super) struct RunCgroup {
    dirs: Vec<PathBuf>,
    oom_file: Option<PathBuf>,
    kill_file: Option<PathBuf>,
    /// The memory cgroup: its directory, whether it is v2, whether swap is limited there.
    memory_dir: Option<(PathBuf, bool, bool)>,
    pids_dir: Option<PathBuf>,
    removed: bool,
}

impl RunCgroup {
    /// `cgroup.procs` of each of the run's cgroups, for the launcher to write itself into.
    pub(super) fn procs_files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.dirs.iter().map(|d| d.join("cgroup.procs"))
    }

    pub(super) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Kills every process of the run and returns once all of them have exited: the run's end is
    /// when its cgroup is empty, whatever became of bwrap's monitor. False if something survived
    /// `KILL_PATIENCE` (a process stuck in the kernel); `Drop` then keeps trying in the background.
    pub(super) async fn kill_all(&self) -> bool {
        if let Some(f) = &self.kill_file {
            let _ = write_file(f, "1");
        }
        let Some(dir) = self.dirs.first() else {
            return true;
        };
        let member = format!("/{}", dir.file_name().unwrap_or_default().to_string_lossy());
        // Each round waits for what it killed; a new round finds only what was forked meanwhile,
        // and nothing can be forked once the namespace's pid 1 is dead.
        let rounds = async {
            loop {
                let pids = procs_of(dir);
                if pids.is_empty() {
                    return;
                }
                let mut exits = Vec::with_capacity(pids.len());
                let mut look_again = false;
                for pid in pids {
                    let pidfd = match Pidfd::open(pid) {
                        Ok(fd) => Some(fd),
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                        // No pidfds (before Linux 5.3): plain kill, then look again shortly.
                        Err(_) => None,
                    };
                    // The pid may have been recycled since it was listed: signal through the
                    // pidfd only if the process it pins is still in this run's cgroup.
                    let ours = Process::new(pid)
                        .and_then(|p| p.cgroups())
                        .map(|groups| groups.into_iter().any(|g| g.pathname.ends_with(&member)));
                    match (pidfd, ours) {
                        (Some(fd), Ok(true)) => {
                            fd.kill();
                            exits.push(fd);
                        }
                        (_, Ok(false)) => look_again = true,
                        (None, Ok(true)) | (_, Err(_)) => {
                            kill_pid(pid);
                            look_again = true;
                        }
                    }
                }
                for fd in exits {
                    fd.exited().await;
                }
                if look_again {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        tokio::time::timeout(KILL_PATIENCE, rounds).await.is_ok()
    }

    fn kill_listed(&self) {
        let Some(dir) = self.dirs.first() else {
            return;
        };
        for p in procs_of(dir) {
            kill_pid(p);
        }
    }

    /// Sends `sig` to every process of the program: those in the sandbox's pid namespace but its
    /// pid 1, the relay, which a live client's signal must not end (bwrap's own processes are
    /// outside that namespace).
    pub(super) fn signal_program(&self, sig: i32) {
        let Some(dir) = self.dirs.first() else {
            return;
        };
        let Some(sig) = Signal::from_named_raw(sig) else {
            return;
        };
        for pid in procs_of(dir) {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let Some(nspids) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
                continue;
            };
            let nspids: Vec<&str> = nspids.split_whitespace().collect();
            if nspids.len() < 2 || nspids.last() == Some(&"1") {
                continue;
            }
            if let Some(p) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
    }

    /// The run's memory high-water mark, as the kernel counts it for the cgroup.
    pub(super) fn peak_memory(&self) -> Option<u64> {
        let (dir, v2, _) = self.memory_dir.as_ref()?;
        let file = dir.join(if *v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        });
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Changes the run's memory and process limits before its program arrives (a run's own
    /// limits; see `run::limits`). Swap stays off: memory+swap follows memory, in the order the
    /// kernel accepts (v1 wants memsw >= memory at every step).
    pub(super) fn set_limits(&self, memory: u64, pids: u32) -> io::Result<()> {
        if let Some((dir, v2, swap)) = &self.memory_dir {
            let m = memory.to_string();
            if *v2 {
                write_file(&dir.join("memory.max"), &m)?;
            } else {
                let limit = dir.join("memory.limit_in_bytes");
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                let current: u64 = fs::read_to_string(&limit)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                if *swap && memory > current {
                    write_file(&memsw, &m)?;
                }
                write_file(&limit, &m)?;
                if *swap && memory <= current {
                    write_file(&memsw, &m)?;
                }
            }
        }
        if let Some(dir) = &self.pids_dir {
            write_file(
                &dir.join("pids.max"),
                &pids.saturating_add(BWRAP_TASKS).to_string(),
            )?;
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process of this run.
    pub(super) fn oom_killed(&self) -> bool {
        self.oom_file
            .as_deref()
            .and_then(|f| keyed(f, "oom_kill"))
            .is_some_and(|n| n > 0)
    }

    /// Removes the run's cgroups; fails (leaving the rest to `Drop`) if a process is still inside.
    pub(super) fn remove(&mut self) -> io::Result<()> {
        while let Some(dir) = self.dirs.last() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            }
            self.dirs.pop();
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if self.removed || self.dirs.is_empty() {
            return;
        }
        if let Some(f) = &self.kill_file {
            let _ = write_file(f, "1");
        }
        self.kill_listed();
        if self.remove().is_ok() {
            return;
        }
        let dirs = std::mem::take(&mut self.dirs);
        let _ = std::thread::Builder::new()
            .name("compilerd-cgroup-reap".into())
            .spawn(move || {
                for dir in dirs.iter().rev() {
                    if !remove_when_empty(dir) {
                        tracing::error!(cgroup = %dir.display(), "a run's cgroup still holds processes after SIGKILL; it is left behind");
                    }
                }
            });
    }
}
