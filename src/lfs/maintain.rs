//! Looking after the store: `exp lfs ls`, `exp lfs fsck`, `exp lfs prune`, and the pre-commit
//! guard against raw weights and objects not yet on disk.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use git2::Repository;
use serde::Serialize;

use super::scan::{self, TreeFile};
use super::{LfsError, LfsPointer, LfsStore, Oid};

/// Objects younger than this are never pruned: an `exp run` or `git add` in progress has
/// stored its object but not yet committed the pointer.
pub const PRUNE_GRACE: Duration = Duration::from_secs(3600);

/// One `filter=lfs` file at a revision.
#[derive(Debug, Clone, Serialize)]
pub struct LsEntry {
    /// Path in the tree.
    pub path: String,
    /// The object id, when the file is a pointer.
    pub oid: Option<String>,
    /// The object's size, when the file is a pointer.
    pub size: Option<u64>,
    /// `present`, `missing` (pointer without local object), `raw` (content committed in place
    /// of a pointer) or `malformed` (looks like a pointer but does not parse).
    pub state: &'static str,
}

fn peel_tree<'r>(repo: &'r Repository, rev: &str) -> Result<git2::Tree<'r>, LfsError> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_tree())
        .map_err(|e| LfsError::Revision {
            rev: rev.to_string(),
            message: e.message().to_string(),
        })
}

fn state_of(repo: &Repository, store: &LfsStore, file: &TreeFile) -> &'static str {
    match &file.pointer {
        // An object is its content, so a size that disagrees is the pointer's error: two
        // pointers to one object must not claim two sizes (the gate refuses such a pointer).
        Some(p) if store.contains(&p.oid) && !store.holds(p) => "size-mismatch",
        Some(p) if store.contains(&p.oid) => "present",
        Some(_) => "missing",
        None => {
            let looks_like_pointer = repo
                .find_blob(file.blob)
                .is_ok_and(|b| b.content().starts_with(b"version https://git-lfs"));
            if looks_like_pointer {
                "malformed"
            } else {
                "raw"
            }
        }
    }
}

/// The pointer files (and `filter=lfs` files that are not pointers) at `rev`.
pub fn ls(repo: &Repository, rev: &str) -> Result<Vec<LsEntry>, LfsError> {
    let store = LfsStore::for_repo(repo);
    let tree = peel_tree(repo, rev)?;
    let files = scan::lfs_files(repo, &tree)?;
    Ok(files
        .iter()
        .map(|f| LsEntry {
            path: f.path.clone(),
            oid: f.pointer.as_ref().map(|p| p.oid.as_str().to_string()),
            size: f.pointer.as_ref().map(|p| p.size),
            state: state_of(repo, &store, f),
        })
        .collect())
}

/// The folder stat caches remember which files `exp data add` stored; once objects leave the
/// store, that memory is wrong: forget it, so the next add checks every object again.
fn forget_stored(repo: &Repository) -> Result<(), LfsError> {
    let cache = crate::git::cache_dir(repo);
    crate::data::scan::forget_stored(&cache).map_err(|source| LfsError::Io {
        action: "clearing the folder stat caches in",
        path: cache,
        source,
    })
}

/// What `exp lfs fsck` found.
#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    /// Objects re-hashed.
    pub objects_checked: usize,
    /// Objects whose content is not their name: moved to this path.
    pub corrupt: Vec<(String, PathBuf)>,
    /// `filter=lfs` files at the revision that are not healthy pointers with a present object.
    pub problems: Vec<LsEntry>,
}

impl FsckReport {
    /// Whether everything checked out.
    pub fn ok(&self) -> bool {
        self.corrupt.is_empty() && self.problems.is_empty()
    }
}

/// Re-hashes every object (moving corrupt ones aside to `lfs/bad/`, never deleting them) and
/// checks the pointers at `rev`: each parses and its object is present.
pub fn fsck(repo: &Repository, rev: &str) -> Result<FsckReport, LfsError> {
    let store = LfsStore::for_repo(repo);
    let mut report = FsckReport::default();
    for (oid, _) in store.objects()? {
        report.objects_checked += 1;
        match store.verify(&oid) {
            Ok(()) => {}
            Err(LfsError::Corrupt { .. }) => {
                forget_stored(repo)?;
                let moved = store.quarantine(&oid)?;
                report.corrupt.push((oid.as_str().to_string(), moved));
            }
            Err(e) => return Err(e),
        }
    }
    report.problems = ls(repo, rev)?
        .into_iter()
        .filter(|e| e.state != "present")
        .collect();
    Ok(report)
}

/// What `exp lfs prune` did (or would do, with `dry_run`).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Objects something still reaches.
    pub kept: usize,
    /// Unreferenced objects younger than the grace period, kept.
    pub recent: usize,
    /// Objects deleted (or that would be).
    pub deleted: Vec<(String, u64)>,
    /// Temp files in `lfs/tmp` older than the grace period (a writer killed before it named
    /// its object, by exp or git-lfs), deleted (or that would be), with their sizes.
    pub stale_temp: Vec<(String, u64)>,
}

/// Deletes the objects that nothing reaches: no commit reachable from any ref (branches,
/// tags, remote-tracking refs, notes, the stash) or any reflog entry (amended and reset-away
/// commits, older stashes), no HEAD of any work tree, no staged pointer in any work tree's
/// index, no work-tree file in the stat cache. Objects younger than [`PRUNE_GRACE`] are kept
/// too (storing an object again refreshes its age).
pub fn prune(repo: &Repository, dry_run: bool) -> Result<PruneReport, LfsError> {
    let store = LfsStore::for_repo(repo);
    let mut tips = Vec::new();
    let mut staged: Vec<Oid> = Vec::new();
    for reference in repo.references()? {
        let reference = reference?;
        if let Some(target) = reference.target() {
            tips.push(target);
        }
        // A reflog keeps amended and reset-away commits reachable for `git reset HEAD@{1}`
        // (the stash's older entries live only there, too).
        if let Some(name) = reference.name() {
            if let Ok(reflog) = repo.reflog(name) {
                tips.extend(reflog.iter().map(|e| e.id_new()));
            }
        }
    }
    // Every work tree: the main one (wherever prune runs from) and each linked one: its HEAD,
    // HEAD's reflog and its index. A work tree that cannot be opened stops the prune rather
    // than have its objects deleted.
    let main = Repository::open(repo.commondir())?;
    let mut worktrees = vec![main];
    for name in repo.worktrees()?.iter().flatten() {
        let opened = repo
            .find_worktree(name)
            .and_then(|wt| Repository::open_from_worktree(&wt));
        match opened {
            Ok(w) => worktrees.push(w),
            Err(e) => {
                return Err(LfsError::Revision {
                    rev: format!("worktree {name}"),
                    message: format!(
                        "{} (run `git worktree prune` if it is gone, then prune again)",
                        e.message()
                    ),
                })
            }
        }
    }
    for w in &worktrees {
        if let Ok(head) = w.head() {
            tips.extend(head.target());
        }
        if let Ok(reflog) = w.reflog("HEAD") {
            tips.extend(reflog.iter().map(|e| e.id_new()));
        }
        staged.extend(scan::index_pointers(w)?.into_iter().map(|p| p.oid));
    }
    let mut keep: BTreeSet<Oid> = scan::referenced_objects(repo, &tips, &[])?
        .into_keys()
        .collect();
    keep.extend(scan::index_pointers(repo)?.into_iter().map(|p| p.oid));
    keep.extend(staged);
    keep.extend(super::statcache::StatCache::load(super::statcache::stat_cache_path(repo)).oids());

    let now = SystemTime::now();
    let mut report = PruneReport::default();
    for (oid, size) in store.objects()? {
        if keep.contains(&oid) {
            report.kept += 1;
            continue;
        }
        let age = std::fs::metadata(store.object_path(&oid))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        if age < PRUNE_GRACE {
            report.recent += 1;
            continue;
        }
        if !dry_run {
            store.remove(&oid)?;
        }
        report.deleted.push((oid.as_str().to_string(), size));
    }
    if !dry_run && !report.deleted.is_empty() {
        forget_stored(repo)?;
    }
    // A temp file is an object being written; one older than the grace period belongs to a
    // writer that died (a live one writes for seconds, not an hour).
    if let Ok(entries) = std::fs::read_dir(store.temp_dir()) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            if !meta.is_file() || age < PRUNE_GRACE {
                continue;
            }
            if !dry_run {
                std::fs::remove_file(e.path()).map_err(|source| LfsError::Io {
                    action: "removing",
                    path: e.path(),
                    source,
                })?;
            }
            report
                .stale_temp
                .push((e.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    Ok(report)
}

/// What a commit is about to add under LFS: the staged files that differ from HEAD's.
#[derive(Debug, Default)]
pub struct StagedLfs {
    /// `filter=lfs` files staged as raw content instead of a pointer: the pre-commit guard
    /// refuses them.
    pub raw: Vec<String>,
    /// Pointers staged, with their paths: their objects must be durable (and present)
    /// before the commit names them.
    pub pointers: Vec<(String, LfsPointer)>,
}

/// The LFS files of the index Git is about to commit that differ from HEAD's (what
/// exp's pre-commit hook checks).
pub fn staged_lfs(repo: &Repository) -> Result<StagedLfs, LfsError> {
    // Git runs pre-commit with GIT_INDEX_FILE naming the index it is about to commit
    // (`.git/index.lock` for `commit -a`, a temporary one for `commit PATH`): that one, not
    // `.git/index`, is what must hold pointers. A relative path is relative to the hook's
    // directory, the top of the work tree.
    let index = match std::env::var_os("GIT_INDEX_FILE").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            let path = if path.is_absolute() {
                path
            } else {
                crate::git::workdir(repo).join(path)
            };
            git2::Index::open(&path)?
        }
        None => repo.index()?,
    };
    let head_tree = repo.head().ok().and_then(|h| h.peel_to_tree().ok());
    let mut staged = StagedLfs::default();
    let empty = scan::empty_blob();
    for entry in index.iter() {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        // git-lfs stores an empty file as the empty blob, not as a pointer.
        if entry.id == empty || !scan::routed_through_lfs(repo, &path) {
            continue;
        }
        let unchanged = head_tree
            .as_ref()
            .and_then(|t| t.get_path(std::path::Path::new(&path)).ok())
            .is_some_and(|e| e.id() == entry.id);
        if unchanged {
            continue;
        }
        match scan::pointer_in_blob(repo, entry.id)? {
            Some(pointer) => staged.pointers.push((path, pointer)),
            None => staged.raw.push(path),
        }
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> git2::IndexEntry {
        git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            // As `git update-index --cacheinfo` leaves it: no stat data, not even the size.
            file_size: 0,
            id: git2::Oid::zero(),
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        }
    }

    #[test]
    fn staged_lfs_judges_the_staged_blobs_not_the_stat_data() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        std::fs::write(dir.path().join(".gitattributes"), "*.bin filter=lfs\n").unwrap();
        let store = LfsStore::at(dir.path().join("lfs"));
        let pointer = store.insert(&b"weights"[..]).unwrap();
        let mut index = repo.index().unwrap();
        let staged = [
            ("w.bin", pointer.encode().into_bytes()),
            ("raw.bin", b"raw weights".to_vec()),
            ("empty.bin", Vec::new()),
            ("notes.txt", b"not routed through LFS".to_vec()),
        ];
        for (path, content) in &staged {
            let mut e = entry(path);
            e.id = repo.blob(content).unwrap();
            index.add(&e).unwrap();
        }
        index.write().unwrap();
        let found = staged_lfs(&repo).unwrap();
        assert_eq!(found.raw, vec!["raw.bin".to_string()]);
        assert_eq!(found.pointers, vec![("w.bin".to_string(), pointer)]);
    }
}
