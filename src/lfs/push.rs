//! `exp lfs pre-push`: upload the LFS objects a push references, when git-lfs is not in charge.
//!
//! Called by exp's pre-push hook with Git's arguments (remote name, URL) and its stdin (`<local
//! ref> <local sha> <remote ref> <remote sha>` per line). Every commit the push sends (reachable
//! from a pushed sha, not from what the remote already has) is scanned for LFS pointer blobs, and
//! each object the remote's store lacks is copied there, verified, through a temp file. This
//! version speaks to remotes on the file system (`/path`, `file://`); for an HTTP(S) remote the
//! Git LFS batch API is needed, and the push is refused rather than leaving the remote with
//! pointers whose objects it lacks.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid as GitOid, Repository, TreeWalkMode, TreeWalkResult};

use super::{LfsError, LfsPointer, LfsStore, Oid};

/// Pointer files are small; anything larger is content, not a pointer.
const MAX_POINTER: usize = 1024;

/// What a pre-push upload did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Objects the push references.
    pub referenced: usize,
    /// Objects copied to the remote.
    pub uploaded: usize,
}

/// A pre-push upload that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Reading the repository failed.
    #[error("reading the pushed commits: {0}")]
    Git(#[from] git2::Error),
    /// The store failed.
    #[error(transparent)]
    Lfs(#[from] LfsError),
    /// The input is not what Git gives a pre-push hook.
    #[error(
        "pre-push input line {0:?} is not `<local ref> <local sha> <remote ref> <remote sha>`"
    )]
    Input(String),
    /// The remote is not on the file system.
    #[error("remote {url} is not a path or file:// URL; uploading to it needs the Git LFS batch API, which this exp does not speak yet")]
    Unsupported {
        /// The remote's URL.
        url: String,
    },
    /// An object the push references is not in the local store.
    #[error("the push references LFS object {oid} ({path} in {commit}), which is not in the local store: the remote would get a pointer without its object")]
    Missing {
        /// The object.
        oid: String,
        /// Where the pointer is.
        path: String,
        /// In which commit.
        commit: String,
    },
}

/// The remote's LFS store for a file-system URL: `<repo>/lfs` for a bare repository,
/// `<repo>/.git/lfs` for one with a work tree.
pub fn remote_store(url: &str) -> Result<LfsStore, PushError> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    let path = Path::new(path);
    if url.contains("://") && !url.starts_with("file://") || !path.is_absolute() && !path.exists() {
        return Err(PushError::Unsupported {
            url: url.to_string(),
        });
    }
    let dotgit = path.join(".git");
    let root: PathBuf = if dotgit.is_dir() {
        dotgit.join("lfs")
    } else {
        path.join("lfs")
    };
    Ok(LfsStore::at(root))
}

/// Reads Git's pre-push lines and uploads what the pushed commits reference.
pub fn pre_push(
    repo: &Repository,
    url: &str,
    input: impl BufRead,
) -> Result<PushReport, PushError> {
    let remote = remote_store(url)?;
    let local = LfsStore::for_repo(repo);
    let mut walk = repo.revwalk()?;
    let mut any = false;
    for line in input.lines() {
        let line = line.map_err(|e| PushError::Input(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, local_sha, _, remote_sha] = fields[..] else {
            return Err(PushError::Input(line));
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if zero(local_sha) {
            continue; // a deletion sends nothing
        }
        walk.push(GitOid::from_str(local_sha)?)?;
        any = true;
        if !zero(remote_sha) {
            if let Ok(oid) = GitOid::from_str(remote_sha) {
                // What the remote has needs no upload (if we know it).
                if repo.find_commit(oid).is_ok() {
                    walk.hide(oid)?;
                }
            }
        }
    }
    let mut report = PushReport::default();
    if !any {
        return Ok(report);
    }
    let mut seen_trees = BTreeSet::new();
    let mut oids: Vec<(Oid, String, String)> = Vec::new();
    for commit in walk {
        let commit = repo.find_commit(commit?)?;
        let tree = commit.tree()?;
        if !seen_trees.insert(tree.id()) {
            continue;
        }
        let short = commit.id().to_string()[..10].to_string();
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(ObjectType::Blob) {
                if let Ok(blob) = repo.find_blob(entry.id()) {
                    if blob.size() <= MAX_POINTER {
                        if let Ok(pointer) = LfsPointer::parse(blob.content()) {
                            let path = format!("{dir}{}", entry.name().unwrap_or(""));
                            oids.push((pointer.oid, path, short.clone()));
                        }
                    }
                }
            }
            TreeWalkResult::Ok
        })?;
    }
    oids.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    oids.dedup_by(|a, b| a.0.as_str() == b.0.as_str());
    report.referenced = oids.len();
    for (oid, path, commit) in oids {
        if remote.contains(&oid) {
            continue;
        }
        if !local.contains(&oid) {
            return Err(PushError::Missing {
                oid: oid.as_str().to_string(),
                path,
                commit,
            });
        }
        local.verify(&oid)?;
        let file = std::fs::File::open(local.object_path(&oid)).map_err(|source| LfsError::Io {
            action: "read",
            path: local.object_path(&oid),
            source,
        })?;
        // insert hashes while copying and names the object by what it read: a damaged copy
        // cannot take the oid's name.
        let written = remote.insert(file)?;
        if written.oid.as_str() != oid.as_str() {
            return Err(PushError::Lfs(LfsError::BadOid(
                written.oid.as_str().to_string(),
            )));
        }
        report.uploaded += 1;
    }
    Ok(report)
}
