//! What `exp plot` charts, read from Git objects: the branches that have runs and the
//! training curves (`history.csv`) of chosen runs. The charts themselves are in
//! [`super::plot`]; the command line only picks the inputs.

use std::collections::BTreeSet;
use std::path::Path;

use git2::Repository;

use crate::compare::{resolve, CompareError};
use crate::record::layout::{self, HISTORY_FILE};
use crate::record::{parse_history, EpochRecord};

/// One run's training curves.
#[derive(Debug, Clone)]
pub struct RunCurves {
    /// The revision as people read it (a run tag, a branch, a short id).
    pub label: String,
    /// One row per epoch.
    pub rows: Vec<EpochRecord>,
}

/// Every local branch, by name.
pub fn local_branches(repo: &Repository) -> Result<Vec<String>, CompareError> {
    let git = |source| CompareError::Git {
        context: "the local branches".into(),
        source,
    };
    let mut names = Vec::new();
    for branch in repo.branches(Some(git2::BranchType::Local)).map_err(git)? {
        let (branch, _) = branch.map_err(git)?;
        if let Ok(Some(name)) = branch.name() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The `history.csv` of `experiment` at each of `revs` that has one; a run reached from two
/// revisions (the same blob) is read once, under the first name.
pub fn training_curves(
    repo: &Repository,
    experiment: &str,
    revs: &[String],
) -> Result<Vec<RunCurves>, CompareError> {
    let path = layout::run_file(experiment, HISTORY_FILE);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for rev in revs {
        let snapshot = resolve(repo, rev)?;
        let Ok(entry) = snapshot.tree.get_path(Path::new(&path)) else {
            continue;
        };
        if !seen.insert(entry.id()) {
            continue;
        }
        let blob = repo
            .find_blob(entry.id())
            .map_err(|source| CompareError::Git {
                context: format!("{path} at {rev}"),
                source,
            })?;
        let rows = parse_history(blob.content()).map_err(|e| CompareError::CorruptRecord {
            rev: rev.clone(),
            path: path.clone(),
            message: e.to_string(),
        })?;
        out.push(RunCurves {
            label: crate::report::rev_name(rev),
            rows,
        });
    }
    Ok(out)
}
