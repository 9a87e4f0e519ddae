//! `additional_files`: a zip archive (entries stored or deflated) read into run files, with
//! bounds before anything is inflated and while it is: a count of entries, each entry's and the
//! total inflated size (so a zip bomb stops at the bound), relative paths without `..`, and no
//! links (a symlink entry is refused, not followed). Directories are implied by the paths.

use bytes::Bytes;

use crate::run::Bounds;
use crate::run::request::valid_path;
use crate::sandbox::job::JobFile;

const EOCD: u32 = 0x0605_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;
/// The unix file type bits of an entry's external attributes.
const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// The files of `zip`, within `bounds` (`max_files` less the main file).
pub fn extract(zip: &[u8], bounds: &Bounds) -> Result<Vec<JobFile>, String> {
    let bad = |why: &str| Err(format!("is not a valid zip archive: {why}"));
    // The end record is in the last 64 KiB + 22 bytes (its comment is at most 64 KiB).
    let floor = zip.len().saturating_sub(22 + 0xffff);
    let Some(eocd) = (floor..zip.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(zip, i) == Some(EOCD))
    else {
        return bad("no end of central directory");
    };
    let entries = usize::from(u16_at(zip, eocd + 10).unwrap_or(0));
    let mut at = u32_at(zip, eocd + 16).unwrap_or(u32::MAX) as usize;
    let mut files = Vec::new();
    let mut total = 0usize;
    for _ in 0..entries {
        if u32_at(zip, at) != Some(CENTRAL) {
            return bad("a central directory entry is missing");
        }
        let field = |off: usize| u16_at(zip, at + off).map(usize::from);
        let (Some(flags), Some(method), Some(name_len), Some(extra_len), Some(comment_len)) =
            (field(8), field(10), field(28), field(30), field(32))
        else {
            return bad("a central directory entry is cut short");
        };
        let crc = u32_at(zip, at + 16).unwrap_or(0);
        let packed = u32_at(zip, at + 20).unwrap_or(0) as usize;
        let size = u32_at(zip, at + 24).unwrap_or(0) as usize;
        let made_by_unix = zip.get(at + 5) == Some(&3);
        let mode = u32_at(zip, at + 38).unwrap_or(0) >> 16;
        let local = u32_at(zip, at + 42).unwrap_or(u32::MAX) as usize;
        let Some(name) = zip.get(at + 46..at + 46 + name_len) else {
            return bad("a name is cut short");
        };
        at += 46 + name_len + extra_len + comment_len;
        let Ok(name) = std::str::from_utf8(name) else {
            return Err("holds a file name that is not UTF-8".into());
        };
        if made_by_unix && mode & S_IFMT == S_IFLNK {
            return Err(format!("holds a link, {name:?}: links are not extracted"));
        }
        if name.ends_with('/') {
            continue;
        }
        if !valid_path(name) {
            return Err(format!(
                "holds {name:?}: paths must be relative, without .. or empty parts"
            ));
        }
        if made_by_unix && mode & S_IFMT != 0 && mode & S_IFMT != S_IFREG {
            return Err(format!("holds {name:?}, which is not a regular file"));
        }
        if flags & 1 != 0 {
            return Err(format!("holds {name:?} encrypted"));
        }
        if files.len() + 1 >= bounds.max_files {
            return Err(format!("holds more than {} files", bounds.max_files - 1));
        }
        if size > bounds.max_file_bytes || total + size > bounds.max_total_bytes {
            return Err(format!(
                "is over the bounds: {} bytes a file, {} together",
                bounds.max_file_bytes, bounds.max_total_bytes
            ));
        }
        if u32_at(zip, local) != Some(LOCAL) {
            return bad("a local header is missing");
        }
        let (Some(lname), Some(lextra)) = (u16_at(zip, local + 26), u16_at(zip, local + 28)) else {
            return bad("a local header is cut short");
        };
        let start = local + 30 + usize::from(lname) + usize::from(lextra);
        let Some(data) = zip.get(start..start + packed) else {
            return bad("an entry's data is cut short");
        };
        let content = match method {
            0 => data.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec_with_limit(data, size)
                .map_err(|_| format!("holds {name:?}, which does not inflate to its size"))?,
            m => {
                return Err(format!(
                    "holds {name:?} compressed with method {m}: only stored and deflated"
                ));
            }
        };
        if content.len() != size || crc32(&content) != crc {
            return Err(format!("holds {name:?}, whose size or checksum is wrong"));
        }
        total += size;
        let executable = made_by_unix && mode & 0o111 != 0;
        files.push(JobFile {
            path: name.to_owned(),
            executable,
            content: Bytes::from(content),
        });
    }
    Ok(files)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A zip of `(name, content, unix mode)` entries, stored or deflated (level 6).
    pub fn make(entries: &[(&str, &[u8], u32)], deflate: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, content, mode) in entries {
            let data = if deflate {
                miniz_oxide::deflate::compress_to_vec(content, 6)
            } else {
                content.to_vec()
            };
            let method: u16 = if deflate { 8 } else { 0 };
            let offset = out.len() as u32;
            let crc = crc32(content);
            out.extend_from_slice(&LOCAL.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(content.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&data);
            central.extend_from_slice(&CENTRAL.to_le_bytes());
            central.extend_from_slice(&[20, 3, 20, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 4]);
            central.extend_from_slice(&crc.to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(content.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 8]);
            central.extend_from_slice(&(mode << 16).to_le_bytes());
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_at = out.len() as u32;
        out.extend_from_slice(&central);
        out.extend_from_slice(&EOCD.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(central.len() as u32).to_le_bytes());
        out.extend_from_slice(&cd_at.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out
    }

    #[test]
    fn stored_and_deflated_within_bounds() {
        let b = Bounds::default();
        for deflate in [false, true] {
            let z = make(
                &[
                    ("lib/mod.py", b"X = 5\n", 0o100644),
                    ("dir/", b"", 0o040755),
                    ("run", b"echo", 0o100755),
                ],
                deflate,
            );
            let files = extract(&z, &b).unwrap();
            assert_eq!(files.len(), 2);
            assert_eq!(
                (files[0].path.as_str(), &files[0].content[..]),
                ("lib/mod.py", &b"X = 5\n"[..])
            );
            assert!(!files[0].executable && files[1].executable);
        }
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn refuses_escapes_links_and_bombs() {
        let b = Bounds::default();
        let e = |entries: &[(&str, &[u8], u32)], deflate| {
            extract(&make(entries, deflate), &b).unwrap_err()
        };
        assert!(e(&[("../x", b"1", 0o100644)], false).contains("relative"));
        assert!(e(&[("/etc/x", b"1", 0o100644)], false).contains("relative"));
        assert!(e(&[("a/../../x", b"1", 0o100644)], false).contains("relative"));
        assert!(e(&[("l", b"/etc/passwd", 0o120777)], false).contains("link"));
        let bomb = vec![0u8; b.max_file_bytes + 1];
        assert!(e(&[("big", &bomb, 0o100644)], true).contains("bounds"));
        let many: Vec<(String, Vec<u8>)> = (0..40).map(|i| (format!("f{i}"), vec![1])).collect();
        let refs: Vec<(&str, &[u8], u32)> = many
            .iter()
            .map(|(n, c)| (n.as_str(), &c[..], 0o100644))
            .collect();
        assert!(e(&refs, false).contains("more than"));
        assert!(extract(b"not a zip", &b).unwrap_err().contains("valid zip"));
        // A header that claims a small size over data that inflates to more stops at the claim.
        let mut lying = make(&[("x", &vec![7u8; 100_000], 0o100644)], true);
        let cd = u32_at(&lying, lying.len() - 6).unwrap() as usize;
        lying[cd + 24..cd + 28].copy_from_slice(&100u32.to_le_bytes());
        assert!(extract(&lying, &b).unwrap_err().contains("inflate"));
    }
}
