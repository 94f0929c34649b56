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
#[cfg(test)]
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Where the stat cache of `repo` lives (one per repository, shared by its worktrees: entries
/// are keyed by absolute path).
pub fn stat_cache_path(repo: &git2::Repository) -> PathBuf {
    repo.commondir().join("exp").join("lfs-stat-cache.json")
}

use super::Oid;
pub use crate::files::FileStat;

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
