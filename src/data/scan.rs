//! A folder's files as a manifest: every file's path (relative, `/`-separated), size and
//! SHA-256, sorted by path bytes — the lines of a dataset's `datasets/<name>.files`
//! (docs/design.md §9) and what an image folder's fingerprint is computed over.
//!
//! Hashing is skipped for files whose stat (size, mtime, ctime, inode, device) matches the
//! folder's stat cache, kept under `.git/exp/cache/stat/`; an entry is only recorded for a file
//! that was settled before it was read (git's racily-clean rule, `files::FileStat`), so a write
//! in the same clock tick is never missed. Folders are walked and files hashed in parallel.
//!
//! Names beginning with `.` (`.DS_Store`, `.ipynb_checkpoints/`) are not data and are left out;
//! symbolic links to files are followed, links to folders refused (a cycle would never end);
//! a path that is not UTF-8 or holds a line break is refused, since the manifest is text.

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
    /// Appends the manifest line and its `\n` to `out`.
    fn push_line(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str(&self.sha256);
        // Writing to a String cannot fail.
        let _ = write!(out, " {} ", self.size);
        out.push_str(&self.path);
        out.push('\n');
    }

    /// The bytes of the manifest line with its `\n`.
    fn line_len(&self) -> usize {
        let digits = self.size.checked_ilog10().map_or(1, |d| d as usize + 1);
        self.sha256.len() + 1 + digits + 1 + self.path.len() + 1
    }
}

/// The manifest text of `entries` (one line each, in their order, each ending in `\n`).
pub fn manifest_text(entries: &[FileEntry]) -> String {
    let mut text = String::with_capacity(entries.iter().map(FileEntry::line_len).sum());
    for e in entries {
        e.push_line(&mut text);
    }
    text
}

/// Reads manifest text (one `<sha256> <size> <path>` line per file); Err names the first bad
/// line (1-based) and why. Long texts are parsed in parallel, a run of whole lines per task.
pub fn parse_manifest(text: &str) -> Result<Vec<FileEntry>, String> {
    let runs: Vec<Result<Vec<FileEntry>, String>> = line_runs(text)
        .into_par_iter()
        .map(|(offset, run)| {
            let mut entries = Vec::with_capacity(run.len() / 90 + 1);
            for (i, line) in run.lines().enumerate() {
                let entry = parse_manifest_line(line).map_err(|why| {
                    let before = text.as_bytes()[..offset]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count();
                    format!("line {}: {why}: {line:?}", before + i + 1)
                })?;
                entries.push(entry);
            }
            Ok(entries)
        })
        .collect();
    let mut entries = Vec::new();
    for run in runs {
        entries.append(&mut run?);
    }
    if entries
        .windows(2)
        .any(|w| w[0].path.as_bytes() >= w[1].path.as_bytes())
    {
        return Err("the lines are not sorted by path bytes (or a path repeats)".into());
    }
    Ok(entries)
}

fn parse_manifest_line(line: &str) -> Result<FileEntry, &'static str> {
    let mut parts = line.splitn(3, ' ');
    let (Some(sha), Some(size), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected `<sha256> <size> <path>`");
    };
    if !is_sha256_hex(sha) {
        return Err("not a lower-case SHA-256");
    }
    let size = size.parse().map_err(|_| "the size is not a number")?;
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err("the path must be relative, inside the folder");
    }
    Ok(FileEntry {
        path: path.to_string(),
        size,
        sha256: sha.to_string(),
    })
}

/// 64 lower-case hex digits.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `text` cut into runs of whole lines for parsing in parallel, each with its byte offset: a
/// few runs per thread for a long text, one for a short one.
fn line_runs(text: &str) -> Vec<(usize, &str)> {
    const MIN_RUN: usize = 256 << 10;
    let pieces = (text.len() / MIN_RUN).clamp(1, 4 * rayon::current_num_threads());
    let target = text.len().div_ceil(pieces).max(1);
    let bytes = text.as_bytes();
    let mut runs = Vec::with_capacity(pieces);
    let mut start = 0;
    while start < text.len() {
        let guess = (start + target).min(text.len());
        // To the end of the line the guess falls in: a run boundary is always just after a
        // `\n`, so a `\r\n` is never split.
        let end = bytes[guess..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| guess + i + 1);
        runs.push((start, &text[start..end]));
        start = end;
    }
    runs
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
    const FLUSH: usize = 64 << 10;
    let mut h = blake3::Hasher::new();
    let mut text = String::with_capacity(FLUSH + 4096);
    for e in entries {
        e.push_line(&mut text);
        if text.len() >= FLUSH {
            h.update(text.as_bytes());
            text.clear();
        }
    }
    h.update(text.as_bytes());
    h.finalize().to_hex().to_string()
}

/// [`fingerprint`] of `entries`, which [`parse_manifest`] read from `text` (for other entries
/// the answer is wrong): the hash of `text` itself when it is their manifest text, as exp
/// writes it (no re-rendering of 70,000 lines).
pub(crate) fn fingerprint_of_text(text: &str, entries: &[FileEntry]) -> String {
    // A parsed line is never shorter than the entry's own line (a size written `+7` or `07` is
    // longer than `7`), and its end is one `\n` unless a `\r` is about or the last `\n` is
    // missing: so with equal lengths, a final `\n` and no `\r`, every line is the entry's own.
    let own_len: usize = entries.iter().map(FileEntry::line_len).sum();
    let canonical = text.len() == own_len
        && (text.is_empty() || text.ends_with('\n'))
        && !text.as_bytes().contains(&b'\r');
    if canonical {
        blake3::hash(text.as_bytes()).to_hex().to_string()
    } else {
        fingerprint(entries)
    }
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
    // The racily-clean rule compares file times with an instant before any stat or read.
    let start = SystemTime::now();
    let (found, cache) = rayon::join(
        || walk(folder),
        || cache_dir.map(|dir| StatCache::load(dir, folder)),
    );
    let mut found = found?;
    found.par_sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let known = match &cache {
        Some(cache) => cache.lines_of(found.iter().map(|(path, _)| path.as_str())),
        None => vec![None; found.len()],
    };
    let scanned: Vec<Result<(FileEntry, Kept), DataError>> = found
        .into_par_iter()
        .zip(known)
        .map(|((path, stat), line)| {
            let hit = line
                .zip(cache.as_ref())
                .filter(|(i, cache)| cache.lines[*i].stat == stat);
            if let Some((i, cache)) = hit {
                let entry = FileEntry {
                    path,
                    size: stat.size,
                    sha256: cache.sha256(i).to_string(),
                };
                let stored = match sink {
                    Some(sink) if !cache.lines[i].stored => {
                        sink.cached(&entry, &folder.join(&entry.path))?;
                        true
                    }
                    _ => cache.lines[i].stored,
                };
                return Ok((entry, Kept::Cached { line: i, stored }));
            }
            let file = folder.join(&path);
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
            Ok((
                entry,
                Kept::Hashed {
                    stat: settled,
                    stored: sink.is_some(),
                },
            ))
        })
        .collect();
    let mut entries = Vec::with_capacity(scanned.len());
    let mut kept = Vec::with_capacity(scanned.len());
    for item in scanned {
        let (entry, k) = item?;
        entries.push(entry);
        kept.push(k);
    }
    if let Some(cache) = &cache {
        cache.save(&entries, &kept);
    }
    Ok(entries)
}

/// What a scan keeps of one file in the stat cache.
#[derive(Clone, Copy)]
enum Kept {
    /// Its line of the cache answered; `stored` may have changed.
    Cached { line: usize, stored: bool },
    /// It was hashed; `stat` is its stat when it may be cached.
    Hashed {
        stat: Option<FileStat>,
        stored: bool,
    },
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

/// Every regular file under `root` (links to files followed) with its stat: paths relative to
/// `root`, `/`-separated, in no particular order. One level of folders at a time, each level's
/// folders listed and their entries looked at in parallel, and a file's stat asked relative to
/// its open folder (no path lookup). A loop, not a recursion: a tree as deep as the file system
/// allows needs no more stack than a flat one.
fn walk(root: &Path) -> Result<Vec<(String, FileStat)>, DataError> {
    let mut files = Vec::new();
    // Folders of the current level, relative to `root` ("" for the root itself).
    let mut level = vec![String::new()];
    while !level.is_empty() {
        let listings: Vec<Result<Vec<(usize, std::fs::DirEntry)>, DataError>> = level
            .par_iter()
            .enumerate()
            .map(|(i, prefix)| {
                let dir = if prefix.is_empty() {
                    root.to_path_buf()
                } else {
                    root.join(prefix)
                };
                let io = |source| DataError::Io {
                    path: dir.clone(),
                    source,
                };
                std::fs::read_dir(&dir)
                    .map_err(io)?
                    .map(|entry| entry.map(|e| (i, e)).map_err(io))
                    .collect()
            })
            .collect();
        let mut entries = Vec::new();
        for listing in listings {
            entries.append(&mut listing?);
        }
        let looked: Vec<Result<Found, DataError>> = entries
            .into_par_iter()
            .map(|(i, entry)| look_at(&level[i], entry))
            .collect();
        let mut next = Vec::new();
        for found in looked {
            match found? {
                Found::File(path, stat) => files.push((path, stat)),
                Found::Folder(path) => next.push(path),
                Found::Nothing => {}
            }
        }
        level = next;
    }
    Ok(files)
}

/// One entry of the folder `prefix` (relative to the walk's root), looked at.
fn look_at(prefix: &str, entry: std::fs::DirEntry) -> Result<Found, DataError> {
    let io = |path: &Path, source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        return Err(DataError::Inconsistent(format!(
            "{}: the file name is not UTF-8; rename it (manifests are text)",
            entry.path().display()
        )));
    };
    if name.starts_with('.') {
        return Ok(Found::Nothing);
    }
    if name.contains(['\n', '\r']) {
        return Err(DataError::Inconsistent(format!(
            "{:?}: a file name holding a line break cannot be listed in a manifest; rename it",
            entry.path().display().to_string()
        )));
    }
    let relative = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    };
    let kind = entry.file_type().map_err(|e| io(&entry.path(), e))?;
    let metadata = if kind.is_symlink() {
        let path = entry.path();
        let target = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
        if target.is_dir() {
            return Err(DataError::Inconsistent(format!(
                "{} is a link to a folder; exp does not follow folder links (copy the folder in, or link its files)",
                path.display()
            )));
        }
        target
    } else if kind.is_dir() {
        return Ok(Found::Folder(relative));
    } else {
        match entry.metadata() {
            Ok(m) => m,
            // Gone since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
            Err(e) => return Err(io(&entry.path(), e)),
        }
    };
    // Not a regular file (a socket, a fifo): not data.
    Ok(FileStat::from_metadata(&metadata)
        .map_or(Found::Nothing, |stat| Found::File(relative, stat)))
}

/// One entry of a folder, looked at.
enum Found {
    File(String, FileStat),
    /// A folder to walk, relative to the root.
    Folder(String),
    Nothing,
}

/// A folder's stat cache: one text line per file, `<sha256> <size> <mtime_ns> <ctime_ns>
/// <inode> <device> <stored> <path>` (`stored`: 1 when a [`Sink`] took the file), sorted by path
/// bytes, so that a scan's sorted paths find their lines in one merge. The text is kept and the
/// lines point into it: loading 70,000 lines allocates nothing per line.
struct StatCache {
    file: PathBuf,
    text: String,
    /// Sorted by path bytes, no path twice.
    lines: Vec<CacheLine>,
}

struct CacheLine {
    /// Byte ranges of the path and the SHA-256 in the text.
    path: std::ops::Range<usize>,
    sha256: std::ops::Range<usize>,
    stat: FileStat,
    stored: bool,
}

impl StatCache {
    /// The cache of `folder` kept in `dir` (named by the folder's absolute path). A file that
    /// is missing or damaged is an empty cache: the cache only saves work, it never decides.
    fn load(dir: &Path, folder: &Path) -> StatCache {
        let absolute = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        let key = blake3::hash(absolute.to_string_lossy().as_bytes()).to_hex();
        let file = dir.join("stat").join(format!("{}-v2.txt", &key[..32]));
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let runs: Vec<Option<Vec<CacheLine>>> = line_runs(&text)
            .into_par_iter()
            .map(|(offset, run)| {
                let mut lines = Vec::with_capacity(run.len() / 120 + 1);
                let mut at = offset;
                for line in run.split_terminator('\n') {
                    lines.push(parse_cache_line(line, at)?);
                    at += line.len() + 1;
                }
                Some(lines)
            })
            .collect();
        let mut lines = Vec::new();
        for run in runs {
            match run {
                Some(mut run) => lines.append(&mut run),
                None => {
                    lines.clear();
                    break;
                }
            }
        }
        let sorted = lines
            .windows(2)
            .all(|w| text.as_bytes()[w[0].path.clone()] < text.as_bytes()[w[1].path.clone()]);
        if !sorted {
            lines.clear();
        }
        StatCache { file, text, lines }
    }

    fn path(&self, i: usize) -> &str {
        &self.text[self.lines[i].path.clone()]
    }

    fn sha256(&self, i: usize) -> &str {
        &self.text[self.lines[i].sha256.clone()]
    }

    /// The line of each of `paths` (sorted by bytes), if it has one.
    fn lines_of<'a>(&self, paths: impl Iterator<Item = &'a str>) -> Vec<Option<usize>> {
        let mut i = 0;
        paths
            .map(|path| {
                while i < self.lines.len() && self.path(i).as_bytes() < path.as_bytes() {
                    i += 1;
                }
                (i < self.lines.len() && self.path(i) == path).then_some(i)
            })
            .collect()
    }

    /// Writes the cache of the latest scan (`entries`, and what it `kept` of each) when it
    /// differs from the loaded one.
    fn save(&self, entries: &[FileEntry], kept: &[Kept]) {
        let mut lines = 0;
        let mut changed = false;
        for k in kept {
            match *k {
                Kept::Cached { line, stored } => {
                    lines += 1;
                    changed |= stored != self.lines[line].stored;
                }
                Kept::Hashed { stat: Some(_), .. } => {
                    lines += 1;
                    changed = true;
                }
                Kept::Hashed { stat: None, .. } => {}
            }
        }
        // Without a new or changed line, the kept lines are a subset of the loaded ones: the
        // same set when the counts agree.
        if !changed && lines == self.lines.len() {
            return;
        }
        use std::fmt::Write;
        let mut text = String::with_capacity(lines * 140);
        for (e, k) in entries.iter().zip(kept) {
            let (s, stored) = match *k {
                Kept::Cached { line, stored } => (&self.lines[line].stat, stored),
                Kept::Hashed {
                    stat: Some(ref s),
                    stored,
                } => (s, stored),
                Kept::Hashed { stat: None, .. } => continue,
            };
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "{} {} {} {} {} {} {} {}",
                e.sha256,
                s.size,
                s.mtime_ns,
                s.ctime_ns,
                s.ino,
                s.dev,
                u8::from(stored),
                e.path
            );
        }
        // A cache that cannot be written costs a re-hash next time, nothing more.
        let _ = crate::files::write_whole(&self.file, text.as_bytes(), false);
    }
}

/// One line of a stat cache that starts at byte `at` of its text.
fn parse_cache_line(line: &str, at: usize) -> Option<CacheLine> {
    let mut parts = line.splitn(8, ' ');
    let sha = parts.next()?;
    if !is_sha256_hex(sha) {
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
    // The path runs to the end of the line.
    let path = parts.next()?;
    let path_at = at + line.len() - path.len();
    Some(CacheLine {
        path: path_at..path_at + path.len(),
        sha256: at..at + 64,
        stat,
        stored,
    })
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
    fn links_to_files_are_followed_links_to_folders_refused_odd_files_left_out() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("f");
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        std::fs::write(dir.path().join("outside"), b"linked").unwrap();
        std::fs::write(folder.join("sub/plain"), b"plain").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), folder.join("sub/link")).unwrap();
        let fifo = std::ffi::CString::new(folder.join("fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let entries = scan(&folder, None).unwrap();
        let got: Vec<(&str, u64)> = entries.iter().map(|e| (e.path.as_str(), e.size)).collect();
        assert_eq!(
            got,
            [("sub/link", 6), ("sub/plain", 5)],
            "the fifo is not data"
        );
        assert_eq!(entries[0].sha256, hex::encode(Sha256::digest(b"linked")));

        std::os::unix::fs::symlink(dir.path(), folder.join("sub/up")).unwrap();
        let e = scan(&folder, None).unwrap_err().to_string();
        assert!(e.contains("sub/up is a link to a folder"), "{e}");
        std::fs::remove_file(folder.join("sub/up")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("gone"), folder.join("dangling")).unwrap();
        let e = scan(&folder, None).unwrap_err().to_string();
        assert!(e.contains("dangling"), "{e}");
        std::fs::remove_file(folder.join("dangling")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
        std::fs::write(folder.join("sub").join(odd), b"1").unwrap();
        let e = scan(&folder, None).unwrap_err().to_string();
        assert!(e.contains("the file name is not UTF-8"), "{e}");
    }

    /// The walk is a loop over levels: a tree as deep as paths allow (1,500 folders here; the
    /// recursive walk on rayon's 2 MiB worker stacks overflowed near 1,000) is scanned.
    #[test]
    fn a_deep_tree_is_walked_without_running_out_of_stack() {
        let dir = tempfile::tempdir().unwrap();
        let deep: String = vec!["a"; 1500].join("/");
        std::fs::create_dir_all(dir.path().join(&deep)).unwrap();
        std::fs::write(dir.path().join(&deep).join("f"), b"x").unwrap();
        std::fs::write(dir.path().join("a/g"), b"y").unwrap();
        let entries = scan(dir.path(), None).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, [format!("{deep}/f").as_str(), "a/g"]);
    }

    /// The fast fingerprint (the text's own hash) is taken only for text exp would write; any
    /// other spelling of the same entries gets their fingerprint all the same.
    #[test]
    fn the_fingerprint_of_a_manifest_text_is_that_of_its_entries() {
        let sha = hex::encode(Sha256::digest(b"x"));
        let canonical = format!("{sha} 7 a/b\n{sha} 10 c\n");
        let entries = parse_manifest(&canonical).unwrap();
        let expected = fingerprint(&entries);
        assert_eq!(
            expected,
            blake3::hash(canonical.as_bytes()).to_hex().to_string()
        );
        for text in [
            canonical.clone(),
            format!("{sha} 07 a/b\n{sha} 10 c"),
            format!("{sha} +7 a/b\n{sha} 10 c\n"),
            format!("{sha} 7 a/b\r\n{sha} 10 c\r\n"),
            format!("{sha} 07 a/b\n{sha} 10 c"),
        ] {
            assert_eq!(parse_manifest(&text).unwrap(), entries, "{text:?}");
            assert_eq!(fingerprint_of_text(&text, &entries), expected, "{text:?}");
        }
        assert_eq!(fingerprint_of_text("", &[]), fingerprint(&[]));
    }

    /// A long manifest is parsed in runs of lines on several threads: the same entries, and an
    /// error still names its line.
    #[test]
    fn long_manifests_parse_in_runs_and_errors_name_their_line() {
        let sha = hex::encode(Sha256::digest(b"x"));
        let entries: Vec<FileEntry> = (0..20_000)
            .map(|i| FileEntry {
                path: format!("train/{i:06}.png"),
                size: i,
                sha256: sha.clone(),
            })
            .collect();
        let text = manifest_text(&entries);
        assert!(line_runs(&text).len() > 1, "more than one run");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| parse_manifest(&text)).unwrap(), entries);
        let broken = text.replacen("train/017345.png", "../017345.png", 1);
        assert_eq!(
            pool.install(|| parse_manifest(&broken)).unwrap_err(),
            format!(
                "line 17346: the path must be relative, inside the folder: \"{sha} 17345 ../017345.png\""
            )
        );
    }

    #[test]
    fn a_damaged_or_unsorted_stat_cache_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("f");
        std::fs::create_dir_all(&folder).unwrap();
        for name in ["a", "b"] {
            std::fs::write(folder.join(name), name).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        let cache_dir = dir.path().join("cache");
        scan(&folder, Some(&cache_dir)).unwrap();
        let cache = StatCache::load(&cache_dir, &folder);
        assert_eq!(
            (cache.lines.len(), cache.path(0), cache.path(1)),
            (2, "a", "b")
        );
        assert_eq!(cache.sha256(1), hex::encode(Sha256::digest(b"b")));
        let text = cache.text.clone();
        let lines: Vec<&str> = text.lines().collect();
        for damaged in [
            format!("{}\n{}\n", lines[1], lines[0]),
            format!("{}\n{}\n", lines[0], lines[1].replace(" 0 b", " 7 b")),
            format!("{}\n{}\n", lines[0], lines[0]),
            format!("{}\n{}{}\n", lines[0], "Z".repeat(64), &lines[1][64..]),
        ] {
            std::fs::write(&cache.file, damaged).unwrap();
            assert!(StatCache::load(&cache_dir, &folder).lines.is_empty());
        }
    }

    #[test]
    fn a_line_break_in_a_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a\nb"), b"1").unwrap();
        let e = scan(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("line break"), "{e}");
    }
}
