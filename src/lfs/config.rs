//! Who runs `filter.lfs` in a repository, and switching it between git-lfs and exp.
//!
//! Decided with the `git` on PATH, as Git itself will decide when it runs the filter
//! (docs/design.md §6): never from `which git-lfs` alone nor from libgit2's view of the config, which reads a
//! different system gitconfig on these machines.

use std::path::{Path, PathBuf};

use super::store::Durability;
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

/// When exp's filter makes new objects durable in `repo`: before they take their names when
/// Git is configured to fsync loose objects (the user asked for it) or when exp's pre-commit
/// hook would not run `exp lfs pre-commit` (not installed, or no `exp` on PATH for it: nothing
/// else would sync them before a commit names them); otherwise at commit, by that hook, so
/// that `git add` and `git status` never wait for the disk.
pub fn filter_durability(repo: &git2::Repository) -> Durability {
    let fsync_asked = repo.config().is_ok_and(|c| git_fsyncs_loose_objects(&c));
    let hook_syncs = crate::hooks::runs_exp_hook(repo, "pre-commit") && on_path("exp").is_some();
    if !fsync_asked && hook_syncs {
        Durability::AtCommit
    } else {
        Durability::BeforeNaming
    }
}

/// Whether Git's own configuration fsyncs loose objects: `core.fsync` naming `loose-object`
/// or an aggregate holding it (`objects`, `committed`, `added`, `all`), or the older
/// `core.fsyncObjectFiles`.
fn git_fsyncs_loose_objects(config: &git2::Config) -> bool {
    let named = config
        .get_string("core.fsync")
        .is_ok_and(|value| fsync_value_covers_loose_objects(&value));
    named || config.get_bool("core.fsyncObjectFiles").unwrap_or(false)
}

/// Git's reading of a `core.fsync` value, for loose objects: the set starts from the platform
/// default (loose objects left out), `-name` removes, `name` adds, and an added component wins
/// over a removed one; a name matches every component it begins (Git compares the given
/// length only, so `obj` is `objects`).
fn fsync_value_covers_loose_objects(value: &str) -> bool {
    const COVERING: [&str; 5] = ["loose-object", "objects", "committed", "added", "all"];
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.starts_with('-'))
        .any(|name| COVERING.iter().any(|c| c.starts_with(name)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_core_fsync_as_git_does_for_loose_objects() {
        for (value, covered) in [
            ("", false),
            ("none", false),
            ("pack,pack-metadata,commit-graph,index,reference", false),
            ("-loose-object", false),
            ("derived-metadata", false),
            ("loose-object", true),
            ("objects", true),
            ("committed", true),
            ("added", true),
            ("all", true),
            ("none, all", true),
            // Git's own spelling of its default adds `committed`, which wins over the `-`.
            ("committed,-loose-object", true),
            ("-all,loose-object", true),
            ("obj", true),
            ("commit", true),
            ("reference,-objects", false),
        ] {
            assert_eq!(
                fsync_value_covers_loose_objects(value),
                covered,
                "{value:?}"
            );
        }
    }

    #[test]
    fn defers_syncing_only_to_an_installed_executable_hook_and_not_when_git_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        // No exp hook: nothing would sync before a commit.
        assert!(!crate::hooks::runs_exp_hook(&repo, "pre-commit"));
        assert_eq!(filter_durability(&repo), Durability::BeforeNaming);
        crate::hooks::install(&repo).unwrap();
        assert!(crate::hooks::runs_exp_hook(&repo, "pre-commit"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let hook = repo.path().join("hooks/pre-commit");
            let mode = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(&hook, mode).unwrap();
            assert!(!crate::hooks::runs_exp_hook(&repo, "pre-commit"));
            assert_eq!(filter_durability(&repo), Durability::BeforeNaming);
        }
        // The user asked Git to harden loose objects: exp's objects too.
        let mut config = repo.config().unwrap();
        assert!(!git_fsyncs_loose_objects(&config.snapshot().unwrap()));
        config.set_str("core.fsync", "index").unwrap();
        assert!(!git_fsyncs_loose_objects(&config.snapshot().unwrap()));
        config.set_str("core.fsync", "added").unwrap();
        assert!(git_fsyncs_loose_objects(&config.snapshot().unwrap()));
        config.remove("core.fsync").unwrap();
        config.set_bool("core.fsyncObjectFiles", true).unwrap();
        assert!(git_fsyncs_loose_objects(&config.snapshot().unwrap()));
    }
}
