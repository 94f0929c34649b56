//! Who runs `filter.lfs` in a repository, and switching it between git-lfs and exp.
//!
//! Decided with the `git` on PATH, as Git itself will decide when it runs the filter (DESIGN
//! §2): never from `which git-lfs` alone nor from libgit2's view of the config, which reads a
//! different system gitconfig on these machines.

use std::path::{Path, PathBuf};

use crate::git::{self, GitError};

/// The program that cleans and smudges `filter=lfs` files in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InCharge {
    /// git-lfs (`git-lfs filter-process`).
    GitLfs,
    /// exp (`exp lfs filter-process`).
    Exp,
    /// No filter configured: `git add` would commit raw content.
    Nobody,
    /// Something else is configured as `filter.lfs.process`.
    Other(String),
}

/// Who is in charge of `filter.lfs` for the repository at `worktree`.
pub fn in_charge(worktree: &Path) -> InCharge {
    let process = git::git(worktree, &["config", "filter.lfs.process"])
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    if process.is_empty() {
        InCharge::Nobody
    } else if process.contains("git-lfs") {
        InCharge::GitLfs
    } else if process.ends_with("lfs filter-process") && process.contains("exp") {
        InCharge::Exp
    } else {
        InCharge::Other(process)
    }
}

/// Whether `git lfs` runs with the `git` on PATH.
pub fn git_lfs_available(worktree: &Path) -> bool {
    std::process::Command::new("git")
        .arg("-C")
        .arg(worktree)
        .args(["lfs", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes exp the repository's `filter.lfs` (repository-local config, overriding any global
/// or system git-lfs setting): the long-running process, the single-file commands, and
/// `required`, so Git fails loudly rather than committing raw content if exp cannot run.
pub fn install_exp(worktree: &Path) -> Result<(), GitError> {
    let exp = exp_command();
    let settings = [
        ("filter.lfs.process", format!("{exp} lfs filter-process")),
        ("filter.lfs.clean", format!("{exp} lfs clean -- %f")),
        ("filter.lfs.smudge", format!("{exp} lfs smudge -- %f")),
        ("filter.lfs.required", "true".to_string()),
    ];
    for (key, value) in settings {
        git::git(worktree, &["config", "--local", key, &value])?;
    }
    Ok(())
}

/// Removes exp's repository-local `filter.lfs`; when git-lfs is installed it is put back in
/// charge (`git lfs install --local`). Returns who is in charge afterwards.
pub fn uninstall_exp(worktree: &Path) -> Result<InCharge, GitError> {
    if in_charge_locally(worktree) {
        for key in [
            "filter.lfs.process",
            "filter.lfs.clean",
            "filter.lfs.smudge",
            "filter.lfs.required",
        ] {
            // An unset key is not an error here.
            let _ = git::git(worktree, &["config", "--local", "--unset-all", key]);
        }
    }
    if git_lfs_available(worktree) {
        git::git(worktree, &["lfs", "install", "--local"])?;
    }
    Ok(in_charge(worktree))
}

/// Whether the repository-local config names exp's filter.
fn in_charge_locally(worktree: &Path) -> bool {
    git::git(worktree, &["config", "--local", "filter.lfs.process"])
        .is_ok_and(|v| v.trim().ends_with("lfs filter-process") && !v.contains("git-lfs"))
}

/// How Git should start this exp: plain `exp` when that is what PATH finds, else the absolute
/// path of this binary (quoted for the shell Git runs filters with).
fn exp_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "exp".to_string();
    };
    if on_path("exp").and_then(|p| p.canonicalize().ok()).as_ref() == Some(&me) {
        return "exp".to_string();
    }
    let text = me.to_string_lossy();
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
