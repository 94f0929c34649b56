//! The decoded-image cache's size (`.git/exp/cache/decoded/`): entries are pruned least
//! recently used first (an entry's mtime is its last use), automatically after each new entry
//! down to [`DEFAULT_MAX_BYTES`], and by `exp cache prune` down to any size.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The size the cache is kept under after each new entry: 10 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

/// One decoded split in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The file.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// Last used.
    pub used: SystemTime,
}

/// The decoded-cache folder of the cache folder `cache_dir`.
pub fn decoded_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("decoded")
}

/// The entries of the cache under `cache_dir`, most recently used first.
pub fn entries(cache_dir: &Path) -> std::io::Result<Vec<CacheEntry>> {
    let dir = decoded_dir(cache_dir);
    let listing = match std::fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in listing {
        let item = item?;
        let path = item.path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        let meta = item.metadata()?;
        out.push(CacheEntry {
            path,
            size: meta.len(),
            used: meta.modified()?,
        });
    }
    out.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.path.cmp(&b.path)));
    Ok(out)
}

/// Removes least recently used entries until the cache holds at most `max_bytes`; returns
/// the removed entries. A mapped entry stays readable by the process using it (Unix keeps
/// unlinked files alive), so pruning never breaks a running training.
pub fn prune(cache_dir: &Path, max_bytes: u64) -> std::io::Result<Vec<CacheEntry>> {
    let mut kept = 0u64;
    let mut removed = Vec::new();
    for entry in entries(cache_dir)? {
        if kept + entry.size <= max_bytes {
            kept += entry.size;
            continue;
        }
        std::fs::remove_file(&entry.path)?;
        removed.push(entry);
    }
    Ok(removed)
}

/// [`prune`] to [`DEFAULT_MAX_BYTES`], after a new entry; a failure only leaves the cache
/// larger.
pub fn prune_to_bound(cache_dir: &Path) {
    let _ = prune(cache_dir, DEFAULT_MAX_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let decoded = decoded_dir(dir.path());
        std::fs::create_dir_all(&decoded).unwrap();
        let now = SystemTime::now();
        for (name, age) in [("old", 30), ("new", 10), ("mid", 20)] {
            let path = decoded.join(format!("{name}.bin"));
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let f = std::fs::File::options().append(true).open(&path).unwrap();
            f.set_modified(now - Duration::from_secs(age)).unwrap();
        }
        std::fs::write(decoded.join("other.txt"), b"kept").unwrap();
        let removed = prune(dir.path(), 250).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].path.ends_with("old.bin"));
        let left: Vec<_> = entries(dir.path()).unwrap();
        assert_eq!(left.len(), 2);
        assert!(left[0].path.ends_with("new.bin"));
        assert_eq!(prune(dir.path(), 0).unwrap().len(), 2);
        assert!(decoded.join("other.txt").exists());
    }
}
