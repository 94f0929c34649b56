//! Repository access: opening, Git Flow branch planning and switching, committing a run's
//! files without touching the user's other changes, and run tags.
//!
//! Reads and commits go through git2. Switching branches goes through the `git` on PATH,
//! because only git runs the LFS smudge filter that turns pointers back into weights in the
//! work tree; libgit2 would check out the pointer text.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository};

pub mod append;

/// A Git failure.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// Not inside a repository.
    #[error("{0} is not inside a Git repository")]
    NotARepository(PathBuf),
    /// A bare repository has no work tree to run in.
    #[error("{0} is a bare repository; exp runs in a work tree")]
    Bare(PathBuf),
    /// HEAD has no commit yet.
    #[error("the repository has no commits yet (branch {0})")]
    Unborn(String),
    /// HEAD is detached.
    #[error("HEAD is detached; a run is committed to a branch")]
    Detached,
    /// No user identity for commits.
    #[error("no Git identity to commit with: {0}")]
    NoIdentity(String),
    /// The branch switch a run needs would overwrite local changes.
    #[error("switching to {target} would overwrite uncommitted changes:\n{details}")]
    SwitchBlocked {
        /// The branch the run would move to.
        target: String,
        /// What git said.
        details: String,
    },
    /// The experiment's output directory has uncommitted changes that a run would overwrite.
    #[error("{path} has uncommitted changes that a run would overwrite:\n{details}")]
    OutputsDirty {
        /// The directory.
        path: String,
        /// `git status` lines.
        details: String,
    },
    /// A headless append kept losing the race for its branch.
    #[error("could not append to {branch}: it moved under each of {attempts} attempts")]
    Contended {
        /// The branch.
        branch: String,
        /// Attempts made.
        attempts: usize,
    },
    /// A `git` command failed.
    #[error("`git {command}` failed: {stderr}")]
    Command {
        /// The arguments.
        command: String,
        /// What git printed.
        stderr: String,
    },
    /// The `git` binary could not be started.
    #[error("cannot run git: {0}")]
    NoGit(std::io::Error),
    /// A libgit2 call failed.
    #[error("{context}: {source}")]
    Git2 {
        /// What was being done.
        context: String,
        /// The cause.
        source: git2::Error,
    },
    /// A file in the work tree could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl GitError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            GitError::NotARepository(_) | GitError::Unborn(_) => {
                "run `exp init` to make this directory a repository ready for exp".into()
            }
            GitError::Detached => "switch to a feature branch (`git switch -c feature/NAME`) first".into(),
            GitError::NoIdentity(_) => {
                "set one with `git config user.name \"Your Name\"` and `git config user.email you@example.com`".into()
            }
            GitError::SwitchBlocked { .. } => {
                "commit or stash those changes (`git stash`), or start the run from a feature branch".into()
            }
            GitError::OutputsDirty { .. } => {
                "commit, stash or discard the changes in that directory; it is written by `exp run`".into()
            }
            _ => return None,
        })
    }
}

/// Wraps a git2 error with what was being done.
pub fn ctx(context: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let context = context.into();
    move |source| GitError::Git2 { context, source }
}

/// Opens the repository containing `dir`; it must have a work tree.
pub fn open(dir: &Path) -> Result<Repository, GitError> {
    let repo =
        Repository::discover(dir).map_err(|_| GitError::NotARepository(dir.to_path_buf()))?;
    if repo.is_bare() || repo.workdir().is_none() {
        return Err(GitError::Bare(repo.path().to_path_buf()));
    }
    Ok(repo)
}

/// Opens the repository for reading or configuring, bare ones included. Inside a Git hook
/// (GIT_DIR set) the repository comes from Git's environment, which also makes the objects of a
/// push still in quarantine (pre-receive) visible.
pub fn open_any(dir: &Path) -> Result<Repository, GitError> {
    if std::env::var_os("GIT_DIR").is_some() {
        return Repository::open_from_env()
            .map_err(|_| GitError::NotARepository(dir.to_path_buf()));
    }
    Repository::discover(dir).map_err(|_| GitError::NotARepository(dir.to_path_buf()))
}

/// The work tree root of a non-bare repository.
pub fn workdir(repo: &Repository) -> &Path {
    repo.workdir().unwrap_or_else(|| repo.path())
}

/// The branch HEAD names, and its commit.
pub fn current_branch(repo: &Repository) -> Result<(String, Oid), GitError> {
    let head = match repo.head() {
        Ok(h) => h,
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => {
            let name = repo
                .find_reference("HEAD")
                .ok()
                .and_then(|r| {
                    r.symbolic_target()
                        .map(|s| s.trim_start_matches("refs/heads/").to_string())
                })
                .unwrap_or_default();
            return Err(GitError::Unborn(name));
        }
        Err(e) => return Err(ctx("reading HEAD")(e)),
    };
    if !head.is_branch() {
        return Err(GitError::Detached);
    }
    let name = head.shorthand().unwrap_or_default().to_string();
    let oid = head.target().ok_or(GitError::Detached)?;
    Ok((name, oid))
}

/// Whether `branch` may receive runs directly (docs/design.md §2: never develop or main).
pub fn is_integration_branch(branch: &str) -> bool {
    branch == "develop" || branch == "main"
}

/// Where a run will be committed, decided before training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchPlan {
    /// Commit on the current branch.
    Stay {
        /// Its name.
        branch: String,
    },
    /// Create `branch` from `develop` and switch to it after training.
    NewFeature {
        /// The feature branch to create.
        branch: String,
        /// The branch the run was started on.
        from: String,
        /// Create `develop` from `main` first (the first feature of a repository).
        create_develop: bool,
    },
}

impl BranchPlan {
    /// The branch the run will be committed on.
    pub fn branch(&self) -> &str {
        match self {
            BranchPlan::Stay { branch } | BranchPlan::NewFeature { branch, .. } => branch,
        }
    }
}

/// Fails when commits could not be signed (no user.name / user.email), so that a run finds
/// out before training rather than after.
pub fn check_identity(repo: &Repository) -> Result<(), GitError> {
    repo.signature()
        .map(|_| ())
        .map_err(|e| GitError::NoIdentity(e.message().to_string()))
}

/// Runs `git` in `dir` and returns its stdout.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(GitError::NoGit)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(GitError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Decides where the run of `experiment` (run id `run_id`) is committed, and checks that
/// getting there will work, so that a finished run is never thrown away.
pub fn plan_branch(
    repo: &Repository,
    experiment: &str,
    run_id: &str,
) -> Result<BranchPlan, GitError> {
    let (current, _) = current_branch(repo)?;
    let dir = workdir(repo);
    check_outputs_clean(dir, experiment)?;
    if !is_integration_branch(&current) {
        return Ok(BranchPlan::Stay { branch: current });
    }
    let develop = repo.find_branch("develop", git2::BranchType::Local).ok();
    let create_develop = develop.is_none();
    let base = if create_develop { "main" } else { "develop" };
    if repo.find_branch(base, git2::BranchType::Local).is_err() {
        return Err(GitError::Command {
            command: format!("rev-parse {base}"),
            stderr: "neither develop nor main exists to start a feature branch from".into(),
        });
    }
    // Would moving the work tree from HEAD to the base overwrite local changes? This is the
    // check `git switch` itself makes, without doing it.
    git(dir, &["read-tree", "-m", "-u", "-n", "HEAD", base]).map_err(|e| match e {
        GitError::Command { stderr, .. } => GitError::SwitchBlocked {
            target: base.to_string(),
            details: stderr,
        },
        other => other,
    })?;
    let short = &run_id[..run_id.len().min(7)];
    let mut branch = format!("feature/{experiment}-{short}");
    let mut n = 2;
    while repo.find_branch(&branch, git2::BranchType::Local).is_ok() {
        branch = format!("feature/{experiment}-{short}-{n}");
        n += 1;
    }
    Ok(BranchPlan::NewFeature {
        branch,
        from: current,
        create_develop,
    })
}

fn check_outputs_clean(dir: &Path, experiment: &str) -> Result<(), GitError> {
    let outputs = crate::record::layout::run_dir(experiment);
    // `git status` runs the LFS clean filter, so real weights over a pointer count as clean.
    let status = git(
        dir,
        &[
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            &format!("{outputs}/"),
        ],
    )?;
    if status.trim().is_empty() {
        Ok(())
    } else {
        Err(GitError::OutputsDirty {
            path: format!("{outputs}/"),
            details: status.trim_end().to_string(),
        })
    }
}

/// Carries out a [`BranchPlan::NewFeature`] after training: creates the branches and switches,
/// carrying uncommitted changes. Returns what to undo if the commit then fails.
pub fn switch_for_run(
    repo: &Repository,
    plan: &BranchPlan,
) -> Result<Option<SwitchUndo>, GitError> {
    let BranchPlan::NewFeature {
        branch,
        from,
        create_develop,
    } = plan
    else {
        return Ok(None);
    };
    let dir = workdir(repo);
    if *create_develop {
        git(dir, &["branch", "develop", "main"])?;
    }
    if let Err(e) = git(dir, &["switch", "--quiet", "-c", branch, "develop"]) {
        if *create_develop {
            let _ = git(dir, &["branch", "-D", "develop"]);
        }
        return Err(e);
    }
    Ok(Some(SwitchUndo {
        from: from.clone(),
        branch: branch.clone(),
        created_develop: *create_develop,
    }))
}

/// How to undo a branch switch when the commit that should follow it fails.
#[derive(Debug)]
pub struct SwitchUndo {
    from: String,
    branch: String,
    created_develop: bool,
}

impl SwitchUndo {
    /// Switches back and deletes what was created. Best effort: the run already failed.
    pub fn undo(self, repo: &Repository) {
        let dir = workdir(repo);
        let _ = git(dir, &["switch", "--quiet", &self.from]);
        let _ = git(dir, &["branch", "-D", &self.branch]);
        if self.created_develop {
            let _ = git(dir, &["branch", "-D", "develop"]);
        }
    }
}

/// A file to commit: its path in the repository, the blob to store and the work-tree file
/// whose stat the index records.
pub struct CommitFile {
    /// Path relative to the work tree, with '/' separators.
    pub path: String,
    /// Blob content (a pointer for LFS files).
    pub blob: Vec<u8>,
}

/// Commits `files` on HEAD's branch, replacing everything under `replace_dir` (when given);
/// the commit holds HEAD's tree plus these files only, so the user's other staged or unstaged
/// changes are carried, never committed. The index is updated for these paths with the
/// work-tree files' stat data, as `git add` would, so `git status` is clean afterwards. On an
/// unborn branch the commit is the root commit.
pub fn commit_files(
    repo: &Repository,
    replace_dir: Option<&str>,
    files: &[CommitFile],
    message: &str,
) -> Result<Oid, GitError> {
    let signature = repo
        .signature()
        .map_err(|e| GitError::NoIdentity(e.message().to_string()))?;
    let parent = match repo.head() {
        Ok(head) => Some(
            head.peel_to_commit()
                .map_err(ctx("reading HEAD's commit"))?,
        ),
        Err(e) if e.code() == git2::ErrorCode::UnbornBranch => None,
        Err(e) => return Err(ctx("reading HEAD")(e)),
    };
    let dir = workdir(repo).to_path_buf();

    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let id = repo
            .blob(&f.blob)
            .map_err(ctx(format!("storing {}", f.path)))?;
        let on_disk = dir.join(&f.path);
        let meta = std::fs::metadata(&on_disk).map_err(|source| GitError::Io {
            context: "reading",
            path: on_disk.clone(),
            source,
        })?;
        entries.push(index_entry(&f.path, id, &meta));
    }

    let mut tree_index = git2::Index::new().map_err(ctx("creating an index"))?;
    if let Some(parent) = &parent {
        let tree = parent.tree().map_err(ctx("reading HEAD's tree"))?;
        tree_index
            .read_tree(&tree)
            .map_err(ctx("reading HEAD's tree"))?;
    }
    let mut index = repo.index().map_err(ctx("reading the index"))?;
    for idx in [&mut tree_index, &mut index] {
        if let Some(d) = replace_dir {
            idx.remove_dir(Path::new(d), 0)
                .map_err(ctx("updating the index"))?;
        }
        for e in &entries {
            idx.add(e).map_err(ctx("updating the index"))?;
        }
    }
    let tree_id = tree_index
        .write_tree_to(repo)
        .map_err(ctx("writing the tree"))?;
    let tree = repo.find_tree(tree_id).map_err(ctx("reading the tree"))?;
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let commit = repo
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .map_err(ctx("committing"))?;
    index.write().map_err(ctx("writing the index"))?;
    Ok(commit)
}

fn index_entry(path: &str, id: Oid, meta: &std::fs::Metadata) -> git2::IndexEntry {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    #[cfg(unix)]
    let (ctime, mtime, dev, ino, uid, gid, mode) = (
        git2::IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32),
        git2::IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32),
        meta.dev() as u32,
        meta.ino() as u32,
        meta.uid(),
        meta.gid(),
        if meta.mode() & 0o111 != 0 {
            0o100755
        } else {
            0o100644
        },
    );
    #[cfg(not(unix))]
    let (ctime, mtime, dev, ino, uid, gid, mode) = (
        git2::IndexTime::new(0, 0),
        git2::IndexTime::new(0, 0),
        0,
        0,
        0,
        0,
        0o100644,
    );
    git2::IndexEntry {
        ctime,
        mtime,
        dev,
        ino,
        mode,
        uid,
        gid,
        file_size: meta.len() as u32,
        id,
        flags: (path.len().min(0xfff)) as u16,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
}

/// The run tag prefix of an experiment on a branch: `run/<branch with '/'→'-'>/<experiment>/`.
pub fn run_tag_prefix(branch: &str, experiment: &str) -> String {
    format!("run/{}/{experiment}/", branch.replace('/', "-"))
}

/// The identity exp commits and tags with.
pub fn signature(repo: &Repository) -> Result<git2::Signature<'static>, GitError> {
    repo.signature()
        .map_err(|e| GitError::NoIdentity(e.message().to_string()))
}

/// Creates the next run tag (`…/<n>`, n counting from 1) as an annotated tag on `commit`.
pub fn tag_run(
    repo: &Repository,
    branch: &str,
    experiment: &str,
    commit: Oid,
    message: &str,
) -> Result<String, GitError> {
    let prefix = run_tag_prefix(branch, experiment);
    let names = repo
        .tag_names(Some(&format!("{prefix}*")))
        .map_err(ctx("listing tags"))?;
    let last = names
        .iter()
        .flatten()
        .filter_map(|t| t.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let name = format!("{prefix}{}", last + 1);
    let signature = repo
        .signature()
        .map_err(|e| GitError::NoIdentity(e.message().to_string()))?;
    let object = repo
        .find_object(commit, None)
        .map_err(ctx("finding the run commit"))?;
    repo.tag(&name, &object, &signature, message, false)
        .map_err(ctx(format!("creating tag {name}")))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_prefix_replaces_slashes() {
        assert_eq!(
            run_tag_prefix("feature/mnist-cnn-abc", "mnist-cnn"),
            "run/feature-mnist-cnn-abc/mnist-cnn/"
        );
    }
}
