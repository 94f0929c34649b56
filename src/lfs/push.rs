//! `exp lfs pre-push`: upload the LFS objects a push references, when git-lfs is not in charge.
//!
//! Called by exp's pre-push hook with Git's arguments (remote name, URL) and its stdin (`<local
//! ref> <local sha> <remote ref> <remote sha>` per line). Every commit the push sends (reachable
//! from a pushed sha, not from what the remote already has) is scanned for LFS pointer blobs;
//! the objects the remote lacks are uploaded (file system or batch API) and the remote is asked
//! again before Git may update its refs, so the push never leaves it with a pointer whose
//! object it lacks.

use std::collections::BTreeMap;
use std::io::BufRead;

use git2::{Oid as GitOid, Repository};

use super::remote::{RemoteStore, TransferError};
use super::scan::Reference;
use super::{LfsError, LfsPointer, LfsStore, Oid};

/// What an upload for a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Objects the pushed commits reference.
    pub referenced: usize,
    /// Objects sent to the remote.
    pub uploaded: usize,
}

/// An upload for a push that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Reading the repository failed.
    #[error("reading the pushed commits: {0}")]
    Git(#[from] git2::Error),
    /// The store failed.
    #[error(transparent)]
    Lfs(#[from] LfsError),
    /// Talking to the remote failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// The input is not what Git gives a pre-push hook.
    #[error(
        "pre-push input line {0:?} is not `<local ref> <local sha> <remote ref> <remote sha>`"
    )]
    Input(String),
    /// An object the push references is neither local nor on the remote.
    #[error("the push references LFS object {oid} ({path} in {commit}), which is not in the local store nor on the remote: the remote would get a pointer without its object")]
    Missing {
        /// The object.
        oid: String,
        /// Where the pointer is.
        path: String,
        /// In which commit.
        commit: String,
    },
}

impl PushError {
    /// What to do about it, for the push that failed (exp's pre-push hook or `exp push`).
    pub fn hint(&self) -> Option<String> {
        match self {
            PushError::Transfer(_) => Some(
                "check the remote's URL (`git remote -v`) and `git config lfs.url` (the remote's Git LFS server)".into(),
            ),
            PushError::Missing { .. } => Some(
                "push from a clone whose LFS store has the object (`exp lfs fsck` lists what this store lacks), or remove the commit that references it".into(),
            ),
            PushError::Lfs(e) => e.hint(),
            PushError::Git(_) | PushError::Input(_) => None,
        }
    }
}

/// Uploads the LFS objects referenced by commits reachable from `tips` and not from `hidden`
/// that `remote` lacks; checks the remote has all of them afterwards.
pub fn upload_for_push(
    repo: &Repository,
    remote: &RemoteStore,
    tips: &[GitOid],
    hidden: &[GitOid],
) -> Result<PushReport, PushError> {
    let referenced = super::scan::referenced_objects(repo, tips, hidden)?;
    upload_referenced(repo, remote, &referenced)
}

/// Uploads the objects of `referenced` that `remote` lacks; checks the remote has all of them
/// afterwards.
pub fn upload_referenced(
    repo: &Repository,
    remote: &RemoteStore,
    referenced: &BTreeMap<Oid, Reference>,
) -> Result<PushReport, PushError> {
    let mut report = PushReport {
        referenced: referenced.len(),
        uploaded: 0,
    };
    if referenced.is_empty() {
        return Ok(report);
    }
    let local = LfsStore::for_repo(repo);
    let pointers: Vec<LfsPointer> = referenced.values().map(|r| r.pointer.clone()).collect();
    let lacking = remote.missing(&pointers)?;
    for p in &lacking {
        if !local.contains(&p.oid) {
            let r = &referenced[&p.oid];
            return Err(PushError::Missing {
                oid: p.oid.as_str().to_string(),
                path: r.path.clone(),
                commit: r.commit.to_string()[..10].to_string(),
            });
        }
    }
    report.uploaded = remote.upload(&local, &lacking)?;
    Ok(report)
}

/// Reads Git's pre-push lines and uploads what the pushed commits reference.
pub fn pre_push(
    repo: &Repository,
    remote_name: &str,
    url: &str,
    input: impl BufRead,
) -> Result<PushReport, PushError> {
    let mut tips = Vec::new();
    let mut hidden = Vec::new();
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
        tips.push(GitOid::from_str(local_sha)?);
        if !zero(remote_sha) {
            if let Ok(oid) = GitOid::from_str(remote_sha) {
                // What the remote has needs no upload (if we know it).
                if repo.find_commit(oid).is_ok() {
                    hidden.push(oid);
                }
            }
        }
    }
    if tips.is_empty() {
        return Ok(PushReport::default());
    }
    let remote = RemoteStore::for_remote(repo, remote_name, url)?;
    upload_for_push(repo, &remote, &tips, &hidden)
}
