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
pub mod lock;
mod switch;

/// A run commit's subject starts `exp run <experiment>:` (`run_subject`); history readers
/// (run numbers, `exp apply`, sweeps, init.from lineage) recognise run commits by it.
pub fn run_subject(experiment: &str) -> String {
    format!("exp run {experiment}:")
}

/// The experiment a run commit's message names (`exp run <experiment>: …`); `None` for any other
/// commit.
pub fn run_subject_experiment(message: &str) -> Option<&str> {
    message
        .strip_prefix("exp run ")?
        .split_once(':')
        .map(|(name, _)| name)
}

/// The first words of the message of an `exp apply` commit (a run's files copied to a branch
/// tip); `exp log` reads the run tag after them.
pub const APPLY_PREFIX: &str = "exp apply";
/// The first words of the message of an `exp sweep pick` commit; `exp flow finish` looks for
/// them at a sweep branch's tip.
pub const PICK_PREFIX: &str = "exp sweep pick";

pub use switch::{recover_interrupted_switch, switch_for_run, InterruptedSwitch, SwitchUndo};

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
    /// The run would move to a base branch whose spec of the experiment differs from the one
    /// it trains: the commit would hold a spec the run did not train.
    #[error("{spec} differs between {from} and {base}: a run started on {from} is recorded on a feature branch from {base}, whose spec is not the one it would train")]
    SpecDiffers {
        /// The spec file.
        spec: String,
        /// The branch the run starts on.
        from: String,
        /// The branch its feature branch would start from.
        base: String,
    },
    /// The experiment's output directory has uncommitted changes that a run would overwrite.
    #[error("uncommitted changes in {path}, which exp would overwrite:\n{details}")]
    OutputsDirty {
        /// The directory.
        path: String,
        /// `git status` lines.
        details: String,
    },
    /// The commit was made, but the index could not be written.
    #[error("committed {commit}, but the index could not be written: {source}")]
    IndexNotUpdated {
        /// The commit.
        commit: Oid,
        /// Why.
        source: git2::Error,
    },
    /// A lock file would refuse the commit or tag.
    #[error("{0} exists: another Git process is at work in this repository, or one was killed")]
    Locked(PathBuf),
    /// A git command exp ran stopped at a lock file (Git's "Unable to create '….lock': File
    /// exists"), which another git holds or a killed one left.
    #[error("`git {command}` stopped at {path}: another Git process is at work in this repository, or one was killed")]
    LockedBy {
        /// The git command.
        command: String,
        /// The lock file.
        path: PathBuf,
    },
    /// A branch or tag name a run would create is not one Git accepts.
    #[error("{name} {why}")]
    BadRefName {
        /// The full ref name.
        name: String,
        /// Why not.
        why: String,
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
    /// The branch switch of a killed run could not be undone.
    #[error("cannot finish undoing the branch switch of a killed exp run (journal {journal}, branch {branch}): {source}")]
    SwitchRecovery {
        /// The journal.
        journal: PathBuf,
        /// The feature branch the run had created.
        branch: String,
        /// Why.
        source: Box<GitError>,
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
            GitError::SpecDiffers { base, .. } => format!(
                "nothing was trained; run it from {base} (`git switch {base}`) or from a feature branch"
            ),
            GitError::OutputsDirty { .. } => {
                "commit, stash or discard those changes; exp writes these files".into()
            }
            GitError::Locked(path) => format!(
                "nothing was trained; if no git process is running, the lock is a leftover: remove {}",
                path.display()
            ),
            GitError::LockedBy { path, .. } => format!(
                "if no git process is running, the lock is a leftover: remove {}, then run the exp command again",
                path.display()
            ),
            GitError::SwitchRecovery {
                journal,
                branch,
                source,
            } => format!(
                "{}; or give the recovery up: delete {} ({branch} stays as it is)",
                source
                    .hint()
                    .unwrap_or_else(|| "fix what git reports".to_string()),
                journal.display()
            ),
            GitError::BadRefName { .. } => {
                "nothing was trained; rename the experiment or the branch (short names of letters, digits, '-', '_' and single dots)".into()
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

/// `.git/exp/cache` (the common Git dir's, shared by worktrees): what exp keeps to save work
/// — decoded image folders, folder stat caches. Deleting it costs time, never data.
pub fn cache_dir(repo: &Repository) -> PathBuf {
    repo.commondir().join("exp").join("cache")
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
    signature(repo)?;
    author(repo).map(|_| ())
}

/// Where exp writes what it makes for the user by default (reports, released weights): a
/// folder at the work tree's root that `git add -A` never picks up.
pub const OUTPUT_DIR: &str = "exp-out";

/// The default output folder, created, and listed in `.git/info/exclude` (the repository's own
/// ignore list: it works in any repository, not only those `exp init` made, and changes no
/// tracked file). A bare repository has no work tree: the current directory `cwd`.
pub fn output_dir(repo: &Repository, cwd: &Path) -> Result<PathBuf, GitError> {
    let Some(worktree) = repo.workdir() else {
        return Ok(cwd.to_path_buf());
    };
    let io = |context, path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Io {
            context,
            path,
            source,
        }
    };
    let dir = worktree.join(OUTPUT_DIR);
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let exclude = repo.commondir().join("info/exclude");
    let listed = std::fs::read_to_string(&exclude).unwrap_or_default();
    let line = format!("/{OUTPUT_DIR}/");
    if !listed.lines().any(|l| l.trim() == line) {
        if let Some(info) = exclude.parent() {
            std::fs::create_dir_all(info).map_err(io("creating", info))?;
        }
        let mut text = listed;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "# what exp writes for you (exp plot, exp model get)\n{line}\n"
        ));
        std::fs::write(&exclude, text).map_err(io("writing", &exclude))?;
    }
    Ok(dir)
}

/// Writes `value` as TOML to `path` durably: named only once its content is on disk, so a
/// reader finds the whole file or none. The journals of exp's multi-step commands (a run's
/// branch switch, `exp apply`) are written so, before their first step.
pub fn write_journal<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), GitError> {
    let io = |context, source| GitError::Io {
        context,
        path: path.to_path_buf(),
        source,
    };
    let text = toml::to_string(value).map_err(|e| {
        io(
            "encoding",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    crate::files::write_whole(path, text.as_bytes(), true).map_err(|e| io("writing", e))
}

/// A journal [`write_journal`] wrote; `None` when there is none or it cannot be read (then it
/// is removed: a journal is only ever named whole, so an unreadable one was not exp's).
pub fn read_journal<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let journal = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| toml::from_str(&text).ok());
    if journal.is_none() {
        let _ = std::fs::remove_file(path);
    }
    journal
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
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(match lock_in(&stderr) {
        Some(path) => GitError::LockedBy {
            command: args.join(" "),
            path,
        },
        None => GitError::Command {
            command: args.join(" "),
            stderr,
        },
    })
}

/// The lock file of Git's "Unable to create '<path>.lock': File exists." in `stderr`.
fn lock_in(stderr: &str) -> Option<PathBuf> {
    let (_, rest) = stderr.split_once("Unable to create '")?;
    let (path, _) = rest.split_once("': File exists")?;
    path.ends_with(".lock").then(|| PathBuf::from(path))
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
    // The run trains the spec in the work tree now; its commit holds the spec of the work
    // tree after the switch. They must be one.
    let spec = crate::record::layout::spec_path(experiment);
    let spec_at = |rev: &str| {
        repo.revparse_single(rev)
            .and_then(|o| o.peel_to_tree())
            .ok()
            .and_then(|t| t.get_path(Path::new(&spec)).ok().map(|e| e.id()))
    };
    if spec_at("HEAD") != spec_at(base) {
        return Err(GitError::SpecDiffers {
            spec,
            from: current,
            base: base.to_string(),
        });
    }
    // read-tree takes the index lock even for a dry run: a leftover lock is named as such,
    // not reported as changes the switch would overwrite.
    check_no_lock(&repo.path().join("index.lock"))?;
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
    check_clean(
        dir,
        &[format!("{}/", crate::record::layout::run_dir(experiment))],
    )
}

/// Fails with [`GitError::OutputsDirty`] when any of `paths` (files, or directories ending in
/// '/') has staged, unstaged or untracked changes in the work tree of `dir`.
pub fn check_clean(dir: &Path, paths: &[String]) -> Result<(), GitError> {
    // `git status` runs the LFS clean filter, so real weights over a pointer count as clean.
    // --no-optional-locks: a status must not take index.lock to refresh the index (a kill
    // there would leave a lock that blocks the next run).
    let mut args = vec![
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=all",
        "--",
    ];
    args.extend(paths.iter().map(String::as_str));
    let status = git(dir, &args)?;
    if status.trim().is_empty() {
        Ok(())
    } else {
        Err(GitError::OutputsDirty {
            path: paths.join(" "),
            details: status.trim_end().to_string(),
        })
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
    let committer = signature(repo)?;
    let author = author(repo)?;
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
        .commit(Some("HEAD"), &author, &committer, message, &tree, &parents)
        .map_err(ctx("committing"))?;
    index
        .write()
        .map_err(|source| GitError::IndexNotUpdated { commit, source })?;
    Ok(commit)
}

/// Keeps a run whose commit failed: the same commit built without the work tree (on `parent`'s
/// tree, `replace_dir` replaced by `files`) under `refs/exp/failed/<run id>`. Returns the ref.
pub fn keep_failed_run(
    repo: &Repository,
    parent: Oid,
    replace_dir: &str,
    files: &[CommitFile],
    message: &str,
    run_id: &str,
) -> Result<String, GitError> {
    let name = format!("refs/exp/failed/{run_id}");
    let parent = repo
        .find_commit(parent)
        .map_err(ctx("reading the parent"))?;
    let mut index = git2::Index::new().map_err(ctx("creating an index"))?;
    index
        .read_tree(&parent.tree().map_err(ctx("reading the tree"))?)
        .map_err(ctx("reading the tree"))?;
    index
        .remove_dir(Path::new(replace_dir), 0)
        .map_err(ctx("building the tree"))?;
    for f in files {
        let id = repo
            .blob(&f.blob)
            .map_err(ctx(format!("storing {}", f.path)))?;
        index
            .add(&append::blob_entry(&f.path, id, f.blob.len()))
            .map_err(ctx("building the tree"))?;
    }
    let tree = repo
        .find_tree(index.write_tree_to(repo).map_err(ctx("writing the tree"))?)
        .map_err(ctx("reading the tree"))?;
    let committer = signature(repo)?;
    let commit = repo
        .commit(None, &author(repo)?, &committer, message, &tree, &[&parent])
        .map_err(ctx("committing"))?;
    repo.reference(&name, commit, true, "exp run: kept after a failed commit")
        .map_err(ctx(format!("creating {name}")))?;
    Ok(name)
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

/// The identity exp commits and tags with, as Git takes it: `GIT_COMMITTER_NAME`,
/// `GIT_COMMITTER_EMAIL` and `GIT_COMMITTER_DATE` from the environment, else `user.name` and
/// `user.email` from the config and the current time (libgit2 reads only the config).
pub fn signature(repo: &Repository) -> Result<git2::Signature<'static>, GitError> {
    identity(repo, "COMMITTER")
}

/// The author of exp's commits: `GIT_AUTHOR_*` from the environment, else as [`signature`].
pub fn author(repo: &Repository) -> Result<git2::Signature<'static>, GitError> {
    identity(repo, "AUTHOR")
}

fn identity(repo: &Repository, role: &str) -> Result<git2::Signature<'static>, GitError> {
    let var = |what: &str| {
        std::env::var(format!("GIT_{role}_{what}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    let (name, email, date) = (var("NAME"), var("EMAIL"), var("DATE"));
    let config = match (&name, &email) {
        (Some(_), Some(_)) => None,
        _ => Some(
            repo.signature()
                .map_err(|e| GitError::NoIdentity(e.message().to_string()))?,
        ),
    };
    let name = name.unwrap_or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.name())
            .unwrap_or_default()
            .to_string()
    });
    let email = email.unwrap_or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.email())
            .unwrap_or_default()
            .to_string()
    });
    let bad = |m: String| GitError::NoIdentity(m);
    match date {
        None => git2::Signature::now(&name, &email).map_err(|e| bad(e.message().to_string())),
        Some(text) => {
            let (seconds, offset) = parse_git_date(&text).ok_or_else(|| {
                bad(format!("GIT_{role}_DATE={text:?} is not a date Git reads (e.g. \"1700000000 +0000\" or 2023-11-14T22:13:20Z)"))
            })?;
            git2::Signature::new(&name, &email, &git2::Time::new(seconds, offset))
                .map_err(|e| bad(e.message().to_string()))
        }
    }
}

/// Git's date formats exp reads: `<unix seconds> <±hhmm>` (optionally with a leading `@`),
/// RFC 2822 and RFC 3339 / ISO 8601. Returns seconds and the offset in minutes.
pub fn parse_git_date(text: &str) -> Option<(i64, i32)> {
    let text = text.trim();
    let raw = text.strip_prefix('@').unwrap_or(text);
    let mut parts = raw.split_whitespace();
    if let (Some(secs), tz, None) = (parts.next(), parts.next(), parts.next()) {
        if let Ok(seconds) = secs.parse::<i64>() {
            let offset = match tz {
                None => 0,
                Some(tz) => parse_offset(tz)?,
            };
            return Some((seconds, offset));
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc2822(text) {
        return Some((t.timestamp(), t.offset().local_minus_utc() / 60));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some((t.timestamp(), t.offset().local_minus_utc() / 60));
    }
    None
}

fn parse_offset(tz: &str) -> Option<i32> {
    let (sign, digits) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    Some(sign * (hours * 60 + minutes))
}

/// A lock file of Git's (or another tool's) that would refuse the run's commit or tag.
pub(crate) fn check_no_lock(path: &Path) -> Result<(), GitError> {
    if path.exists() {
        return Err(GitError::Locked(path.to_path_buf()));
    }
    Ok(())
}

/// Everything that could refuse the commit and tag of a run of `experiment` on `branch`,
/// checked before training (docs/design.md §5): the branch's and the future tag's ref names
/// (Git's rules, and each path component short enough for the file system), Git's lock files
/// (`index.lock`, `HEAD.lock`, the branch's, `packed-refs.lock`, the run tags'), the identity.
pub fn check_can_record(repo: &Repository, branch: &str, experiment: &str) -> Result<(), GitError> {
    let bad = |name: String, why: &str| GitError::BadRefName {
        name,
        why: why.to_string(),
    };
    let branch_ref = format!("refs/heads/{branch}");
    let tag_ref = format!(
        "refs/tags/{}{}",
        run_tag_prefix(branch, experiment),
        u32::MAX
    );
    for name in [&branch_ref, &tag_ref] {
        if !git2::Reference::is_valid_name(name) {
            return Err(bad(
                name.clone(),
                "is not a valid Git ref name (git check-ref-format)",
            ));
        }
        // A ref is a file; each component of its path must fit a file name (255 bytes, and
        // ".lock" is appended while it is written).
        if name.split('/').any(|c| c.len() + ".lock".len() > 255) {
            return Err(bad(
                name.clone(),
                "has a path component longer than a file name may be",
            ));
        }
    }
    let common = repo.commondir();
    check_no_lock(&repo.path().join("index.lock"))?;
    check_no_lock(&repo.path().join("HEAD.lock"))?;
    check_no_lock(&common.join("packed-refs.lock"))?;
    check_no_lock(&common.join(format!("{branch_ref}.lock")))?;
    let tags = common.join(format!(
        "refs/tags/{}",
        run_tag_prefix(branch, experiment).trim_end_matches('/')
    ));
    if let Ok(entries) = std::fs::read_dir(&tags) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".lock") {
                return Err(GitError::Locked(e.path()));
            }
        }
    }
    signature(repo)?;
    author(repo)?;
    Ok(())
}

/// Tags run commit `commit` of `experiment` on `branch` (docs/design.md §2): an annotated tag
/// `run/<branch>/<experiment>/<n>`, n the commit's run number on the branch
/// ([`append::run_number`]), so the number comes from history, not from the tags that happen
/// to exist.
pub fn tag_run(
    repo: &Repository,
    branch: &str,
    experiment: &str,
    commit: Oid,
    message: &str,
) -> Result<String, GitError> {
    let signature = signature(repo)?;
    append::tag_appended(repo, branch, experiment, commit, message, &signature)
}

/// `path` made absolute and resolved through links as far as it exists (the rest appended), so
/// a path can be compared with the repository's directories before it is created.
pub fn resolved(path: &Path) -> PathBuf {
    let p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    // The deepest existing ancestor, resolved (links included), with the rest appended.
    let mut existing = p.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(&existing).unwrap_or(existing);
    for name in rest.iter().rev() {
        out.push(name);
    }
    out
}

/// The repository's git dir (or common dir) when `target` lies inside it: writing there could
/// replace a hook, a ref or an object.
pub fn inside_git_dir(repo: &Repository, target: &Path) -> Option<PathBuf> {
    let target = resolved(target);
    [repo.path(), repo.commondir()]
        .into_iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()))
        .find(|git_dir| target.starts_with(git_dir))
}

/// The path of `target` in the repository's index when Git tracks it there.
pub fn tracked_path(repo: &Repository, target: &Path) -> Option<String> {
    let workdir = std::fs::canonicalize(repo.workdir()?).ok()?;
    let relative = resolved(target).strip_prefix(&workdir).ok()?.to_path_buf();
    let relative = relative.to_str()?.to_string();
    repo.index().ok()?.get_path(Path::new(&relative), 0)?;
    Some(relative)
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

    /// Git's lock message, as git 2.39 words it for the index and for a ref: the lock is named,
    /// and the command that stopped at it is a `LockedBy` error, not a bare failure.
    #[test]
    fn a_git_stopped_at_a_lock_names_it() {
        assert_eq!(
            lock_in("fatal: Unable to create '/r/.git/index.lock': File exists.\n\nAnother git process seems to be running"),
            Some(PathBuf::from("/r/.git/index.lock"))
        );
        assert_eq!(
            lock_in("error: could not delete reference refs/heads/f: Unable to create '/r/.git/packed-refs.lock': File exists."),
            Some(PathBuf::from("/r/.git/packed-refs.lock"))
        );
        assert_eq!(lock_in("fatal: not a git repository"), None);
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]).unwrap();
        std::fs::write(dir.path().join(".git/index.lock"), "").unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        match git(dir.path(), &["add", "f"]) {
            Err(GitError::LockedBy { command, path }) => {
                assert_eq!(command, "add f");
                assert!(path.ends_with(".git/index.lock"), "{}", path.display());
            }
            other => panic!("{other:?}"),
        }
    }
}
