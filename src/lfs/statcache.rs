//! The clean filter's stat cache: (path, size, mtime, ctime, inode, device) → LFS oid.
//!
//! Git re-runs the clean filter whenever a file's index entry looks stale (after a `touch`, a
//! checkout by another tool, or on every `git --no-optional-locks status`, which may not
//! refresh the index). git-lfs then re-hashes the whole file each time. With this cache exp
//! only has to confirm that the bytes Git streams are the bytes of the file whose stat matches
//! an entry, which costs a memory comparison instead of a SHA-256.
//!
//! An entry is only recorded when the streamed content was byte-identical to the file (so
//! `git hash-object --path=a other-file` cannot poison the entry for `a`), the file's stat did
//! not change while it was read, and its mtime is older than the start of the read by more
//! than the file system's timestamp granularity (git's "racily clean" rule: a write in the
//! same clock tick as the recorded mtime would otherwise go unseen).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Where the stat cache of `repo` lives (one per repository, shared by its worktrees: entries
/// are keyed by absolute path).
pub fn stat_cache_path(repo: &git2::Repository) -> PathBuf {
    repo.commondir().join("exp").join("lfs-stat-cache.json")
}

use super::Oid;

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
    /// The stat of `path`, or `None` if it is not a regular file (or this is not Unix).
    pub fn of(path: &Path) -> Option<FileStat> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(path).ok()?;
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
            let _ = path;
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stat: FileStat,
    oid: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<PathBuf, Entry>,
}

const VERSION: u32 = 1;

/// The cache of one repository, loaded once per process.
#[derive(Debug)]
pub struct StatCache {
    file: PathBuf,
    data: CacheFile,
    dirty: bool,
}

impl StatCache {
    /// Loads the cache kept at `file` (an unreadable or foreign file is an empty cache: the
    /// cache only ever saves work, it never decides content).
    pub fn load(file: PathBuf) -> StatCache {
        let data = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|d| d.version == VERSION)
            .unwrap_or(CacheFile {
                version: VERSION,
                entries: BTreeMap::new(),
            });
        StatCache {
            file,
            data,
            dirty: false,
        }
    }

    /// The oid recorded for `path` at exactly `stat`.
    pub fn get(&self, path: &Path, stat: &FileStat) -> Option<Oid> {
        let entry = self.data.entries.get(path)?;
        if entry.stat != *stat {
            return None;
        }
        Oid::parse(&entry.oid).ok()
    }

    /// Records `path` at `stat` as holding object `oid`.
    pub fn insert(&mut self, path: PathBuf, stat: FileStat, oid: &Oid) {
        self.data.entries.insert(
            path,
            Entry {
                stat,
                oid: oid.as_str().to_string(),
            },
        );
        self.dirty = true;
    }

    /// Every oid the cache names (prune keeps them: they are the content of work-tree files).
    pub fn oids(&self) -> impl Iterator<Item = Oid> + '_ {
        self.data
            .entries
            .values()
            .filter_map(|e| Oid::parse(&e.oid).ok())
    }

    /// Writes the cache if it changed: a temp file renamed over the old one, so concurrent
    /// filter processes never see half a file (the last writer wins; a lost entry costs one
    /// re-hash, nothing more). Entries for files that no longer exist are dropped.
    pub fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.data.entries.retain(|path, _| path.is_file());
        let Some(dir) = self.file.parent() else {
            return;
        };
        let written = std::fs::create_dir_all(dir).ok().and_then(|_| {
            let mut tmp = tempfile::NamedTempFile::new_in(dir).ok()?;
            serde_json::to_writer(tmp.as_file_mut(), &self.data).ok()?;
            tmp.persist(&self.file).ok()
        });
        if written.is_some() {
            self.dirty = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_only_the_exact_stat() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.bin");
        std::fs::write(&file, b"abc").unwrap();
        let stat = FileStat::of(&file).unwrap();
        let oid = Oid::parse(&"a".repeat(64)).unwrap();
        let cache_path = dir.path().join("cache.json");
        let mut cache = StatCache::load(cache_path.clone());
        cache.insert(file.clone(), stat, &oid);
        cache.save();
        let cache = StatCache::load(cache_path);
        assert_eq!(cache.get(&file, &stat), Some(oid));
        let other = FileStat {
            mtime_ns: stat.mtime_ns + 1,
            ..stat
        };
        assert_eq!(cache.get(&file, &other), None);
    }

    #[test]
    fn a_fresh_file_is_racy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.bin");
        std::fs::write(&file, b"abc").unwrap();
        let stat = FileStat::of(&file).unwrap();
        assert!(!stat.settled_before(SystemTime::now()));
        assert!(stat.settled_before(SystemTime::now() + Duration::from_secs(3)));
    }
}
