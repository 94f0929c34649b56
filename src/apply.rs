//! `exp apply`: put the run you want at the tip of the checked-out branch, so that `exp flow
//! finish` and `exp flow release` ship that model rather than whichever run came last (DVC's
//! `exp apply`, MLflow's "register this run").
//!
//! The run is chosen by a revision (its run tag or commit) or as the best of the branch's
//! comparable runs on a known metric: the run commits of `<experiment>` on the branch's
//! first-parent history since it left develop (or main), those whose record measured the metric
//! on the latest run's eval set, ties to the latest. Its spec, record, weights pointer,
//! predictions and history become one commit at the tip (`git::append::apply_run`, the same
//! function `exp sweep pick` uses); no run tag is made — the run keeps its own, and `exp log`
//! shows the commit as "apply of <tag>". The record is audited first (`compare::audit`): a
//! record that does not hold together with its committed files is never applied.

use std::collections::{BTreeMap, HashMap};

use git2::{Oid, Repository};

use crate::compare::{self, audit::audit, CompareError};
use crate::git::{self, GitError};
use crate::metric::{self, Direction};
use crate::record::layout;

pub use crate::git::APPLY_PREFIX;

/// An apply that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A Git operation failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A record could not be read.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// The run to apply cannot be determined from what was given.
    #[error("{0}")]
    Choose(String),
    /// The chosen record does not hold together with the files committed beside it.
    #[error("the record of {experiment} at {rev} cannot be applied: {reason}")]
    Untrusted {
        /// The experiment.
        experiment: String,
        /// The revision.
        rev: String,
        /// What the audit found.
        reason: String,
    },
}

impl ApplyError {
    /// What to do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            ApplyError::Git(e) => e.hint(),
            ApplyError::Compare(e) => e.hint(),
            ApplyError::Choose(_) => Some(
                "`exp log` lists the branch's runs and their tags; `exp apply --best accuracy` takes the best".into(),
            ),
            ApplyError::Untrusted { .. } => Some(
                "`exp verify REV` re-evaluates that run's weights; apply another run".into(),
            ),
        }
    }
}

/// Which run to apply.
#[derive(Debug, Clone)]
pub enum Choice {
    /// A revision: a run tag or a commit.
    Run(String),
    /// The best comparable run of the branch on this known metric.
    Best(String),
}

/// One run commit of an experiment on a branch.
#[derive(Debug, Clone)]
pub struct BranchRun {
    /// The run commit.
    pub commit: Oid,
    /// Its run tag, when it has one.
    pub tag: Option<String>,
    /// The record's metric values.
    pub metrics: BTreeMap<String, f64>,
    /// The eval set each metric was measured on.
    pub eval_sets: BTreeMap<String, String>,
    /// The record's blob (a copy of the run — a merge, an apply — has the same).
    pub record_blob: Oid,
}

impl BranchRun {
    /// The run tag, else the short commit id.
    pub fn name(&self) -> String {
        self.tag
            .clone()
            .unwrap_or_else(|| crate::report::short(&self.commit.to_string()).to_string())
    }
}

/// The run commits of `experiment` on the first-parent history of `tip` since it left
/// develop (else main), newest first. A run commit's message starts `exp run <experiment>:`.
pub fn branch_runs(
    repo: &Repository,
    tip: Oid,
    experiment: &str,
) -> Result<Vec<BranchRun>, ApplyError> {
    let base = ["develop", "main"].iter().find_map(|b| {
        let other = repo.revparse_single(b).ok()?.peel_to_commit().ok()?.id();
        repo.merge_base(tip, other).ok()
    });
    let tags = run_tags(repo);
    let prefix = format!("exp run {experiment}:");
    let mut runs = Vec::new();
    let mut at = Some(tip);
    while let Some(oid) = at {
        if Some(oid) == base {
            break;
        }
        let commit = repo
            .find_commit(oid)
            .map_err(git::ctx(format!("reading commit {oid}")))?;
        if commit.message().unwrap_or_default().starts_with(&prefix) {
            if let Some(run) = run_at(repo, oid, experiment, &tags)? {
                runs.push(run);
            }
        }
        at = commit.parent_id(0).ok();
    }
    Ok(runs)
}

/// The best of `runs` (newest first) on `metric`, among those measured on the newest run's
/// eval set; ties go to the newest. `None` when no run has the metric.
pub fn best<'a>(runs: &'a [BranchRun], metric: &str) -> Option<&'a BranchRun> {
    let direction = metric::known(metric)?.direction;
    let eval_set = runs.iter().find_map(|r| r.eval_sets.get(metric))?;
    let mut best: Option<&BranchRun> = None;
    for run in runs {
        let (Some(value), Some(set)) = (run.metrics.get(metric), run.eval_sets.get(metric)) else {
            continue;
        };
        if set != eval_set || !value.is_finite() {
            continue;
        }
        let better = match best.map(|b| b.metrics[metric]) {
            None => true,
            // Strictly better: the newest of equal runs, seen first, stays.
            Some(current) => match direction {
                Direction::Max => *value > current,
                Direction::Min => *value < current,
            },
        };
        if better {
            best = Some(run);
        }
    }
    best
}

/// The comparable runs [`best`] chose among: how many there were.
pub fn comparable(runs: &[BranchRun], metric: &str) -> usize {
    let Some(eval_set) = runs.iter().find_map(|r| r.eval_sets.get(metric)) else {
        return 0;
    };
    runs.iter()
        .filter(|r| r.eval_sets.get(metric) == Some(eval_set) && r.metrics.contains_key(metric))
        .count()
}

/// What [`apply`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The experiment.
    pub experiment: String,
    /// The branch it was applied on.
    pub branch: String,
    /// The run applied.
    pub run: BranchRun,
    /// The apply commit; `None` when the tip already held exactly that run.
    pub commit: Option<Oid>,
    /// With `--best`: how many comparable runs it was chosen among.
    pub among: Option<usize>,
}

/// Applies the chosen run of `experiment` (or of the one experiment the choice leaves) at the
/// tip of the checked-out branch, and brings the work tree and index to it. The caller holds
/// the work-tree lock.
pub fn apply(
    repo: &Repository,
    choice: &Choice,
    experiment: Option<&str>,
) -> Result<Applied, ApplyError> {
    let (branch, tip) = git::current_branch(repo)?;
    let dir = git::workdir(repo).to_path_buf();
    let (experiment, run, among) = match choice {
        Choice::Run(rev) => {
            let snapshot = compare::resolve(repo, rev)?;
            let commit = snapshot.commit.as_ref().map(|c| c.id()).ok_or_else(|| {
                ApplyError::Choose(format!("{rev} names a tree, not a run commit"))
            })?;
            let name = match experiment {
                Some(name) => name.to_string(),
                None => only_experiment(repo, commit, rev)?,
            };
            let run = run_at(repo, commit, &name, &run_tags(repo))?.ok_or_else(|| {
                ApplyError::Choose(format!("{rev} holds no run record of {name}"))
            })?;
            (name, run, None)
        }
        Choice::Best(metric) => {
            if metric::known(metric).is_none() {
                return Err(ApplyError::Choose(format!(
                    "--best {metric:?}: not a metric exp knows ({})",
                    metric::known_names()
                )));
            }
            let name = match experiment {
                Some(name) => name.to_string(),
                None => only_experiment_on_branch(repo, tip, &branch)?,
            };
            let runs = branch_runs(repo, tip, &name)?;
            let run = best(&runs, metric).cloned().ok_or_else(|| {
                ApplyError::Choose(format!(
                    "{branch} has no run of {name} with {metric} since it left develop"
                ))
            })?;
            (name, run, Some(comparable(&runs, metric)))
        }
    };
    // The chosen record must hold together with the files committed beside it.
    let snapshot = compare::resolve(repo, &run.commit.to_string())?;
    let stored = compare::records_at(repo, &snapshot)?
        .remove(&experiment)
        .ok_or_else(|| {
            ApplyError::Choose(format!("{} holds no record of {experiment}", run.name()))
        })?;
    audit(repo, &snapshot, &experiment, &stored).map_err(|reason| ApplyError::Untrusted {
        experiment: experiment.clone(),
        rev: run.name(),
        reason,
    })?;
    let paths = [
        layout::spec_path(&experiment),
        format!("{}/", layout::run_dir(&experiment)),
    ];
    git::check_clean(&dir, &paths)?;
    let headline = ["accuracy", "loss"]
        .iter()
        .filter_map(|m| run.metrics.get(*m).map(|v| format!("{m}={v:.4}")))
        .collect::<Vec<_>>()
        .join(" ");
    let message = format!(
        "{APPLY_PREFIX} {}: {experiment} {headline}\n\nthe spec, record and weights of {} (commit {}) at the branch tip\n",
        run.name(),
        run.name(),
        run.commit
    );
    let signature = git::signature(repo)?;
    let commit =
        git::append::apply_run(repo, &branch, &experiment, run.commit, &message, &signature)?;
    if commit.is_some() {
        // The branch moved under the work tree: bring the experiment's files and their index
        // entries to the new tip (git runs the LFS smudge filter: the weights, not the pointer).
        let mut args = vec!["restore", "--source=HEAD", "--staged", "--worktree", "--"];
        args.extend(paths.iter().map(String::as_str));
        git::git(&dir, &args)?;
    }
    Ok(Applied {
        experiment,
        branch,
        run,
        commit,
        among,
    })
}

/// The run of `experiment` recorded at `commit` (its record there), whatever its message;
/// `tags` maps commits to their run tag.
fn run_at(
    repo: &Repository,
    commit: Oid,
    experiment: &str,
    tags: &HashMap<Oid, String>,
) -> Result<Option<BranchRun>, ApplyError> {
    let snapshot = compare::resolve(repo, &commit.to_string())?;
    let Some(blob) = compare::record_blobs(repo, &snapshot.tree)?
        .get(experiment)
        .copied()
    else {
        return Ok(None);
    };
    let record = compare::parse_record(repo, blob, &snapshot.name, experiment)?;
    Ok(Some(BranchRun {
        record_blob: blob,
        commit,
        tag: tags.get(&commit).cloned(),
        eval_sets: record
            .metrics
            .meta
            .iter()
            .map(|(k, m)| (k.clone(), m.eval_set.clone()))
            .collect(),
        metrics: record.metrics.values,
    }))
}

/// The one experiment whose record `commit` changed (against its first parent).
fn only_experiment(repo: &Repository, commit: Oid, rev: &str) -> Result<String, ApplyError> {
    let at = |oid: Oid| -> Result<BTreeMap<String, Oid>, ApplyError> {
        let snapshot = compare::resolve(repo, &oid.to_string())?;
        Ok(compare::record_blobs(repo, &snapshot.tree)?)
    };
    let now = at(commit)?;
    let parent = repo
        .find_commit(commit)
        .map_err(git::ctx(format!("reading {rev}")))?
        .parent_id(0)
        .ok();
    let before = match parent {
        Some(p) => at(p)?,
        None => BTreeMap::new(),
    };
    let changed: Vec<&String> = now
        .iter()
        .filter(|(name, blob)| before.get(*name) != Some(blob))
        .map(|(name, _)| name)
        .collect();
    match changed.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApplyError::Choose(format!(
            "{rev} records no run (no experiments/*/metrics.toml changed there)"
        ))),
        many => Err(ApplyError::Choose(format!(
            "{rev} records runs of several experiments ({}): name one with -e NAME",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The one experiment with run commits on `branch` since it left develop.
fn only_experiment_on_branch(
    repo: &Repository,
    tip: Oid,
    branch: &str,
) -> Result<String, ApplyError> {
    let snapshot = compare::resolve(repo, &tip.to_string())?;
    let mut with_runs = Vec::new();
    for name in compare::record_blobs(repo, &snapshot.tree)?.keys() {
        if !branch_runs(repo, tip, name)?.is_empty() {
            with_runs.push(name.clone());
        }
    }
    match with_runs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ApplyError::Choose(format!(
            "{branch} has no run since it left develop"
        ))),
        many => Err(ApplyError::Choose(format!(
            "{branch} has runs of several experiments ({}): name one with -e NAME",
            many.join(", ")
        ))),
    }
}

/// Each commit's run tag (the first by name when several point at it).
fn run_tags(repo: &Repository) -> HashMap<Oid, String> {
    let mut out: HashMap<Oid, String> = HashMap::new();
    let Ok(refs) = repo.references_glob("refs/tags/run/*") else {
        return out;
    };
    for reference in refs.flatten() {
        let (Some(name), Ok(commit)) = (
            reference.shorthand().map(String::from),
            reference.peel_to_commit(),
        ) else {
            continue;
        };
        let entry = out.entry(commit.id()).or_insert_with(|| name.clone());
        if name < *entry {
            *entry = name;
        }
    }
    out
}
