//! Files written whole: the bytes go to a temporary file beside the target, which is then
//! renamed over it, so a reader (or a kill) finds the old file or the new one, never part of
//! one. Run outputs, sweep state, journals and exported models are all written so.
//!
//! And a file's identity without reading it ([`FileStat`]): what the LFS filter's stat cache and
//! the data-folder scanner trust to skip re-hashing unchanged files.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The name prefix of the temporary files: what a clean-up after a kill looks for.
pub const TEMP_PREFIX: &str = ".exp-";

/// Writes `bytes` to `path` whole, creating its folder. With `durable`, the bytes are on disk
/// before the file is named (journals: a crash must not leave a named, empty journal). The
/// file's mode is 0666 less the umask, as a plain create gives (tempfile's own is 0600).
pub fn write_whole(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How much older than the read the file's mtime must be: kernels stamp files from a coarse
/// clock (a scheduler tick, up to 10 ms), so a margin well above it...
const RACY_MARGIN: Duration = Duration::from_millis(100);
/// ...and on file systems that store whole seconds (ext3, FAT, HFS+), above their granularity.
const RACY_MARGIN_COARSE: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// Bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Status-change time, ns since the epoch (changes on any write, even one that restores
    /// the mtime).
    pub ctime_ns: i128,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl FileStat {
    /// The stat of `path` (links followed), or `None` if it is not a regular file (or this is
    /// not Unix).
    pub fn of(path: &Path) -> Option<FileStat> {
        FileStat::from_metadata(&std::fs::metadata(path).ok()?)
    }

    /// The stat in `metadata`, or `None` if it is not a regular file's (or this is not Unix).
    /// A walk takes it from `DirEntry::metadata`, which asks relative to the open folder and so
    /// skips the lookup of the folder's path for every file.
    pub fn from_metadata(metadata: &std::fs::Metadata) -> Option<FileStat> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = metadata;
            if !m.is_file() {
                return None;
            }
            let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
            Some(FileStat {
                size: m.size(),
                mtime_ns: ns(m.mtime(), m.mtime_nsec()),
                ctime_ns: ns(m.ctime(), m.ctime_nsec()),
                ino: m.ino(),
                dev: m.dev(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            None
        }
    }

    /// Whether a read that started at `start` may record this stat (see the module docs).
    pub fn settled_before(&self, start: SystemTime) -> bool {
        let Ok(since_epoch) = start.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let whole_seconds = self.mtime_ns % 1_000_000_000 == 0;
        let margin = if whole_seconds {
            RACY_MARGIN_COARSE
        } else {
            RACY_MARGIN
        };
        let limit = since_epoch.saturating_sub(margin).as_nanos() as i128;
        self.mtime_ns < limit && self.ctime_ns < limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_with_the_umask_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file");
        write_whole(&path, b"one", false).unwrap();
        write_whole(&path, b"two", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let umask = unsafe {
                let old = libc::umask(0);
                libc::umask(old);
                old
            };
            assert_eq!(mode, 0o666 & !(umask as u32));
        }
    }
}
