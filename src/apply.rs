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
    /// The branch is develop or main: runs reach them only through the gate.
    #[error("{0} is an integration branch: a run reaches it only through a gated merge")]
    IntegrationBranch(String),
    /// The run's weights are not in the local LFS store (or are damaged): nothing was applied.
    #[error("the weights of {run} (LFS object {oid}) {problem}; nothing was applied")]
    Weights {
        /// The run.
        run: String,
        /// The object.
        oid: String,
        /// What is wrong.
        problem: String,
    },
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
            ApplyError::IntegrationBranch(_) => Some(
                "apply on the feature branch that holds the runs (git switch feature/…), then exp flow finish".into(),
            ),
            ApplyError::Weights { .. } => Some(
                "fetch them (exp pull, or git lfs pull where git-lfs is in charge); exp lfs fsck checks the store".into(),
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
    let prefix = git::run_subject(experiment);
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
    /// Runs `--best` passed over because their records do not hold together.
    pub skipped: Vec<String>,
    /// The work tree got the LFS pointer, not the weights: no LFS filter applies to the
    /// weights file (`.gitattributes`).
    pub pointer_in_work_tree: bool,
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
    let mut skipped = Vec::new();
    if git::is_integration_branch(&branch) {
        return Err(ApplyError::IntegrationBranch(branch));
    }
    let dir = git::workdir(repo).to_path_buf();
    let (experiment, run, among, stored) = match choice {
        Choice::Run(rev) => {
            let snapshot = compare::resolve(repo, rev)?;
            let commit = snapshot.commit.as_ref().map(|c| c.id()).ok_or_else(|| {
                ApplyError::Choose(format!("{rev} names a tree, not a run commit"))
            })?;
            let recorded = runs_recorded(repo, commit, rev)?;
            let name = match experiment {
                Some(name) if recorded.iter().any(|r| r == name) => name.to_string(),
                Some(name) => {
                    return Err(ApplyError::Choose(format!(
                        "{rev} is not a run of {name} ({})",
                        if recorded.is_empty() {
                            "it records no run".to_string()
                        } else {
                            format!("it records a run of {}", recorded.join(", "))
                        }
                    )))
                }
                None => match recorded.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(ApplyError::Choose(format!(
                            "{rev} records no run (a run commit's message starts `exp run NAME:`; merges and applies copy runs)"
                        )))
                    }
                    many => {
                        return Err(ApplyError::Choose(format!(
                            "{rev} records runs of several experiments ({}): name one with -e NAME",
                            many.join(", ")
                        )))
                    }
                },
            };
            let run = run_at(repo, commit, &name, &run_tags(repo))?.ok_or_else(|| {
                ApplyError::Choose(format!("{rev} holds no run record of {name}"))
            })?;
            // The chosen record must hold together with the files committed beside it.
            let stored =
                audited_record(repo, &name, &run).map_err(|reason| ApplyError::Untrusted {
                    experiment: name.clone(),
                    rev: run.name(),
                    reason,
                })?;
            (name, run, None, stored)
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
            let mut runs = branch_runs(repo, tip, &name)?;
            let among = comparable(&runs, metric);
            // The best run whose record holds together; a forged one is passed over, said.
            let (run, stored) = loop {
                let Some(candidate) = best(&runs, metric).cloned() else {
                    return Err(ApplyError::Choose(format!(
                        "{branch} has no run of {name} with {metric} since it left develop{}",
                        if skipped.is_empty() {
                            ""
                        } else {
                            " whose record holds together"
                        }
                    )));
                };
                match audited_record(repo, &name, &candidate) {
                    Ok(stored) => break (candidate, stored),
                    Err(reason) => {
                        skipped.push(format!(
                            "passed over {}: its record does not hold together ({reason})",
                            candidate.name()
                        ));
                        runs.retain(|r| r.commit != candidate.commit);
                    }
                }
            };
            (name, run, Some(among), stored)
        }
    };
    let paths = [
        layout::spec_path(&experiment),
        format!("{}/", layout::run_dir(&experiment)),
    ];
    git::check_clean(&dir, &paths)?;
    // The weights must be here, whole, before anything is committed: the work tree gets them.
    let weights_problem = match crate::lfs::Oid::parse(&stored.record.model.oid) {
        Err(e) => Some(e.to_string()),
        Ok(oid) => {
            let store = crate::lfs::LfsStore::for_repo(repo);
            if !store.contains(&oid) {
                Some("are not in the local LFS store".to_string())
            } else {
                store.verify(&oid).err().map(|e| e.to_string())
            }
        }
    };
    if let Some(problem) = weights_problem {
        return Err(ApplyError::Weights {
            run: run.name(),
            oid: stored.record.model.oid.clone(),
            problem,
        });
    }
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
    // Moving the branch and bringing the work tree along are two steps: journalled, so that a
    // kill between them is finished by the next committing command ([`recover`]).
    let journal = ApplyJournal {
        experiment: experiment.clone(),
        before: tip.to_string(),
    };
    journal.write(repo)?;
    let commit =
        git::append::apply_run(repo, &branch, &experiment, run.commit, &message, &signature)?;
    if commit.is_some() {
        restore_from_head(&dir, &experiment)?;
    }
    ApplyJournal::remove(repo);
    let weights = dir.join(layout::run_file(&experiment, layout::WEIGHTS_FILE));
    let head = std::fs::read(&weights)
        .map(|b| b[..b.len().min(64)].to_vec())
        .unwrap_or_default();
    Ok(Applied {
        pointer_in_work_tree: head.starts_with(b"version https://git-lfs.github.com/spec/"),
        skipped,
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

/// The record of `run`, audited against the files committed beside it (`compare::audit`); when
/// they disagree, what disagrees, in words.
fn audited_record(
    repo: &Repository,
    experiment: &str,
    run: &BranchRun,
) -> Result<compare::StoredRecord, String> {
    let snapshot = compare::resolve(repo, &run.commit.to_string()).map_err(|e| e.to_string())?;
    let stored = compare::stored_record(repo, &snapshot, experiment, run.record_blob)
        .map_err(|e| e.to_string())?;
    audit(repo, &snapshot, experiment, &stored)?;
    Ok(stored)
}

/// The experiments whose run `commit` records: a run commit (message `exp run NAME:`, one
/// experiment) whose record of NAME changed against its first parent. Merges, applies and picks
/// copy runs: they record none.
fn runs_recorded(repo: &Repository, commit: Oid, rev: &str) -> Result<Vec<String>, ApplyError> {
    let c = repo
        .find_commit(commit)
        .map_err(git::ctx(format!("reading {rev}")))?;
    let message = c.message().unwrap_or_default();
    let Some(name) = git::run_subject_experiment(message).filter(|_| c.parent_count() <= 1) else {
        return Ok(Vec::new());
    };
    let at = |oid: Oid| -> Result<Option<Oid>, ApplyError> {
        let snapshot = compare::resolve(repo, &oid.to_string())?;
        Ok(compare::record_blobs(repo, &snapshot.tree)?
            .get(name)
            .copied())
    };
    let now = at(commit)?;
    let before = match c.parent_id(0).ok() {
        Some(p) => at(p)?,
        None => None,
    };
    Ok(if now.is_some() && now != before {
        vec![name.to_string()]
    } else {
        Vec::new()
    })
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

/// The journal of an apply in progress, in the work tree's git dir next to the work-tree lock.
const APPLY_JOURNAL: &str = "exp/apply.toml";

/// What an apply in progress is doing: the experiment, and the branch tip before it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ApplyJournal {
    experiment: String,
    before: String,
}

impl ApplyJournal {
    fn path(repo: &Repository) -> std::path::PathBuf {
        repo.path().join(APPLY_JOURNAL)
    }

    /// Written durably, before the branch moves.
    fn write(&self, repo: &Repository) -> Result<(), GitError> {
        git::write_journal(&ApplyJournal::path(repo), self)
    }

    fn remove(repo: &Repository) {
        let _ = std::fs::remove_file(ApplyJournal::path(repo));
    }
}

/// Brings experiment `experiment`'s spec and directory, in the index and the work tree, to
/// HEAD (git runs the LFS smudge filter: the weights, not the pointer).
fn restore_from_head(dir: &std::path::Path, experiment: &str) -> Result<(), GitError> {
    let spec = layout::spec_path(experiment);
    let run_dir = format!("{}/", layout::run_dir(experiment));
    git::git(
        dir,
        &[
            "restore",
            "--source=HEAD",
            "--staged",
            "--worktree",
            "--",
            &spec,
            &run_dir,
        ],
    )
    .map(|_| ())
}

/// Finishes an apply a kill interrupted (its journal is still there; the caller holds the
/// work-tree lock, so its writer is gone): when the branch moved, the experiment's files are
/// brought to HEAD — the apply had checked they had no uncommitted changes, and a file the user
/// changed since (it no longer matches the tip before the apply) is left as it is. Returns a
/// line for the user when it did something.
pub fn recover(repo: &Repository) -> Result<Option<String>, GitError> {
    let Some(journal) = git::read_journal::<ApplyJournal>(&ApplyJournal::path(repo)) else {
        return Ok(None);
    };
    let head = repo
        .head()
        .ok()
        .and_then(|h| h.target())
        .map(|o| o.to_string());
    if head.as_deref() == Some(journal.before.as_str()) {
        // Killed before the branch moved: nothing changed.
        ApplyJournal::remove(repo);
        return Ok(None);
    }
    let dir = git::workdir(repo).to_path_buf();
    // Only files still as they were before the apply are brought along.
    let before = Oid::from_str(&journal.before)
        .ok()
        .and_then(|o| repo.find_commit(o).ok())
        .and_then(|c| c.tree().ok());
    let untouched = |rel: &str| -> bool {
        let at_before = before
            .as_ref()
            .and_then(|t| t.get_path(std::path::Path::new(rel)).ok())
            .and_then(|e| repo.find_blob(e.id()).ok())
            .map(|b| b.content().to_vec());
        let now = std::fs::read(dir.join(rel)).ok();
        at_before == now
    };
    if !untouched(&layout::spec_path(&journal.experiment)) {
        ApplyJournal::remove(repo);
        return Ok(Some(format!(
            "an earlier exp apply of {} was killed after its commit; {} was changed since, so the experiment's files were left as they are (`git restore --source=HEAD --staged --worktree experiments/{}*` brings them to the tip)",
            journal.experiment,
            layout::spec_path(&journal.experiment),
            journal.experiment
        )));
    }
    restore_from_head(&dir, &journal.experiment)?;
    ApplyJournal::remove(repo);
    Ok(Some(format!(
        "an earlier exp apply of {} was killed after its commit: its files are now those of the tip",
        journal.experiment
    )))
}
