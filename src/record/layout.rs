//! Where a run's files live in a repository (docs/design.md §2): the one place that names
//! `experiments/<name>.toml`, `experiments/<name>/` and the files a run writes there. Readers
//! (compare, gate, flow, init_from) and the writer (run) both take the names from here.

use std::path::{Path, PathBuf};

/// The folder of experiment specs and run outputs, relative to the work tree's root.
pub const EXPERIMENTS_DIR: &str = "experiments";
/// The weights (an LFS pointer in Git).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The run record.
pub const RECORD_FILE: &str = "metrics.toml";
/// Per-example labels and predictions.
pub const PREDICTIONS_FILE: &str = "predictions.bin";
/// Per-epoch curves.
pub const HISTORY_FILE: &str = "history.csv";
/// Every file a run writes into `experiments/<name>/`.
pub const RUN_FILES: [&str; 4] = [WEIGHTS_FILE, RECORD_FILE, PREDICTIONS_FILE, HISTORY_FILE];
/// The run files the record binds by BLAKE3 in `[artifacts]` (the weights are bound by
/// `model.oid` and `model.tensor_hash`).
pub const BOUND_FILES: [&str; 2] = [PREDICTIONS_FILE, HISTORY_FILE];

/// `experiments/<name>.toml`, as a path in Git's trees.
pub fn spec_path(experiment: &str) -> String {
    format!("{EXPERIMENTS_DIR}/{experiment}.toml")
}

/// `experiments/<name>`, the folder of a run's outputs, as a path in Git's trees.
pub fn run_dir(experiment: &str) -> String {
    format!("{EXPERIMENTS_DIR}/{experiment}")
}

/// `experiments/<name>/<file>`, as a path in Git's trees.
pub fn run_file(experiment: &str, file: &str) -> String {
    format!("{EXPERIMENTS_DIR}/{experiment}/{file}")
}

/// The spec file in a work tree.
pub fn spec_file_in(worktree: &Path, experiment: &str) -> PathBuf {
    worktree
        .join(EXPERIMENTS_DIR)
        .join(format!("{experiment}.toml"))
}

/// The run's output folder in a work tree.
pub fn run_dir_in(worktree: &Path, experiment: &str) -> PathBuf {
    worktree.join(EXPERIMENTS_DIR).join(experiment)
}

/// The experiment a Git path `experiments/<name>/…` or `experiments/<name>.toml` belongs to.
pub fn experiment_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(EXPERIMENTS_DIR)?.strip_prefix('/')?;
    match rest.split_once('/') {
        Some((name, _)) => Some(name),
        None => rest.strip_suffix(".toml"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_ones_git_trees_hold() {
        assert_eq!(spec_path("mnist-cnn"), "experiments/mnist-cnn.toml");
        assert_eq!(run_dir("mnist-cnn"), "experiments/mnist-cnn");
        assert_eq!(
            run_file("mnist-cnn", RECORD_FILE),
            "experiments/mnist-cnn/metrics.toml"
        );
        assert_eq!(
            spec_file_in(Path::new("/w"), "a"),
            Path::new("/w/experiments/a.toml")
        );
        assert_eq!(
            run_dir_in(Path::new("/w"), "a"),
            Path::new("/w/experiments/a")
        );
        assert_eq!(experiment_of("experiments/a/metrics.toml"), Some("a"));
        assert_eq!(experiment_of("experiments/a.toml"), Some("a"));
        assert_eq!(experiment_of("experiments/a"), None);
        assert_eq!(experiment_of("experimentsx/a.toml"), None);
        assert_eq!(experiment_of("hooks/pre-commit"), None);
    }
}
