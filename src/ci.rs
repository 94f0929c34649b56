//! `exp ci init github`: the CI of a user's repository — a GitHub Actions workflow that gates
//! every pull request into develop or main (`exp gate`, `--verify` where the runner has data),
//! posts `exp diff --md` as the job summary and a comment, and evaluates the latest release on
//! a push to main. The workflow only calls one script (`exp-ci.sh`), which exp's own tests run
//! against real repositories, so CI does what a user does by hand (docs/ci.md). Both files are
//! embedded in the binary from the project's `ci/github/`, as the hooks are.

use std::path::{Path, PathBuf};

/// The workflow, relative to the work tree.
pub const WORKFLOW_PATH: &str = ".github/workflows/exp.yml";
/// The script the workflow runs, relative to the work tree.
pub const SCRIPT_PATH: &str = ".github/exp/exp-ci.sh";

const WORKFLOW: &str = include_str!("../ci/github/exp.yml");
const SCRIPT: &str = include_str!("../ci/github/exp-ci.sh");

/// Writing the CI files failed or would lose the user's edits.
#[derive(Debug, thiserror::Error)]
pub enum CiError {
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file exists with other content (the user's edits); nothing was written.
    #[error("{0} exists and differs from what exp writes; nothing was written")]
    Exists(String),
}

impl CiError {
    /// What to do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            CiError::Exists(_) => Some(
                "`exp ci init github --force` rewrites it (commit or save your version first)"
                    .into(),
            ),
            CiError::Io { .. } => Some("check that the work tree is writable".into()),
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// It did not exist.
    Created,
    /// It already held exactly this.
    Unchanged,
    /// It held something else and `force` replaced it.
    Replaced,
}

/// The files `exp ci init github` writes, with their content: the workflow names the exp
/// version that wrote it (the one it installs).
pub fn github_files() -> [(&'static str, String); 2] {
    [
        (
            WORKFLOW_PATH,
            WORKFLOW.replace("@EXP_VERSION@", env!("CARGO_PKG_VERSION")),
        ),
        (SCRIPT_PATH, SCRIPT.to_string()),
    ]
}

/// Writes the GitHub Actions workflow and its script into `worktree`. A file that exists with
/// other content is refused (nothing written) unless `force`. The files are not committed: the
/// user reviews and commits them.
pub fn init_github(worktree: &Path, force: bool) -> Result<Vec<(String, Written)>, CiError> {
    let files = github_files();
    // Check every file before writing any: a refusal leaves the work tree as it was.
    let mut plan = Vec::new();
    for (rel, content) in &files {
        let path = worktree.join(rel);
        let written = match std::fs::read(&path) {
            Ok(existing) if existing == content.as_bytes() => Written::Unchanged,
            Ok(_) if force => Written::Replaced,
            Ok(_) => return Err(CiError::Exists(rel.to_string())),
            Err(_) => Written::Created,
        };
        plan.push((rel.to_string(), path, content, written));
    }
    let mut out = Vec::new();
    for (rel, path, content, written) in plan {
        if written != Written::Unchanged {
            let io = |source| CiError::Io {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            std::fs::write(&path, content).map_err(io)?;
            if rel == SCRIPT_PATH {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io)?;
            }
        }
        out.push((rel, written));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_refuses_edits_and_forces() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_github(dir.path(), false).unwrap();
        assert!(first.iter().all(|(_, w)| *w == Written::Created));
        let workflow = std::fs::read_to_string(dir.path().join(WORKFLOW_PATH)).unwrap();
        assert!(workflow.contains(&format!("EXP_VERSION: \"{}\"", env!("CARGO_PKG_VERSION"))));
        assert!(!workflow.contains("@EXP_VERSION@"));
        let again = init_github(dir.path(), false).unwrap();
        assert!(again.iter().all(|(_, w)| *w == Written::Unchanged));
        std::fs::write(dir.path().join(SCRIPT_PATH), "# mine\n").unwrap();
        let err = init_github(dir.path(), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".github/exp/exp-ci.sh exists and differs from what exp writes; nothing was written"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(SCRIPT_PATH)).unwrap(),
            "# mine\n"
        );
        let forced = init_github(dir.path(), true).unwrap();
        assert_eq!(forced[1], (SCRIPT_PATH.to_string(), Written::Replaced));
    }
}
