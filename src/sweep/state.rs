//! A sweep's local state (docs/design.md §9), never in Git: `exp/sweeps/<id>/` in the common git
//! dir holds `sweep.toml` (the definition: trials, spec snapshot, executor, Slurm job ids),
//! `state/<index>.toml` (a trial's process: where, since when, how it ended) and
//! `logs/<index>.log`. Git is the truth for completed trials; these files only for the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Under the common git dir.
pub const SWEEPS_DIR: &str = "exp/sweeps";
/// The definition file in a sweep's directory.
pub const SWEEP_FILE: &str = "sweep.toml";

/// A sweep's local state or definition cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not what exp wrote.
    #[error("{path} is damaged: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No sweep with this id.
    #[error("no sweep {0} in this repository")]
    Unknown(String),
}

/// `sweep.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepFile {
    /// The sweep's id.
    pub id: String,
    /// The experiment swept.
    pub experiment: String,
    /// The branch its trials land on.
    pub branch: String,
    /// The commit the branch forked from.
    pub fork: String,
    /// When the sweep started (RFC 3339).
    pub created: String,
    /// The spec file, relative to the work tree (`experiments/<name>.toml`).
    pub spec_path: String,
    /// The spec file's text when the sweep started (uncommitted edits included).
    pub spec_text: String,
    /// `--set` arguments given to the sweep, applied to every trial.
    pub overrides: Vec<String>,
    /// The data root every trial reads (resolved when the sweep started).
    pub data_root: String,
    /// `local` or `slurm`.
    pub executor: String,
    /// Trials at once.
    pub jobs: usize,
    /// GPUs the local executor assigns round-robin (empty: none assigned).
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Slurm job ids, one per submission (the first, then each resume's).
    #[serde(default)]
    pub slurm_jobs: Vec<String>,
    /// Every trial.
    pub trials: Vec<TrialEntry>,
}

/// One trial in `sweep.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialEntry {
    /// Index (the Slurm array index).
    pub index: usize,
    /// Trial id (BLAKE3 of the sweep id and the values).
    pub id: String,
    /// Swept key → value.
    pub values: BTreeMap<String, toml::Value>,
}

/// How a trial's process stands or ended, as it wrote it (`state/<index>.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Training or committing.
    Running,
    /// Ended without a record (an error, a diverged run).
    Failed,
    /// Stopped by a signal (Ctrl-C, `scancel`): committed nothing.
    Cancelled,
    /// Recorded (Git holds the record).
    Completed,
}

/// `state/<index>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialState {
    /// The state.
    pub state: ProcessState,
    /// The process.
    pub pid: u32,
    /// The host it runs on.
    pub host: String,
    /// The Slurm job (`<array job>_<index>`), when Slurm ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
    /// When it started (RFC 3339).
    pub started: String,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// The exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The error, for a failed trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where sweep `id` of the repository whose common git dir is `common` keeps its state.
#[derive(Debug, Clone)]
pub struct SweepDir(pub PathBuf);

impl SweepDir {
    /// Sweep `id`'s directory.
    pub fn new(common: &Path, id: &str) -> SweepDir {
        SweepDir(common.join(SWEEPS_DIR).join(id))
    }

    /// `sweep.toml`.
    pub fn definition(&self) -> PathBuf {
        self.0.join(SWEEP_FILE)
    }

    /// Trial `index`'s state file.
    pub fn state(&self, index: usize) -> PathBuf {
        self.0.join("state").join(format!("{index}.toml"))
    }

    /// Trial `index`'s log.
    pub fn log(&self, index: usize) -> PathBuf {
        self.0.join("logs").join(format!("{index}.log"))
    }

    /// The Slurm batch script.
    pub fn batch_script(&self) -> PathBuf {
        self.0.join("job.sbatch")
    }

    /// Reads `sweep.toml`.
    pub fn read(&self) -> Result<SweepFile, StateError> {
        let path = self.definition();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = self
                    .0
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(StateError::Unknown(id));
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        toml::from_str(&text).map_err(|e| StateError::Corrupt {
            path,
            message: e.message().to_string(),
        })
    }

    /// Writes `sweep.toml` (atomically: a reader never sees half a file).
    pub fn write(&self, sweep: &SweepFile) -> Result<(), StateError> {
        let text = toml::to_string(sweep).map_err(|e| StateError::Corrupt {
            path: self.definition(),
            message: e.to_string(),
        })?;
        write_atomic(&self.definition(), text.as_bytes())
    }

    /// Trial `index`'s state, if it wrote one. A damaged file reads as none: the trial is then
    /// judged by Git and the scheduler alone.
    pub fn read_state(&self, index: usize) -> Option<TrialState> {
        let text = std::fs::read_to_string(self.state(index)).ok()?;
        toml::from_str(&text).ok()
    }

    /// Writes trial `index`'s state.
    pub fn write_state(&self, index: usize, state: &TrialState) -> Result<(), StateError> {
        let text = toml::to_string(state).map_err(|e| StateError::Corrupt {
            path: self.state(index),
            message: e.to_string(),
        })?;
        write_atomic(&self.state(index), text.as_bytes())
    }
}

/// Every sweep id with a directory under `common`, oldest first.
pub fn sweep_ids(common: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(common.join(SWEEPS_DIR)) else {
        return Vec::new();
    };
    let mut ids: Vec<(std::time::SystemTime, String)> = dir
        .flatten()
        .filter(|e| e.path().join(SWEEP_FILE).is_file())
        .map(|e| {
            let modified = e
                .path()
                .join(SWEEP_FILE)
                .metadata()
                .and_then(|m| m.created().or_else(|_| m.modified()))
                .unwrap_or(std::time::UNIX_EPOCH);
            (modified, e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    crate::files::write_whole(path, bytes, false).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub use crate::git::lock::host_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_and_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let d = SweepDir::new(dir.path(), "abc1234");
        assert!(matches!(d.read(), Err(StateError::Unknown(id)) if id == "abc1234"));
        let sweep = SweepFile {
            id: "abc1234".into(),
            experiment: "mnist-cnn".into(),
            branch: "feature/sweep-mnist-cnn-abc1234".into(),
            fork: "0".repeat(40),
            created: "2026-12-03T00:00:00Z".into(),
            spec_path: "experiments/mnist-cnn.toml".into(),
            spec_text: "[model]\nname = \"mlp\"\n".into(),
            overrides: vec!["data.train_limit=100".into()],
            data_root: "/data".into(),
            executor: "local".into(),
            jobs: 2,
            gpus: vec![],
            slurm_jobs: vec![],
            trials: vec![TrialEntry {
                index: 0,
                id: "f".repeat(64),
                values: [("train.lr".to_string(), toml::Value::Float(0.001))].into(),
            }],
        };
        d.write(&sweep).unwrap();
        assert_eq!(d.read().unwrap(), sweep);
        assert_eq!(sweep_ids(dir.path()), ["abc1234"]);
        assert_eq!(d.read_state(0), None);
        let state = TrialState {
            state: ProcessState::Running,
            pid: 42,
            host: host_name(),
            slurm_job: Some("7_0".into()),
            started: "2026-12-03T00:00:01Z".into(),
            ended: None,
            exit_code: None,
            message: None,
        };
        d.write_state(0, &state).unwrap();
        assert_eq!(d.read_state(0), Some(state));
        std::fs::write(d.state(0), "state = 3").unwrap();
        assert_eq!(d.read_state(0), None, "a damaged state file reads as none");
        assert!(!host_name().is_empty());
    }
}
