//! A run request as every dialect decodes it, and its checks: relative file paths without `..`,
//! bounded counts and sizes, arguments without NUL. A request that fails them is answered 400
//! and nothing runs.

use bytes::Bytes;
use sha1::{Digest, Sha1};

use super::RunLimits;
use crate::sandbox::job::JobFile;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRequest {
    /// The main file first; an empty path there takes the language's main-file name.
    pub files: Vec<JobFile>,
    pub stdin: Bytes,
    pub args: Vec<String>,
    pub compile_limits: RunLimits,
    pub run_limits: RunLimits,
}

/// How large a request may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub max_files: usize,
    pub max_file_bytes: usize,
    pub max_total_bytes: usize,
    pub max_stdin_bytes: usize,
    pub max_args: usize,
    pub max_arg_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_files: 32,
            max_file_bytes: 1 << 20,
            max_total_bytes: 4 << 20,
            max_stdin_bytes: 1 << 20,
            max_args: 64,
            max_arg_bytes: 4096,
        }
    }
}

/// What is wrong with a request, for its 400 answer.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestError(pub String);

/// A path the relay can write under /tmp: relative, no `.`/`..` or empty parts, no NUL, short.
pub fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

impl RunRequest {
    pub fn check(&self, b: &Bounds) -> Result<(), RequestError> {
        let fail = |m: String| Err(RequestError(m));
        if self.files.is_empty() {
            return fail("files must hold at least one file".into());
        }
        if self.files.len() > b.max_files {
            return fail(format!("too many files: at most {}", b.max_files));
        }
        let mut total = 0usize;
        for (i, f) in self.files.iter().enumerate() {
            let unnamed_main = i == 0 && f.path.is_empty();
            if !unnamed_main && !valid_path(&f.path) {
                return fail(format!(
                    "files[{i}].name {:?} is not a relative path inside the sandbox (no .., no leading /)",
                    f.path
                ));
            }
            if f.content.len() > b.max_file_bytes {
                return fail(format!("files[{i}] is over {} bytes", b.max_file_bytes));
            }
            total += f.content.len();
        }
        if total > b.max_total_bytes {
            return fail(format!(
                "the files are over {} bytes together",
                b.max_total_bytes
            ));
        }
        if self.stdin.len() > b.max_stdin_bytes {
            return fail(format!("stdin is over {} bytes", b.max_stdin_bytes));
        }
        if self.args.len() > b.max_args {
            return fail(format!("too many args: at most {}", b.max_args));
        }
        for (i, a) in self.args.iter().enumerate() {
            if a.contains('\0') {
                return fail(format!("args[{i}] holds a NUL byte"));
            }
            if a.len() > b.max_arg_bytes {
                return fail(format!("args[{i}] is over {} bytes", b.max_arg_bytes));
            }
        }
        Ok(())
    }

    /// The files with the main file named `main` when the request left its name out.
    pub fn files_named(&self, main: &str) -> Vec<JobFile> {
        let mut files = self.files.clone();
        if let Some(first) = files.first_mut()
            && first.path.is_empty()
        {
            first.path = main.to_owned();
        }
        files
    }

    /// Everything that can change the answer, hashed for the cache key (with the language's
    /// fingerprint and the dialect, which the caller adds).
    pub fn digest(&self) -> [u8; 20] {
        let mut h = Sha1::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        for f in &self.files {
            put(f.path.as_bytes());
            put(&[u8::from(f.executable)]);
            put(&f.content);
        }
        put(b"stdin");
        put(&self.stdin);
        for a in &self.args {
            put(a.as_bytes());
        }
        put(format!("{:?}|{:?}", self.compile_limits, self.run_limits).as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> JobFile {
        JobFile {
            path: path.into(),
            executable: false,
            content: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn paths_and_bounds() {
        for bad in ["../x", "/etc/passwd", "a/../b", "a//b", "./a", "a/", "a\0b"] {
            assert!(!valid_path(bad), "{bad}");
        }
        assert!(valid_path("dir/mod.py"));
        let b = Bounds::default();
        let mut r = RunRequest {
            files: vec![file(""), file("lib/x.h")],
            ..Default::default()
        };
        assert!(r.check(&b).is_ok());
        r.files.push(file("../etc"));
        assert!(r.check(&b).is_err());
        r.files.pop();
        r.args = vec!["a\0b".into()];
        assert!(r.check(&b).unwrap_err().0.contains("NUL"));
        r.args.clear();
        r.stdin = Bytes::from(vec![0; b.max_stdin_bytes + 1]);
        assert!(r.check(&b).is_err());
        r.stdin = Bytes::new();
        r.files = (0..=b.max_files).map(|i| file(&format!("f{i}"))).collect();
        assert!(r.check(&b).is_err());
    }

    #[test]
    fn digest_covers_stdin_args_and_limits() {
        let a = RunRequest {
            files: vec![file("")],
            ..Default::default()
        };
        let mut b = a.clone();
        b.stdin = Bytes::from_static(b"1");
        let mut c = a.clone();
        c.args = vec!["1".into()];
        let mut d = a.clone();
        d.run_limits.memory = Some(1);
        let all = [a.digest(), b.digest(), c.digest(), d.digest()];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}
