//! Puts the embedded relay binary where a sandbox can mount it from.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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
        DirBuilder::new().mode(0o700).create(&dir)?;
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
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&installed.path)?;
        file.write_all(BINARY)?;
        file.sync_all()?;
        drop(file);
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

/// Whether `dir` is on a file system mounted noexec (a bind mount of a file keeps that flag).
fn on_noexec_mount(dir: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
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
}
