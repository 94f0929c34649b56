//! `exp push` and `exp pull`: branches, run tags and the LFS objects they reference, together.
//!
//! With git-lfs in charge they delegate to it (`git lfs push`, `git lfs pull`). Otherwise the
//! objects move first on push (uploaded and confirmed present before any ref is updated) and
//! after the fetch on pull (downloaded, verified, then the work-tree files that still hold
//! pointers are checked out again through exp's filter).

use std::path::Path;

use git2::{Oid as GitOid, Repository};

use super::config::{self, InCharge};
use super::push::{self, PushError, PushReport};
use super::remote::{RemoteStore, TransferError};
use super::{LfsPointer, LfsStore};
use crate::git::{self, GitError};

/// A push or pull that failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A Git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// Reading the repository failed.
    #[error("reading the repository: {0}")]
    Repo(#[from] git2::Error),
    /// Uploading objects failed (nothing was pushed).
    #[error(transparent)]
    Push(#[from] PushError),
    /// Downloading objects failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
    /// No remote to talk to.
    #[error("no remote named {0:?}")]
    NoRemote(String),
    /// No remote named, and neither an upstream nor `origin` to default to.
    #[error("no remote given and none to default to (no upstream, no origin)")]
    NoDefaultRemote,
    /// HEAD is not on a branch.
    #[error("HEAD is detached: name the branch to push")]
    Detached,
    /// A branch named on the command line does not exist here.
    #[error("no local branch named {0:?}")]
    NoBranch(String),
    /// git-lfs, in charge of the objects, failed to move them (`git lfs push` or `pull`).
    #[error("git-lfs could not transfer the LFS objects: {0}")]
    GitLfs(#[source] GitError),
    /// An object to be pushed is not what its name says (nothing was pushed).
    #[error("the LFS object {oid} of {path} is corrupt in the local store (its content does not hash to its name); it was moved to {moved} and nothing was pushed")]
    CorruptObject {
        /// The object id.
        oid: String,
        /// A committed path that names it.
        path: String,
        /// Where it was moved aside.
        moved: String,
    },
}

/// The command a [`SyncError`] ended: the same failure means different things to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncCommand {
    /// `exp push`: objects first, then refs.
    Push,
    /// `exp pull`: refs first, then objects.
    Pull,
}

impl SyncError {
    /// What the user can do after `command` failed this way.
    pub fn hint(&self, command: SyncCommand) -> Option<String> {
        let check_url = "check the remote's URL (`git remote -v`) and `git config lfs.url`";
        Some(match (self, command) {
            (SyncError::NoDefaultRemote, _) => {
                "add one (`git remote add origin URL`) or name it: `exp push REMOTE` / `exp pull REMOTE`".into()
            }
            (SyncError::NoRemote(_), _) => {
                "`git remote -v` lists the remotes; add one with `git remote add origin URL`".into()
            }
            (SyncError::Detached, _) => {
                "switch to a branch, or name it: `exp push REMOTE BRANCH`".into()
            }
            (SyncError::NoBranch(_), _) => {
                "nothing was pushed; `git branch` lists the local branches".into()
            }
            (SyncError::CorruptObject { .. }, _) => {
                "fetch the object again from a copy that has it (`exp pull`), or re-record the run (`exp run`); `exp lfs fsck` checks the whole store".into()
            }
            (SyncError::Push(e), _) => match e.hint() {
                Some(hint) => format!("no ref was pushed; {hint}"),
                None => "no ref was pushed".into(),
            },
            (SyncError::Transfer(_) | SyncError::GitLfs(_), SyncCommand::Push) => format!(
                "no ref was pushed: the weights must reach the remote first; {check_url}"
            ),
            (SyncError::Transfer(_) | SyncError::GitLfs(_), SyncCommand::Pull) => format!(
                "the branch was fetched but its weights were not all downloaded; {check_url}, then run `exp pull` again"
            ),
            (SyncError::Git(_), SyncCommand::Push) => {
                "the LFS objects are on the remote; fix what Git reports above and run `exp push` again".into()
            }
            (SyncError::Git(_), SyncCommand::Pull) => {
                "nothing was downloaded; fix what Git reports above (a branch that diverged needs `git pull --rebase` or a merge) and run `exp pull` again".into()
            }
            (SyncError::Repo(_), _) => return None,
        })
    }
}

/// What `exp push` did.
#[derive(Debug, Default)]
pub struct PushSummary {
    /// The refspecs pushed.
    pub refs: Vec<String>,
    /// Objects uploaded (exp's transfer; 0 when git-lfs did it).
    pub objects: PushReport,
    /// Whether git-lfs moved the objects.
    pub by_git_lfs: bool,
}

fn remote_url(repo: &Repository, remote: &str) -> Result<String, SyncError> {
    repo.find_remote(remote)
        .ok()
        .and_then(|r| r.url().map(String::from))
        .ok_or_else(|| SyncError::NoRemote(remote.to_string()))
}

/// Pushes `branches` (default: the current branch) and the run and release tags that point
/// into them to `remote`, with their LFS objects.
pub fn push(
    repo: &Repository,
    remote: &str,
    branches: &[String],
) -> Result<PushSummary, SyncError> {
    let worktree = git::workdir(repo).to_path_buf();
    let url = remote_url(repo, remote)?;
    let branches: Vec<String> = if branches.is_empty() {
        let (current, _) = git::current_branch(repo).map_err(|_| SyncError::Detached)?;
        vec![current]
    } else {
        branches.to_vec()
    };
    let mut tips = Vec::new();
    for b in &branches {
        let commit = repo
            .find_branch(b, git2::BranchType::Local)
            .map_err(|_| SyncError::NoBranch(b.clone()))?
            .get()
            .peel_to_commit()?;
        tips.push(commit.id());
    }
    let mut refs: Vec<String> = branches.iter().map(|b| format!("refs/heads/{b}")).collect();
    for tag in tags_into(repo, &tips)? {
        refs.push(format!("refs/tags/{tag}"));
    }

    let mut summary = PushSummary {
        refs: refs.clone(),
        ..PushSummary::default()
    };
    if config::in_charge(&worktree) == InCharge::GitLfs {
        // git-lfs uploads what the store holds under a name without re-hashing it: a flipped
        // byte would reach the server under the good oid. Every object this push could upload
        // is hashed first.
        let store = LfsStore::for_repo(repo);
        let hidden = remote_tips(&worktree, repo, remote);
        let referenced = super::scan::referenced_objects(repo, &tips, &hidden)?;
        for (oid, reference) in &referenced {
            if !store.contains(oid) {
                continue;
            }
            if let Err(super::LfsError::Corrupt { .. }) = store.verify(oid) {
                let moved = store
                    .quarantine(oid)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("(could not move it: {e})"));
                return Err(SyncError::CorruptObject {
                    oid: oid.as_str().to_string(),
                    path: reference.path.clone(),
                    moved,
                });
            }
        }
        let mut args = vec!["lfs", "push", remote];
        args.extend(refs.iter().map(String::as_str));
        git::git(&worktree, &args).map_err(SyncError::GitLfs)?;
        summary.by_git_lfs = true;
        // git-lfs pushes what pointers reference; the datasets' objects (listed in
        // datasets/<name>.files) go up through exp.
        let mut datasets = referenced;
        datasets.retain(|_, r| super::scan::in_dataset_list(&r.path));
        if !datasets.is_empty() {
            let remote_store = RemoteStore::for_remote(repo, remote, &url)?;
            summary.objects = push::upload_referenced(repo, &remote_store, &datasets)?;
        }
    } else {
        let remote_store = RemoteStore::for_remote(repo, remote, &url)?;
        let hidden = remote_tips(&worktree, repo, remote);
        summary.objects = push::upload_for_push(repo, &remote_store, &tips, &hidden)?;
    }
    let mut args = vec!["push", "--quiet", remote];
    let specs: Vec<String> = refs.iter().map(|r| format!("{r}:{r}")).collect();
    args.extend(specs.iter().map(String::as_str));
    git::git(&worktree, &args)?;
    Ok(summary)
}

/// Run tags (`run/…`) and release tags (`v…`) whose commits the tips reach (one walk of the
/// history, not one reachability query per tag: a repository has a tag per run).
fn tags_into(repo: &Repository, tips: &[GitOid]) -> Result<Vec<String>, git2::Error> {
    let mut walk = repo.revwalk()?;
    for tip in tips {
        walk.push(*tip)?;
    }
    let reached: std::collections::HashSet<GitOid> = walk.collect::<Result<_, _>>()?;
    let mut tags = Vec::new();
    for name in repo.tag_names(None)?.iter().flatten() {
        if !(name.starts_with("run/") || name.starts_with('v')) {
            continue;
        }
        let target = repo
            .revparse_single(&format!("refs/tags/{name}"))
            .and_then(|o| o.peel_to_commit());
        if target.is_ok_and(|c| reached.contains(&c.id())) {
            tags.push(name.to_string());
        }
    }
    Ok(tags)
}

/// The commits the remote's refs point at, where we have them (their objects need no upload).
fn remote_tips(worktree: &Path, repo: &Repository, remote: &str) -> Vec<GitOid> {
    git::git(worktree, &["ls-remote", remote])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|sha| GitOid::from_str(sha).ok())
        .filter(|oid| repo.find_commit(*oid).is_ok())
        .collect()
}

/// What `exp pull` did.
#[derive(Debug, Default)]
pub struct PullSummary {
    /// Objects downloaded (exp's transfer; 0 when git-lfs did it).
    pub objects: usize,
    /// Work-tree files rewritten from pointers to their content.
    pub restored: Vec<String>,
    /// Whether git-lfs moved the objects.
    pub by_git_lfs: bool,
}

/// Fetches `remote`'s branches and tags, fast-forwards the current branch to its counterpart,
/// then brings the LFS objects of HEAD and puts them in the work tree.
pub fn pull(repo: &Repository, remote: &str) -> Result<PullSummary, SyncError> {
    let worktree = git::workdir(repo).to_path_buf();
    let url = remote_url(repo, remote)?;
    git::git(&worktree, &["fetch", "--quiet", "--tags", remote])?;
    if let Ok((branch, _)) = git::current_branch(repo) {
        let theirs = format!("refs/remotes/{remote}/{branch}");
        if repo.revparse_single(&theirs).is_ok() {
            git::git(&worktree, &["merge", "--quiet", "--ff-only", &theirs])?;
        }
    }
    let mut summary = PullSummary::default();
    let head_tree = repo.head()?.peel_to_tree()?;
    let files = super::scan::lfs_files(repo, &head_tree)?;
    if config::in_charge(&worktree) == InCharge::GitLfs {
        git::git(&worktree, &["lfs", "pull", remote]).map_err(SyncError::GitLfs)?;
        summary.by_git_lfs = true;
        // git-lfs knows pointers only: the datasets' objects come through exp.
        let datasets: Vec<LfsPointer> = files
            .iter()
            .filter(|f| super::scan::in_dataset_list(&f.path))
            .filter_map(|f| f.pointer.clone())
            .collect();
        if !datasets.is_empty() {
            let local = LfsStore::for_repo(repo);
            let remote_store = RemoteStore::for_remote(repo, remote, &url)?;
            summary.objects = remote_store.download(&local, &datasets)?;
        }
        return Ok(summary);
    }
    let pointers: Vec<LfsPointer> = files.iter().filter_map(|f| f.pointer.clone()).collect();
    let local = LfsStore::for_repo(repo);
    let remote_store = RemoteStore::for_remote(repo, remote, &url)?;
    summary.objects = remote_store.download(&local, &pointers)?;
    // Files checked out while their objects were missing still hold the pointer text.
    let mut stale = Vec::new();
    for f in &files {
        let Some(p) = &f.pointer else { continue };
        let on_disk = worktree.join(&f.path);
        let holds_pointer = std::fs::metadata(&on_disk)
            .is_ok_and(|m| m.len() as usize <= super::pointer::MAX_POINTER)
            && std::fs::read(&on_disk)
                .ok()
                .and_then(|b| LfsPointer::parse(&b).ok())
                .is_some_and(|q| q.oid == p.oid);
        if holds_pointer && local.contains(&p.oid) {
            stale.push(f.path.clone());
        }
    }
    if !stale.is_empty() {
        // The index has the pointer file's stat, so `git checkout` would think the file up to
        // date: remove the pointer text first (it is only a pointer), then check out.
        for path in &stale {
            let _ = std::fs::remove_file(worktree.join(path));
        }
        // Literal paths: `w[1].bin` must not also match `w1.bin`.
        let mut args = vec!["--literal-pathspecs", "checkout", "--"];
        args.extend(stale.iter().map(String::as_str));
        git::git(&worktree, &args)?;
    }
    summary.restored = stale;
    Ok(summary)
}
