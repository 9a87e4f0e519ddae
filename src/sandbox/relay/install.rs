//! Puts the embedded relay binary where a sandbox can mount it from.

use std::ffi::CString;
use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/compilerd-relay"));

/// The relay written to the host; removed again when dropped.
#[derive(Debug)]
pub struct InstalledRelay {
    dir: PathBuf,
    path: PathBuf,
}

impl InstalledRelay {
    /// Writes the relay into a new directory under systemd's `RUNTIME_DIRECTORY` (which, unlike
    /// a private /tmp, the Docker engine can see) or else the temporary directory. The directory
    /// is created here, so no one else can have planted anything in it; it can be traversed (a
    /// bwrap that dropped root must reach the file) but not listed or written by anyone else.
    pub fn install() -> io::Result<InstalledRelay> {
        let base = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|dirs| std::env::split_paths(&dirs).next())
            .filter(|d| d.is_absolute())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("compilerd-relay-{:016x}", rand::random::<u64>()));
        DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create {} ({e}): point TMPDIR (or systemd's RuntimeDirectory=) at a \
                     writable directory",
                    dir.display()
                ),
            )
        })?;
        if on_noexec_mount(&dir)? {
            let _ = std::fs::remove_dir(&dir);
            return Err(io::Error::other(format!(
                "{} is on a noexec mount, from which no sandbox could run the relay: \
                 point TMPDIR (or systemd's RuntimeDirectory=) at another file system",
                base.display()
            )));
        }
        let installed = InstalledRelay {
            path: dir.join("relay"),
            dir,
        };
        write_from_child(&installed.path)?;
        // Explicitly, whatever the umask: read and run by anyone, written by no one but us.
        std::fs::set_permissions(&installed.path, Permissions::from_mode(0o555))?;
        std::fs::set_permissions(&installed.dir, Permissions::from_mode(0o711))?;
        super::report_largest_write();
        Ok(installed)
    }

    /// The relay binary on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `path` holding the relay, written by a forked child of ours rather than by us.
///
/// Linux refuses to exec a file while any process holds it open for writing (ETXTBSY). Had we
/// opened it, a child forked meanwhile by another thread of this process (another sandbox's
/// spawn, or anything a library starts) would inherit that descriptor and keep it until its own
/// exec, and an exec of the relay in that window fails. No lock can keep every fork in the
/// process out of the window, so no descriptor that can write this file ever exists here: only
/// the writer child holds one, and it has closed it (by exiting) before we return. A fork, not
/// a spawn, as there is no program to exec; it happens once per sandbox, at startup.
fn write_from_child(path: &Path) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: the child of a multi-threaded process may only make async-signal-safe calls
    // before it exits; `write_and_exit` makes raw system calls on memory prepared before the
    // fork (the path, the embedded binary), allocates nothing, takes no lock, cannot panic.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; this is the child, and it never returns.
        unsafe { write_and_exit(&path) }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the child forked above, which is ours alone to reap.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok(()),
        (true, errno) => Err(io::Error::from_raw_os_error(errno)),
        _ => Err(io::Error::other(format!(
            "the process writing the relay died (wait status {status})"
        ))),
    }
}

/// The writer child: creates `path`, writes the relay, syncs and exits 0, or exits with the
/// errno of the first call that failed.
///
/// # Safety
/// Only in a freshly forked child, which it ends.
unsafe fn write_and_exit(path: &std::ffi::CStr) -> ! {
    fn errno() -> i32 {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }
    // SAFETY: raw system calls on a valid C string and on the static binary's own bytes.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o700,
        );
        if fd < 0 {
            libc::_exit(errno());
        }
        let mut done = 0;
        while done < BINARY.len() {
            let n = libc::write(fd, BINARY.as_ptr().add(done).cast(), BINARY.len() - done);
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                libc::_exit(errno());
            }
            if n == 0 {
                libc::_exit(libc::EIO);
            }
            done += n.unsigned_abs();
        }
        if libc::fsync(fd) != 0 || libc::close(fd) != 0 {
            libc::_exit(errno());
        }
        libc::_exit(0)
    }
}

/// Whether `dir` is on a file system mounted noexec (a bind mount of a file keeps that flag).
fn on_noexec_mount(dir: &Path) -> io::Result<bool> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `st` is written by statvfs before it is read; no
    // crate we depend on wraps statvfs.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        st.assume_init()
    };
    Ok(st.f_flag & libc::ST_NOEXEC != 0)
}

impl Drop for InstalledRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn installed_where_no_one_else_can_write_and_removed_after() {
        let relay = InstalledRelay::install().unwrap();
        let file = std::fs::metadata(relay.path()).unwrap();
        let dir = std::fs::metadata(relay.path().parent().unwrap()).unwrap();
        assert_eq!(file.mode() & 0o7777, 0o555);
        assert_eq!(dir.mode() & 0o7777, 0o711);
        assert_eq!(file.len(), BINARY.len() as u64);
        let path = relay.path().to_path_buf();
        drop(relay);
        assert!(!path.exists() && !path.parent().unwrap().exists());
    }

    /// Runs the relay with `args` (prefixed by `before`, e.g. setpriv) and decodes what it sent.
    fn relay(before: &[&str], args: &[&str]) -> (String, Option<i64>, String) {
        use crate::sandbox::relay::{Event, Frames};
        let relay = InstalledRelay::install().unwrap();
        let mut cmd = match before.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest).arg(relay.path());
                c
            }
            None => std::process::Command::new(relay.path()),
        };
        let out = cmd
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let mut stdout = String::new();
        let mut exit = None;
        for event in Frames::default()
            .feed(bytes::Bytes::from(out.stdout))
            .unwrap()
        {
            match event {
                Event::Output(_, data) => stdout.push_str(&String::from_utf8_lossy(&data)),
                Event::Exit(e) => exit = Some(e.status),
                Event::Measured(_) | Event::Kept(_) => {}
            }
        }
        (
            stdout,
            exit,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// With --user the program runs as that user, with no groups and no capability in any set;
    /// a relay that cannot make it so refuses to run it, and sends no exit status.
    #[test]
    fn runs_the_program_as_the_given_user_or_not_at_all() {
        assert!(
            rustix::process::geteuid().is_root(),
            "run the tests as root"
        );
        let show = "id -u; id -g; id -G; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status \
                    | tr -d '\\t'";
        let (out, exit, err) = relay(&[], &["--user", "65534:65534", "sh", "-c", show]);
        assert_eq!(exit, Some(0), "{err}");
        assert_eq!(
            out,
            "65534\n65534\n65534\nCapInh:0000000000000000\nCapPrm:0000000000000000\n\
             CapEff:0000000000000000\nCapBnd:0000000000000000\nCapAmb:0000000000000000\n"
        );

        // Without the privileges to drop to another user (here: started as uid 1000).
        let unprivileged = [
            "setpriv",
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
        ];
        let (out, exit, err) = relay(
            &unprivileged,
            &["--user", "65534:65534", "sh", "-c", "echo ran"],
        );
        assert_eq!((out.as_str(), exit), ("", None), "{err}");
        assert!(
            err.contains("cannot run the program without privileges"),
            "{err}"
        );
        let (_, exit, err) = relay(&[], &["--user", "nobody", "true"]);
        assert_eq!(exit, None);
        assert!(err.contains("--user wants UID:GID"), "{err}");
    }
}
