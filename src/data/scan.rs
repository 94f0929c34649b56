//! A folder's files as a manifest: every file's path (relative, `/`-separated), size and
//! SHA-256, sorted by path bytes — the lines of a dataset's `datasets/<name>.files`
//! (docs/design.md §9) and what an image folder's fingerprint is computed over.
//!
//! Hashing is skipped for files whose stat (size, mtime, ctime, inode, device) matches the
//! folder's stat cache, kept under `.git/exp/cache/stat/`; an entry is only recorded for a file
//! that was settled before it was read (git's racily-clean rule, `files::FileStat`), so a write
//! in the same clock tick is never missed. Files are hashed in parallel.
//!
//! Names beginning with `.` (`.DS_Store`, `.ipynb_checkpoints/`) are not data and are left out;
//! symbolic links to files are followed, links to folders refused (a cycle would never end);
//! a path that is not UTF-8 or holds a line break is refused, since the manifest is text.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::DataError;
use crate::files::FileStat;

/// One file of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the folder, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the content, 64 lower-case hex digits (the file's LFS oid).
    pub sha256: String,
}

impl FileEntry {
    /// The manifest line: `<sha256> <size> <path>`.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.sha256, self.size, self.path)
    }
}

/// The manifest text of `entries` (one line each, in their order, each ending in `\n`).
pub fn manifest_text(entries: &[FileEntry]) -> String {
    let mut text = String::with_capacity(entries.len() * 96);
    for e in entries {
        text.push_str(&e.line());
        text.push('\n');
    }
    text
}

/// Reads manifest text (one `<sha256> <size> <path>` line per file); Err names the first bad
/// line (1-based) and why.
pub fn parse_manifest(text: &str) -> Result<Vec<FileEntry>, String> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        let mut parts = line.splitn(3, ' ');
        let (Some(sha), Some(size), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected `<sha256> <size> <path>`"));
        };
        if sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad("not a lower-case SHA-256"));
        }
        let size = size.parse().map_err(|_| bad("the size is not a number"))?;
        if path.is_empty()
            || path.starts_with('/')
            || path.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(bad("the path must be relative, inside the folder"));
        }
        entries.push(FileEntry {
            path: path.to_string(),
            size,
            sha256: sha.to_string(),
        });
    }
    if entries
        .windows(2)
        .any(|w| w[0].path.as_bytes() >= w[1].path.as_bytes())
    {
        return Err("the lines are not sorted by path bytes (or a path repeats)".into());
    }
    Ok(entries)
}

/// How one list of files differs from another, path by path (both sorted by path bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// Paths only in the new list.
    pub added: Vec<String>,
    /// Paths in both, with other content.
    pub modified: Vec<String>,
    /// Paths only in the old list.
    pub deleted: Vec<String>,
}

impl Changes {
    /// Whether the lists hold the same files.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.deleted.is_empty()
    }

    /// `1 added, 2 modified, 0 deleted`.
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} modified, {} deleted",
            self.added.len(),
            self.modified.len(),
            self.deleted.len()
        )
    }
}

/// The changes from `old` to `new` (each sorted by path bytes, as manifests are).
pub fn changes(old: &[FileEntry], new: &[FileEntry]) -> Changes {
    let mut out = Changes::default();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => a.path.as_bytes().cmp(b.path.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.deleted.push(old[i].path.clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.added.push(new[j].path.clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i].sha256 != new[j].sha256 || old[i].size != new[j].size {
                    out.modified.push(new[j].path.clone());
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The fingerprint of a list of files: BLAKE3 over its manifest text.
pub fn fingerprint<'a>(entries: impl IntoIterator<Item = &'a FileEntry>) -> String {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(e.line().as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex().to_string()
}

/// Files up to this size are read whole (and handed to a [`Sink`] as bytes); larger ones are
/// hashed in a stream.
pub const READ_WHOLE: u64 = 8 << 20;

/// What a scan does with the files it hashes: `exp data add` stores each new file in the LFS
/// store from the bytes the scan just read, so a new file is read once.
pub trait Sink: Sync {
    /// A file just hashed: its bytes when it was read whole, else none (the sink reads `path`).
    fn fresh(&self, entry: &FileEntry, bytes: Option<&[u8]>, path: &Path) -> Result<(), DataError>;
    /// A file whose hash came from the stat cache and that the sink has not taken yet (the
    /// cache remembers what the sink took, until `exp lfs prune` clears it).
    fn cached(&self, entry: &FileEntry, path: &Path) -> Result<(), DataError>;
}

/// Every file under `folder`, sorted by path bytes, hashed (or taken from the stat cache in
/// `cache_dir` when given).
pub fn scan(folder: &Path, cache_dir: Option<&Path>) -> Result<Vec<FileEntry>, DataError> {
    scan_into(folder, cache_dir, None)
}

/// [`scan`], handing every file to `sink`.
pub fn scan_into(
    folder: &Path,
    cache_dir: Option<&Path>,
    sink: Option<&dyn Sink>,
) -> Result<Vec<FileEntry>, DataError> {
    let mut found = Vec::new();
    walk(folder, "", &mut found)?;
    found.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut cache = cache_dir.map(|dir| StatCache::load(dir, folder));
    let start = SystemTime::now();
    // Per file: its entry, its stat when it may be cached, and whether a sink has it.
    type Scanned = Option<(FileEntry, Option<FileStat>, bool)>;
    let hashed: Vec<Result<Scanned, DataError>> = found
        .into_par_iter()
        .map(|path| {
            let file = folder.join(&path);
            // Stats in parallel: on an unchanged folder they are all the work there is.
            let Some(stat) = FileStat::of(&file) else {
                return Ok(None); // gone since the listing, or not a regular file
            };
            if let Some((sha, stored)) = cache.as_ref().and_then(|c| c.get(&path, &stat)) {
                let entry = FileEntry {
                    path,
                    size: stat.size,
                    sha256: sha.to_string(),
                };
                let stored = match sink {
                    Some(sink) if !stored => {
                        sink.cached(&entry, &file)?;
                        true
                    }
                    _ => stored,
                };
                return Ok(Some((entry, None, stored)));
            }
            let entry = if stat.size <= READ_WHOLE {
                // Sized from the walk's stat: std::fs::read would stat the file again.
                let mut bytes = Vec::with_capacity(stat.size as usize + 1);
                std::fs::File::open(&file)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(|source| DataError::Io {
                        path: file.clone(),
                        source,
                    })?;
                let entry = FileEntry {
                    path,
                    size: bytes.len() as u64,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                };
                if let Some(sink) = sink {
                    sink.fresh(&entry, Some(&bytes), &file)?;
                }
                entry
            } else {
                let (sha256, size) = hash_file(&file)?;
                let entry = FileEntry { path, size, sha256 };
                if let Some(sink) = sink {
                    sink.fresh(&entry, None, &file)?;
                }
                entry
            };
            // Recorded only when the file did not change while it was read and was settled
            // before the read began.
            let settled = FileStat::of(&file).filter(|after| {
                *after == stat && after.size == entry.size && stat.settled_before(start)
            });
            Ok(Some((entry, settled, sink.is_some())))
        })
        .collect();
    let mut entries = Vec::with_capacity(hashed.len());
    for item in hashed {
        let Some((entry, new_stat, stored)) = item? else {
            continue;
        };
        if let Some(cache) = cache.as_mut() {
            cache.update(&entry, new_stat, stored);
        }
        entries.push(entry);
    }
    if let Some(cache) = cache.as_mut() {
        cache.save(&entries);
    }
    Ok(entries)
}

/// Forgets, for every folder, which files a [`Sink`] took (the stat caches under
/// `cache_dir/stat`): after objects were deleted from the LFS store, the next `exp data add`
/// checks every file's object again.
pub fn forget_stored(cache_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(cache_dir.join("stat")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// SHA-256 and size of a file's content.
pub fn hash_file(path: &Path) -> Result<(String, u64), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

fn walk(root: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), DataError> {
    let dir = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    let io = |path: &Path, source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
        let entry = entry.map_err(|e| io(&dir, e))?;
        let name = entry.file_name();
        let path = entry.path();
        let Some(name) = name.to_str() else {
            return Err(DataError::Inconsistent(format!(
                "{}: the file name is not UTF-8; rename it (manifests are text)",
                path.display()
            )));
        };
        if name.starts_with('.') {
            continue;
        }
        if name.contains(['\n', '\r']) {
            return Err(DataError::Inconsistent(format!(
                "{:?}: a file name holding a line break cannot be listed in a manifest; rename it",
                path.display().to_string()
            )));
        }
        let relative = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(|e| io(&path, e))?;
        let is_dir = if kind.is_symlink() {
            let target = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
            if target.is_dir() {
                return Err(DataError::Inconsistent(format!(
                    "{} is a link to a folder; exp does not follow folder links (copy the folder in, or link its files)",
                    path.display()
                )));
            }
            false
        } else {
            kind.is_dir()
        };
        if is_dir {
            walk(root, &relative, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}

/// A folder's stat cache: one text line per file, `<sha256> <size> <mtime_ns> <ctime_ns>
/// <inode> <device> <stored> <path>` (`stored`: 1 when a [`Sink`] took the file; text: 70k
/// entries load in a few milliseconds, no serde needed).
struct StatCache {
    file: PathBuf,
    entries: HashMap<String, (FileStat, String, bool)>,
    dirty: bool,
}

impl StatCache {
    /// The cache of `folder` kept in `dir` (named by the folder's absolute path). A file that
    /// is missing or damaged is an empty cache: the cache only saves work, it never decides.
    fn load(dir: &Path, folder: &Path) -> StatCache {
        let absolute = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        let key = blake3::hash(absolute.to_string_lossy().as_bytes()).to_hex();
        let file = dir.join("stat").join(format!("{}-v2.txt", &key[..32]));
        let entries = std::fs::read_to_string(&file)
            .map(|text| text.lines().filter_map(parse_line).collect())
            .unwrap_or_default();
        StatCache {
            file,
            entries,
            dirty: false,
        }
    }

    fn get(&self, path: &str, stat: &FileStat) -> Option<(&str, bool)> {
        match self.entries.get(path) {
            Some((s, sha, stored)) if s == stat => Some((sha, *stored)),
            _ => None,
        }
    }

    /// Records a file just hashed (`stat`: when it may be cached) or marks a cached one stored.
    fn update(&mut self, entry: &FileEntry, stat: Option<FileStat>, stored: bool) {
        match stat {
            Some(stat) => {
                self.entries
                    .insert(entry.path.clone(), (stat, entry.sha256.clone(), stored));
                self.dirty = true;
            }
            None => {
                if let Some(cached) = self.entries.get_mut(&entry.path) {
                    if stored && !cached.2 {
                        cached.2 = true;
                        self.dirty = true;
                    }
                }
            }
        }
    }

    /// Writes the cache when it changed, keeping only the files of the latest scan.
    fn save(&mut self, current: &[FileEntry]) {
        let stale = self.entries.len() != current.len();
        if !self.dirty && !stale {
            return;
        }
        let mut text = String::with_capacity(current.len() * 140);
        for e in current {
            if let Some((s, sha, stored)) = self.entries.get(&e.path) {
                text.push_str(&format!(
                    "{sha} {} {} {} {} {} {} {}\n",
                    s.size,
                    s.mtime_ns,
                    s.ctime_ns,
                    s.ino,
                    s.dev,
                    u8::from(*stored),
                    e.path
                ));
            }
        }
        // A cache that cannot be written costs a re-hash next time, nothing more.
        let _ = crate::files::write_whole(&self.file, text.as_bytes(), false);
        self.dirty = false;
    }
}

fn parse_line(line: &str) -> Option<(String, (FileStat, String, bool))> {
    let mut parts = line.splitn(8, ' ');
    let sha = parts.next()?;
    if sha.len() != 64 {
        return None;
    }
    let stat = FileStat {
        size: parts.next()?.parse().ok()?,
        mtime_ns: parts.next()?.parse().ok()?,
        ctime_ns: parts.next()?.parse().ok()?,
        ino: parts.next()?.parse().ok()?,
        dev: parts.next()?.parse().ok()?,
    };
    let stored = match parts.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some((parts.next()?.to_string(), (stat, sha.to_string(), stored)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_and_fingerprint_are_pinned() {
        let entries = vec![FileEntry {
            path: "train/0/a.png".into(),
            size: 3,
            sha256: hex::encode(Sha256::digest(b"abc")),
        }];
        assert_eq!(
            manifest_text(&entries),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad 3 train/0/a.png\n"
        );
        assert_eq!(
            fingerprint(&entries),
            blake3::hash(manifest_text(&entries).as_bytes())
                .to_hex()
                .to_string()
        );
    }

    #[test]
    fn scan_sorts_by_bytes_skips_dot_files_and_uses_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("f");
        std::fs::create_dir_all(folder.join("b")).unwrap();
        std::fs::create_dir_all(folder.join(".hidden")).unwrap();
        std::fs::write(folder.join("b/x"), b"1").unwrap();
        std::fs::write(folder.join("B"), b"22").unwrap();
        std::fs::write(folder.join("a"), b"333").unwrap();
        std::fs::write(folder.join(".DS_Store"), b"junk").unwrap();
        std::fs::write(folder.join(".hidden/y"), b"junk").unwrap();
        let cache = dir.path().join("cache");
        let first = scan(&folder, Some(&cache)).unwrap();
        let paths: Vec<&str> = first.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["B", "a", "b/x"]);
        assert_eq!(first[2].sha256, hex::encode(Sha256::digest(b"1")));
        // Files written just now are racy: not cached yet, hashed again, same answer.
        assert_eq!(scan(&folder, Some(&cache)).unwrap(), first);
        // A changed file is seen even when its size is kept.
        std::fs::write(folder.join("b/x"), b"9").unwrap();
        let changed = scan(&folder, Some(&cache)).unwrap();
        assert_eq!(changed[2].sha256, hex::encode(Sha256::digest(b"9")));
    }

    #[test]
    fn manifests_parse_back_and_changes_are_path_by_path() {
        let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
        let e = |p: &str, c: &[u8]| FileEntry {
            path: p.into(),
            size: c.len() as u64,
            sha256: sha(c),
        };
        let old = vec![e("a", b"1"), e("b/c", b"2"), e("d", b"3")];
        let new = vec![e("a", b"1"), e("b/c", b"9"), e("c", b"4")];
        assert_eq!(parse_manifest(&manifest_text(&old)).unwrap(), old);
        let c = changes(&old, &new);
        assert_eq!(
            (c.added, c.modified, c.deleted),
            (
                vec!["c".to_string()],
                vec!["b/c".to_string()],
                vec!["d".to_string()]
            )
        );
        let unsorted = manifest_text(&[e("b", b"1"), e("a", b"1")]);
        assert!(parse_manifest(&unsorted)
            .unwrap_err()
            .contains("not sorted"));
        let escape = format!("{} 1 ../x\n", sha(b"1"));
        assert!(parse_manifest(&escape)
            .unwrap_err()
            .contains("inside the folder"));
    }

    /// Counts what a scan hands it.
    #[derive(Default)]
    struct Counting {
        fresh: std::sync::atomic::AtomicUsize,
        cached: std::sync::atomic::AtomicUsize,
    }

    impl Sink for Counting {
        fn fresh(&self, _: &FileEntry, bytes: Option<&[u8]>, _: &Path) -> Result<(), DataError> {
            assert!(bytes.is_some(), "small files come as bytes");
            self.fresh
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        fn cached(&self, _: &FileEntry, _: &Path) -> Result<(), DataError> {
            self.cached
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn the_stat_cache_remembers_what_a_sink_took_until_told_to_forget() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("f");
        std::fs::create_dir_all(&folder).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(folder.join(name), name).unwrap();
        }
        // Older than the racily-clean margin, so the first scan may cache them.
        std::thread::sleep(std::time::Duration::from_millis(250));
        let cache = dir.path().join("cache");
        let first = Counting::default();
        let entries = scan_into(&folder, Some(&cache), Some(&first)).unwrap();
        assert_eq!(
            (first.fresh.load(Relaxed), first.cached.load(Relaxed)),
            (3, 0)
        );
        // A plain scan (a run reading the folder) neither reads nor changes the marks.
        assert_eq!(scan(&folder, Some(&cache)).unwrap(), entries);
        let second = Counting::default();
        assert_eq!(
            scan_into(&folder, Some(&cache), Some(&second)).unwrap(),
            entries
        );
        assert_eq!(
            (second.fresh.load(Relaxed), second.cached.load(Relaxed)),
            (0, 0)
        );
        forget_stored(&cache).unwrap();
        let third = Counting::default();
        scan_into(&folder, Some(&cache), Some(&third)).unwrap();
        assert_eq!(
            (third.fresh.load(Relaxed), third.cached.load(Relaxed)),
            (3, 0)
        );
        // A file the cache knows but a sink never took is offered as cached.
        std::fs::write(folder.join("d"), "d").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(250));
        scan(&folder, Some(&cache)).unwrap();
        let fourth = Counting::default();
        scan_into(&folder, Some(&cache), Some(&fourth)).unwrap();
        assert_eq!(
            (fourth.fresh.load(Relaxed), fourth.cached.load(Relaxed)),
            (0, 1)
        );
    }

    #[test]
    fn a_line_break_in_a_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a\nb"), b"1").unwrap();
        let e = scan(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("line break"), "{e}");
    }
}
