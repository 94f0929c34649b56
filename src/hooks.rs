//! `exp hooks install` / `uninstall`: the gate's Git hooks (the scripts in `hooks/`, embedded
//! here) and `--no-ff` merges into develop and main.
//!
//! Installing keeps the user's hooks working: an existing hook that is not exp's is renamed
//! `<hook>.local`, and exp's hook runs it first (with the same arguments and input). What was
//! changed — hooks moved aside, `branch.<b>.mergeOptions` values replaced — is written to
//! `<git dir>/exp/hooks.toml`, so that uninstalling undoes exactly that and nothing else.

use std::path::{Path, PathBuf};

use git2::Repository;
use serde::{Deserialize, Serialize};

/// Marks a hook file as exp's (every script in hooks/ carries it on its second line).
const MARKER: &str = "# exp hook: ";

/// The client-side hooks, for a repository with a work tree.
const CLIENT_HOOKS: [(&str, &str); 3] = [
    (
        "pre-merge-commit",
        include_str!("../hooks/pre-merge-commit"),
    ),
    ("pre-commit", include_str!("../hooks/pre-commit")),
    ("pre-push", include_str!("../hooks/pre-push")),
];
/// The server-side hook, for a bare repository.
const SERVER_HOOKS: [(&str, &str); 1] = [("pre-receive", include_str!("../hooks/pre-receive"))];
/// Branches whose merges must create a commit, so that pre-merge-commit runs.
const GATED_BRANCHES: [&str; 2] = ["develop", "main"];

/// Installing or removing the hooks failed.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Git configuration could not be read or written.
    #[error("git config: {0}")]
    Config(#[from] git2::Error),
    /// Both the user's hook and a `.local` copy exist: exp would lose one of them.
    #[error("{0} and {0}.local both exist and neither is exp's; exp will not overwrite either")]
    Occupied(PathBuf),
}

impl HooksError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            HooksError::Occupied(_) => Some(
                "merge the two hooks into one file (exp's hook will then run it as .local)".into(),
            ),
            _ => None,
        }
    }
}

/// What `install` changed, so that `uninstall` can undo it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Installed {
    /// Hooks written.
    hooks: Vec<String>,
    /// Hooks of the user's renamed to `<hook>.local`.
    moved_aside: Vec<String>,
    /// `branch.<name>.mergeOptions` values install replaced.
    merge_options: Vec<MergeOption>,
}

/// A configuration value before install.
#[derive(Debug, Serialize, Deserialize)]
struct MergeOption {
    key: String,
    /// Absent: the key was unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<String>,
}

/// What install or uninstall did, for the user.
#[derive(Debug, Default)]
pub struct HooksReport {
    /// The hooks directory.
    pub dir: PathBuf,
    /// One line per change.
    pub changes: Vec<String>,
}

fn io<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> HooksError + 'p {
    move |source| HooksError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether Git will run exp's hook `name` in `repo`: exp's script, executable, where Git looks.
pub fn runs_exp_hook(repo: &Repository, name: &str) -> bool {
    let Ok(path) = hooks_dir(repo).map(|d| d.join(name)) else {
        return false;
    };
    #[cfg(unix)]
    let executable = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    };
    #[cfg(not(unix))]
    let executable = path.is_file();
    executable && is_exp_hook(&path)
}

fn hooks_dir(repo: &Repository) -> Result<PathBuf, HooksError> {
    let configured = repo.config()?.get_path("core.hooksPath").ok();
    Ok(match configured {
        Some(p) if p.is_absolute() => p,
        Some(p) => crate::git::workdir(repo).join(p),
        None => repo.commondir().join("hooks"),
    })
}

fn state_path(repo: &Repository) -> PathBuf {
    repo.commondir().join("exp/hooks.toml")
}

fn is_exp_hook(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|t| t.lines().nth(1).is_some_and(|l| l.starts_with(MARKER)))
}

fn load_state(repo: &Repository) -> Installed {
    std::fs::read_to_string(state_path(repo))
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default()
}

/// Which tool wrote a hook, from what its script runs, for the message that says it was kept.
fn hook_owner(script: &str) -> Option<&'static str> {
    const OWNERS: [(&str, &str); 4] = [
        ("git lfs ", "git-lfs"),
        ("pre-commit.com", "the pre-commit framework"),
        ("husky", "husky"),
        ("lefthook", "lefthook"),
    ];
    OWNERS
        .iter()
        .find(|(marker, _)| script.contains(marker))
        .map(|(_, owner)| *owner)
}

/// Installs the hooks (server-side for a bare repository) and `--no-ff` merges.
pub fn install(repo: &Repository) -> Result<HooksReport, HooksError> {
    let dir = hooks_dir(repo)?;
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let mut state = load_state(repo);
    let mut report = HooksReport {
        dir: dir.clone(),
        changes: Vec::new(),
    };
    let hooks: &[(&str, &str)] = if repo.is_bare() {
        &SERVER_HOOKS
    } else {
        &CLIENT_HOOKS
    };
    for (name, script) in hooks {
        let path = dir.join(name);
        let local = dir.join(format!("{name}.local"));
        if path.exists() && !is_exp_hook(&path) {
            if local.exists() {
                return Err(HooksError::Occupied(path));
            }
            let whose = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| hook_owner(&text))
                .map_or_else(|| "your".to_string(), |owner| format!("{owner}'s"));
            std::fs::rename(&path, &local).map_err(io("rename", &path))?;
            state.moved_aside.push(name.to_string());
            report.changes.push(format!(
                "kept {whose} {name} hook as {name}.local; exp's {name} runs it first"
            ));
        }
        write_executable(&path, script)?;
        if !state.hooks.iter().any(|h| h == name) {
            state.hooks.push(name.to_string());
        }
        report.changes.push(format!("installed {name}"));
    }
    if !repo.is_bare() {
        let mut config = repo.config()?;
        for branch in GATED_BRANCHES {
            let key = format!("branch.{branch}.mergeOptions");
            let before = config.get_string(&key).ok();
            if before.as_deref() == Some("--no-ff") {
                continue;
            }
            if !state.merge_options.iter().any(|m| m.key == key) {
                state.merge_options.push(MergeOption {
                    key: key.clone(),
                    before,
                });
            }
            config.set_str(&key, "--no-ff")?;
            report.changes.push(format!(
                "set {key} = --no-ff (a merge into {branch} always makes a commit, so it is gated)"
            ));
        }
    }
    let path = state_path(repo);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let text = toml::to_string(&state).map_err(|e| HooksError::Io {
        action: "encode",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, text).map_err(io("write", &path))?;
    Ok(report)
}

fn write_executable(path: &Path, script: &str) -> Result<(), HooksError> {
    std::fs::write(path, script).map_err(io("write", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(io("make executable", path))?;
    }
    Ok(())
}

/// Removes exp's hooks, puts the user's back and restores the merge options install changed.
pub fn uninstall(repo: &Repository) -> Result<HooksReport, HooksError> {
    let dir = hooks_dir(repo)?;
    let state = load_state(repo);
    let mut report = HooksReport {
        dir: dir.clone(),
        changes: Vec::new(),
    };
    for (name, _) in CLIENT_HOOKS.iter().chain(SERVER_HOOKS.iter()) {
        let path = dir.join(name);
        if is_exp_hook(&path) {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            report.changes.push(format!("removed {name}"));
        }
        let local = dir.join(format!("{name}.local"));
        if state.moved_aside.iter().any(|h| h == name) && local.exists() && !path.exists() {
            std::fs::rename(&local, &path).map_err(io("rename", &local))?;
            report.changes.push(format!("restored your {name}"));
        }
    }
    if !repo.is_bare() {
        let mut config = repo.config()?;
        for MergeOption { key, before } in &state.merge_options {
            match before {
                Some(value) => config.set_str(key, value)?,
                None => {
                    // Already gone is fine: the goal is the state before install.
                    let _ = config.remove(key);
                }
            }
            report.changes.push(match before {
                Some(v) => format!("restored {key} = {v}"),
                None => format!("unset {key}"),
            });
        }
    }
    let path = state_path(repo);
    if path.exists() {
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
    }
    Ok(report)
}
