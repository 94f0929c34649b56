//! `exp init`: make a directory a repository ready for exp, idempotently and without
//! disturbing an existing repository's history or files.

use std::path::{Path, PathBuf};

use git2::Repository;

use crate::git::{self, ctx, CommitFile, GitError};
use crate::record::layout::EXPERIMENTS_DIR;

/// The attributes line that routes weights through Git LFS (docs/design.md §2).
pub const LFS_ATTRIBUTES: &str = "*.safetensors filter=lfs diff=lfs merge=lfs -text";

/// The example specs shipped in the binary, so an installed `exp` needs no checkout.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "mnist-cnn.toml",
        include_str!("../experiments/mnist-cnn.toml"),
    ),
    (
        "mnist-mlp.toml",
        include_str!("../experiments/mnist-mlp.toml"),
    ),
    (
        "fashion-cnn.toml",
        include_str!("../experiments/fashion-cnn.toml"),
    ),
];

/// An `exp init` failure.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The directory cannot be created or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A Git step failed.
    #[error(transparent)]
    Git(#[from] GitError),
}

impl InitError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            InitError::Git(e) => e.hint(),
            InitError::Io { .. } => None,
        }
    }
}

/// Who runs the LFS filter in the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LfsFilter {
    /// git-lfs is installed and configured for the repository.
    GitLfs,
    /// exp's own filter (`exp lfs filter-process`): git-lfs is not installed.
    Exp,
}

/// What `exp init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The work tree.
    pub dir: PathBuf,
    /// A new repository was created.
    pub created_repository: bool,
    /// Files written (relative paths).
    pub files_written: Vec<String>,
    /// Branches created.
    pub branches_created: Vec<String>,
    /// The commit holding the written files, if one was made.
    pub commit: Option<String>,
    /// LFS filter status.
    pub lfs: LfsFilter,
}

/// Makes `dir` ready for exp (see the module docs). A failure leaves the directory as it was
/// found (a repository exp created is removed again, with the files it wrote); a rerun after an
/// interrupted init finishes the job.
pub fn init(dir: &Path) -> Result<InitReport, InitError> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| InitError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let git_dir_existed = dir.join(".git").exists();
    let experiments_existed = dir.join(EXPERIMENTS_DIR).exists();
    let mut written = Vec::new();
    let result = init_in(dir, &mut written);
    if result.is_err() {
        // Undo exactly what this call created.
        for path in written.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        if !experiments_existed {
            let _ = std::fs::remove_dir(dir.join(EXPERIMENTS_DIR));
        }
        if !git_dir_existed {
            let _ = std::fs::remove_dir_all(dir.join(".git"));
        }
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

fn init_in(dir: &Path, written: &mut Vec<PathBuf>) -> Result<InitReport, InitError> {
    let (repo, created_repository) = match Repository::open(dir) {
        Ok(repo) if !repo.is_bare() => (repo, false),
        Ok(repo) => return Err(GitError::Bare(repo.path().to_path_buf()).into()),
        Err(_) => {
            let mut options = git2::RepositoryInitOptions::new();
            options.initial_head("main");
            let repo =
                Repository::init_opts(dir, &options).map_err(ctx("creating the repository"))?;
            (repo, true)
        }
    };
    let worktree = git::workdir(&repo).to_path_buf();
    // An empty repository (`git init` without commits) is set up like a new one: its first
    // commit goes on main, whatever init.defaultBranch says.
    let unborn = repo
        .head()
        .is_err_and(|e| e.code() == git2::ErrorCode::UnbornBranch);
    if unborn {
        repo.set_head("refs/heads/main")
            .map_err(ctx("pointing HEAD at main"))?;
        // Fail before writing anything when the first commit could not be made.
        git::check_identity(&repo)?;
    }

    // Files: the attributes line and the examples, never overwriting what the user has.
    let mut files_written = Vec::new();
    let mut commit_files = Vec::new();
    let attributes_path = worktree.join(".gitattributes");
    let existing = std::fs::read_to_string(&attributes_path).unwrap_or_default();
    if !existing.lines().any(|l| l.trim() == LFS_ATTRIBUTES) {
        let mut text = existing;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(LFS_ATTRIBUTES);
        text.push('\n');
        write(&attributes_path, &text)?;
        written.push(attributes_path.clone());
        files_written.push(".gitattributes".to_string());
        commit_files.push(CommitFile {
            path: ".gitattributes".into(),
            blob: text.into_bytes(),
        });
    } else if unborn {
        // An earlier init wrote it and stopped before its commit: commit it now.
        commit_files.push(CommitFile {
            path: ".gitattributes".into(),
            blob: existing.into_bytes(),
        });
    }
    for (name, text) in EXAMPLES {
        let rel = format!("{EXPERIMENTS_DIR}/{name}");
        let path = worktree.join(&rel);
        if path.exists() {
            // An earlier init's example, not committed yet: commit it now (a file of the
            // user's with that name is left alone).
            if unborn && std::fs::read_to_string(&path).is_ok_and(|t| t == *text) {
                commit_files.push(CommitFile {
                    path: rel,
                    blob: text.as_bytes().to_vec(),
                });
            }
            continue;
        }
        std::fs::create_dir_all(worktree.join(EXPERIMENTS_DIR)).map_err(|source| {
            InitError::Io {
                action: "create",
                path: worktree.join(EXPERIMENTS_DIR),
                source,
            }
        })?;
        write(&path, text)?;
        written.push(path.clone());
        files_written.push(rel.clone());
        commit_files.push(CommitFile {
            path: rel,
            blob: text.as_bytes().to_vec(),
        });
    }

    // LFS before the first commit, so the attributes apply from the start.
    let lfs = configure_lfs(&worktree)?;

    let commit = if commit_files.is_empty() {
        None
    } else {
        let id = git::commit_files(
            &repo,
            None,
            &commit_files,
            "exp init: Git LFS attributes and example experiments\n",
        )?;
        Some(id.to_string())
    };

    // Git Flow branches: main, then develop from it.
    let mut branches_created = Vec::new();
    let head_commit = repo.head().ok().and_then(|h| h.target());
    if let Some(head_commit) = head_commit {
        let commit = repo.find_commit(head_commit).map_err(ctx("reading HEAD"))?;
        if repo.find_branch("main", git2::BranchType::Local).is_err() {
            repo.branch("main", &commit, false)
                .map_err(ctx("creating main"))?;
            branches_created.push("main".to_string());
        }
        if repo
            .find_branch("develop", git2::BranchType::Local)
            .is_err()
        {
            let main = repo
                .find_branch("main", git2::BranchType::Local)
                .and_then(|b| b.get().peel_to_commit())
                .map_err(ctx("reading main"))?;
            repo.branch("develop", &main, false)
                .map_err(ctx("creating develop"))?;
            branches_created.push("develop".to_string());
        }
        if created_repository || unborn {
            // A new repository starts where work starts in Git Flow: on develop (same commit
            // as main, so the work tree does not change).
            repo.set_head("refs/heads/develop")
                .map_err(ctx("switching to develop"))?;
        }
    }

    Ok(InitReport {
        dir: worktree,
        created_repository,
        files_written,
        branches_created,
        commit,
        lfs,
    })
}

fn write(path: &Path, text: &str) -> Result<(), InitError> {
    std::fs::write(path, text).map_err(|source| InitError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Puts a filter in charge of `filter=lfs` files (docs/design.md §6): git-lfs when it is installed
/// (`git lfs install --local`), else exp's own filter. A repository where exp's filter is
/// already in charge keeps it. Decided with the `git` on PATH.
pub fn configure_lfs(worktree: &Path) -> Result<LfsFilter, InitError> {
    use crate::lfs::config::{self, InCharge};
    if config::in_charge(worktree) == InCharge::Exp {
        return Ok(LfsFilter::Exp);
    }
    if config::git_lfs_available(worktree) {
        git::git(worktree, &["lfs", "install", "--local"])?;
        if config::in_charge(worktree) == InCharge::GitLfs {
            return Ok(LfsFilter::GitLfs);
        }
    }
    config::install_exp(worktree)?;
    Ok(LfsFilter::Exp)
}
