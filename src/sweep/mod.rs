//! `exp sweep` (docs/design.md §5): many runs of one experiment — a grid, random samples and
//! seeds from `[sweep]` — each an ordinary run, trained headless (no work tree, index or HEAD)
//! and appended to the sweep's own feature branch `feature/sweep-<experiment>-<id>`.
//!
//! `plan.rs` expands the trials, `state.rs` keeps the local state; this file starts a sweep and
//! reads what Git holds of it.

pub mod local;
pub mod plan;
pub mod slurm;
pub mod state;
pub mod summary;
pub mod trial;

use std::collections::BTreeMap;
use std::path::Path;

use git2::{Oid, Repository};

use crate::compare::parse_record_bytes;
use crate::record::layout;
use crate::spec::sweep::SweepSpec;
use crate::spec::{ResolvedSpec, SpecError};
use plan::{Trial, TrialError};
use state::{StateError, SweepDir, SweepFile, TrialEntry};

/// The words after `exp sweep` that are subcommands, so never experiment names.
pub use crate::spec::RESERVED_NAMES as SUBCOMMANDS;

/// Why a sweep cannot start or be read.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The spec (or a command-line `--set`) is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A trial's values are invalid.
    #[error(transparent)]
    Trial(#[from] TrialError),
    /// The `[sweep]` table or a sweep flag is invalid.
    #[error("{origin}: {key} {message}")]
    Definition {
        /// Where it came from (the spec file or the flag).
        origin: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No `[sweep]` table and no sweep flags.
    #[error("{0} has no [sweep] table, and no --grid, --random or --seeds was given")]
    NothingToSweep(String),
    /// The experiment name is one of the subcommand words.
    #[error("{0:?} is a subcommand of exp sweep, so it cannot be an experiment name")]
    ReservedName(String),
    /// Local state.
    #[error(transparent)]
    State(#[from] StateError),
    /// Git.
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    /// The data root.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A trial's run failed.
    #[error(transparent)]
    Run(Box<crate::run::RunError>),
    /// The sweep has no such trial.
    #[error("sweep {sweep} has no trial {index} (it has {trials}, from 0)")]
    NoSuchTrial {
        /// The sweep.
        sweep: String,
        /// As given.
        index: usize,
        /// How many it has.
        trials: usize,
    },
    /// No recorded trial to pick from.
    #[error("sweep {0} has no recorded trial yet")]
    NothingRecorded(String),
    /// The trial to pick has no record.
    #[error("trial {index} of sweep {sweep} is {state}, not recorded")]
    NotRecorded {
        /// The sweep.
        sweep: String,
        /// The trial.
        index: usize,
        /// Its state.
        state: String,
    },
    /// The Slurm executor failed.
    #[error(transparent)]
    Slurm(#[from] slurm::SlurmError),
}

impl From<crate::run::RunError> for SweepError {
    fn from(e: crate::run::RunError) -> SweepError {
        SweepError::Run(Box::new(e))
    }
}

impl SweepError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SweepError::Spec(e) => e.hint(),
            SweepError::Trial(e) => e.source.hint(),
            SweepError::Definition { .. } | SweepError::NothingToSweep(_) => Some(
                "e.g. [sweep] grid = { \"train.lr\" = [1e-3, 3e-3] }, seeds = [1, 2]; or --grid 'train.lr=[1e-3, 3e-3]' --seeds '[1, 2]'".into(),
            ),
            SweepError::ReservedName(_) => Some("rename the experiment".into()),
            SweepError::State(StateError::Unknown(_)) => {
                Some("`exp sweep status` lists the sweeps of this repository".into())
            }
            SweepError::State(_) => None,
            SweepError::Git(e) => e.hint(),
            SweepError::Data(e) => e.hint(),
            SweepError::Run(e) => e.hint(),
            SweepError::NothingRecorded(id) | SweepError::NotRecorded { sweep: id, .. } => {
                Some(format!("`exp sweep status {id}` shows the trials; `exp sweep resume {id}` runs the missing ones"))
            }
            SweepError::NoSuchTrial { .. } => {
                Some("`exp sweep status ID` lists the trials".into())
            }
            SweepError::Slurm(_) => Some(
                "is Slurm reachable here (sinfo, SLURM_CONF)? scripts/slurm.sh starts a single-node cluster".into(),
            ),
        }
    }
}

/// The sweep flags of the command line; any of them replaces the spec's `[sweep]` table
/// (grid, random, samples, seeds), `[sweep.slurm]` excepted.
#[derive(Debug, Clone, Default)]
pub struct SweepFlags {
    /// `--grid KEY=[VALUES]`, repeatable.
    pub grid: Vec<String>,
    /// `--random KEY={ uniform = [a, b] }`, repeatable.
    pub random: Vec<String>,
    /// `--samples N`.
    pub samples: Option<usize>,
    /// `--seeds [1, 2, 3]`.
    pub seeds: Option<String>,
}

impl SweepFlags {
    fn any(&self) -> bool {
        !self.grid.is_empty()
            || !self.random.is_empty()
            || self.samples.is_some()
            || self.seeds.is_some()
    }

    /// The table the flags describe (`[sweep.slurm]` from `base`).
    fn table(&self, base: Option<&SweepSpec>) -> Result<SweepSpec, SweepError> {
        let bad = |flag: &str, arg: &str, message: String| SweepError::Definition {
            origin: format!("{flag} {arg}"),
            key: flag.trim_start_matches('-').to_string(),
            message,
        };
        let value = |flag: &str, arg: &str, text: &str| -> Result<toml::Value, SweepError> {
            toml::from_str::<toml::Table>(&format!("v = {text}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .ok_or_else(|| bad(flag, arg, format!("{text:?} is not a TOML value")))
        };
        let split = |flag: &str, arg: &str| -> Result<(String, toml::Value), SweepError> {
            let (key, text) = arg
                .split_once('=')
                .ok_or_else(|| bad(flag, arg, "expected KEY=VALUE".into()))?;
            Ok((key.trim().to_string(), value(flag, arg, text)?))
        };
        let mut table = toml::Table::new();
        let mut grid = toml::Table::new();
        for arg in &self.grid {
            let (key, v) = split("--grid", arg)?;
            grid.insert(key, v);
        }
        let mut random = toml::Table::new();
        for arg in &self.random {
            let (key, v) = split("--random", arg)?;
            random.insert(key, v);
        }
        table.insert("grid".into(), toml::Value::Table(grid));
        table.insert("random".into(), toml::Value::Table(random));
        if let Some(n) = self.samples {
            table.insert("samples".into(), toml::Value::Integer(n as i64));
        }
        if let Some(seeds) = &self.seeds {
            table.insert("seeds".into(), value("--seeds", seeds, seeds)?);
        }
        let mut spec: SweepSpec =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| SweepError::Definition {
                    origin: "the sweep flags".into(),
                    key: "sweep".into(),
                    message: e.message().trim().to_string(),
                })?;
        spec.slurm = base.map(|b| b.slurm.clone()).unwrap_or_default();
        Ok(spec)
    }
}

/// A sweep planned from a spec file: its table, its trials, each trial's resolved spec.
#[derive(Debug)]
pub struct Planned {
    /// The `[sweep]` table in force (the spec's, or the flags').
    pub table: SweepSpec,
    /// Every trial.
    pub trials: Vec<Trial>,
    /// Each trial's resolved spec, in trial order.
    pub resolved: Vec<ResolvedSpec>,
}

/// Plans the sweep of the spec `text` (file `path`): the table from `flags` or the spec, the
/// trials expanded, every trial resolved with `overrides` and its values against the schema.
pub fn plan(
    path: &Path,
    text: &str,
    overrides: &[String],
    flags: &SweepFlags,
) -> Result<Planned, SweepError> {
    let base = crate::spec::parse(path, text, overrides)?;
    let table = if flags.any() {
        let table = flags.table(base.spec.sweep.as_ref())?;
        table
            .check()
            .map_err(|(key, message)| SweepError::Definition {
                origin: "the sweep flags".into(),
                key,
                message,
            })?;
        table
    } else {
        base.spec
            .sweep
            .clone()
            .ok_or_else(|| SweepError::NothingToSweep(path.display().to_string()))?
    };
    let trials = plan::expand(&table, base.spec.train.seed);
    let resolved = plan::resolve_all(path, text, overrides, &trials)?;
    Ok(Planned {
        table,
        trials,
        resolved,
    })
}

/// A new sweep id: seven hex digits of BLAKE3 over what makes this invocation unique.
pub fn new_sweep_id(experiment: &str, text: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"exp-sweep-id-v1\0");
    h.update(experiment.as_bytes());
    h.update(b"\0");
    h.update(text.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&rand::random::<u64>().to_le_bytes());
    h.finalize().to_hex()[..7].to_string()
}

/// The branch of sweep `id` of `experiment`.
pub fn branch_name(experiment: &str, id: &str) -> String {
    format!("feature/sweep-{experiment}-{id}")
}

/// Where a sweep started on `current` forks from: develop (else main) when started on an
/// integration branch (Git Flow), else the current commit.
pub fn fork_point(repo: &Repository) -> Result<Oid, SweepError> {
    let (current, head) = crate::git::current_branch(repo)?;
    if !crate::git::is_integration_branch(&current) {
        return Ok(head);
    }
    for base in ["develop", "main"] {
        if let Ok(id) = repo.refname_to_id(&format!("refs/heads/{base}")) {
            return Ok(id);
        }
    }
    Ok(head)
}

/// Trial ids recorded on the sweep's branch, with their commit: Git is the truth for completed
/// trials. Walks the branch's first-parent history down to the fork commit.
pub fn recorded_trials(
    repo: &Repository,
    sweep: &SweepFile,
) -> Result<BTreeMap<String, Oid>, SweepError> {
    let tip = match repo.refname_to_id(&format!("refs/heads/{}", sweep.branch)) {
        Ok(tip) => tip,
        Err(_) => return Ok(BTreeMap::new()),
    };
    recorded_below(repo, tip, sweep)
}

/// [`recorded_trials`] from commit `tip`.
pub fn recorded_below(
    repo: &Repository,
    tip: Oid,
    sweep: &SweepFile,
) -> Result<BTreeMap<String, Oid>, SweepError> {
    let git = |e: git2::Error| crate::git::ctx("reading the sweep's branch")(e);
    let mut walk = repo.revwalk().map_err(git)?;
    walk.push(tip).map_err(git)?;
    walk.simplify_first_parent().map_err(git)?;
    if let Ok(fork) = Oid::from_str(&sweep.fork) {
        let _ = walk.hide(fork);
    }
    let record_path = layout::run_file(&sweep.experiment, layout::RECORD_FILE);
    let run_prefix = crate::git::run_subject(&sweep.experiment);
    let mut out = BTreeMap::new();
    for oid in walk {
        let oid = oid.map_err(git)?;
        let commit = repo.find_commit(oid).map_err(git)?;
        // Run commits only: a pick carries a trial's record too, but records no trial.
        if !commit.message_bytes().starts_with(run_prefix.as_bytes()) {
            continue;
        }
        let Ok(entry) = commit
            .tree()
            .map_err(git)?
            .get_path(Path::new(&record_path))
        else {
            continue;
        };
        let Ok(blob) = repo.find_blob(entry.id()) else {
            continue;
        };
        // A record that does not parse is not a trial of this sweep (status says so elsewhere).
        if let Ok(record) = parse_record_bytes(blob.content(), &oid.to_string(), &sweep.experiment)
        {
            if let Some(s) = record.sweep.filter(|s| s.id == sweep.id) {
                out.entry(s.trial_id).or_insert(oid);
            }
        }
    }
    Ok(out)
}

/// Creates sweep `id`'s branch and definition: the trials of `planned` on `experiment`,
/// forked from `fork`.
#[allow(clippy::too_many_arguments)]
pub fn create(
    repo: &Repository,
    id: &str,
    experiment: &str,
    spec_text: &str,
    overrides: &[String],
    planned: &Planned,
    fork: Oid,
    executor: &str,
    jobs: usize,
    gpus: &[u32],
    data_root: &Path,
) -> Result<SweepFile, SweepError> {
    if SUBCOMMANDS.contains(&experiment) {
        return Err(SweepError::ReservedName(experiment.to_string()));
    }
    let branch = branch_name(experiment, id);
    let commit = repo
        .find_commit(fork)
        .map_err(crate::git::ctx("reading the fork commit"))?;
    repo.branch(&branch, &commit, false)
        .map_err(crate::git::ctx(format!("creating {branch}")))?;
    let sweep = SweepFile {
        id: id.to_string(),
        experiment: experiment.to_string(),
        branch,
        fork: fork.to_string(),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        spec_path: layout::spec_path(experiment),
        spec_text: spec_text.to_string(),
        overrides: overrides.to_vec(),
        data_root: data_root.display().to_string(),
        executor: executor.to_string(),
        jobs,
        gpus: gpus.to_vec(),
        slurm_jobs: Vec::new(),
        trials: planned
            .trials
            .iter()
            .map(|t| TrialEntry {
                index: t.index,
                id: t.id(id),
                values: t.values.iter().cloned().collect(),
            })
            .collect(),
    };
    SweepDir::new(repo.commondir(), id).write(&sweep)?;
    Ok(sweep)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "[model]\nname = \"mlp\"\n\n[data]\nformat = \"idx\"\ntrain_images = \"mnist/train-images-idx3-ubyte.gz\"\ntrain_labels = \"mnist/train-labels-idx1-ubyte.gz\"\ntest_images = \"mnist/t10k-images-idx3-ubyte.gz\"\ntest_labels = \"mnist/t10k-labels-idx1-ubyte.gz\"\n";

    #[test]
    fn flags_replace_the_table_and_every_trial_is_checked() {
        let path = Path::new("experiments/x.toml");
        let text = format!("{SPEC}\n[sweep]\nseeds = [1, 2]\n[sweep.slurm]\npartition = \"gpu\"\n");
        let p = plan(path, &text, &[], &SweepFlags::default()).unwrap();
        assert_eq!(p.trials.len(), 2);
        assert_eq!(p.resolved[1].spec.train.seed, 2);
        let flags = SweepFlags {
            grid: vec!["train.lr=[0.1, 0.2, 0.3]".into()],
            ..Default::default()
        };
        let p = plan(path, &text, &["train.epochs=2".into()], &flags).unwrap();
        assert_eq!(p.trials.len(), 3, "the flags replace the spec's seeds");
        assert_eq!(p.table.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(p.resolved[2].spec.train.lr, 0.3);
        assert_eq!(p.resolved[2].spec.train.epochs, 2);
        // A value the schema refuses names the trial.
        let flags = SweepFlags {
            grid: vec!["train.lr=[0.1, -1.0]".into()],
            ..Default::default()
        };
        let e = plan(path, &text, &[], &flags).unwrap_err().to_string();
        assert!(e.starts_with("trial 1 (train.lr=-1.0): "), "{e}");
        let flags = SweepFlags {
            grid: vec!["train.lr".into()],
            ..Default::default()
        };
        let e = plan(path, &text, &[], &flags).unwrap_err().to_string();
        assert_eq!(e, "--grid train.lr: grid expected KEY=VALUE");
        let e = plan(path, SPEC, &[], &SweepFlags::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no [sweep] table"), "{e}");
        assert_ne!(new_sweep_id("x", SPEC), new_sweep_id("x", SPEC));
        assert_eq!(new_sweep_id("x", SPEC).len(), 7);
    }
}

pub use crate::git::PICK_PREFIX;

/// Which trial `exp sweep pick` takes.
#[derive(Debug, Clone)]
pub enum Choice {
    /// By index.
    Trial(usize),
    /// The recorded trial best on this known metric.
    Best(String),
}

/// What `pick` did.
#[derive(Debug, Clone)]
pub struct Picked {
    /// The trial.
    pub trial: TrialStatus,
    /// The pick's commit, or None when the tip already held that trial.
    pub commit: Option<Oid>,
}

/// Puts the chosen trial's record and weights at the sweep branch's tip (one commit), so that
/// `exp flow finish` gates that model.
pub fn pick(repo: &Repository, sweep: &SweepFile, choice: &Choice) -> Result<Picked, SweepError> {
    let statuses = status(repo, sweep)?;
    let completed: Vec<&TrialStatus> = statuses
        .iter()
        .filter(|s| s.state == TrialPhase::Completed)
        .collect();
    let trial = match choice {
        Choice::Trial(index) => {
            statuses
                .iter()
                .find(|s| s.index == *index)
                .ok_or_else(|| SweepError::NoSuchTrial {
                    sweep: sweep.id.clone(),
                    index: *index,
                    trials: sweep.trials.len(),
                })?
        }
        Choice::Best(metric) => {
            let known = crate::metric::known(metric).ok_or_else(|| SweepError::Definition {
                origin: "--best".into(),
                key: metric.clone(),
                message: format!(
                    "is not a metric exp knows ({})",
                    crate::metric::known_names()
                ),
            })?;
            completed
                .iter()
                .filter(|s| s.metrics.contains_key(metric))
                .max_by(|a, b| {
                    let (x, y) = (a.metrics[metric], b.metrics[metric]);
                    match known.direction {
                        crate::metric::Direction::Max => x.total_cmp(&y),
                        crate::metric::Direction::Min => y.total_cmp(&x),
                    }
                    // Ties: the lower index wins.
                    .then(b.index.cmp(&a.index))
                })
                .copied()
                .ok_or_else(|| SweepError::NothingRecorded(sweep.id.clone()))?
        }
    };
    let Some(commit) = trial.commit.as_deref().and_then(|c| Oid::from_str(c).ok()) else {
        return Err(SweepError::NotRecorded {
            sweep: sweep.id.clone(),
            index: trial.index,
            state: trial.state.as_str().to_string(),
        });
    };
    let message = format!(
        "{PICK_PREFIX} {}: trial {} ({})\n\nthe record and weights of {} at the branch tip\n",
        sweep.id,
        trial.index,
        trial
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        trial.tag.as_deref().unwrap_or(&commit.to_string())
    );
    let signature = crate::git::signature(repo)?;
    let picked = crate::git::append::apply_run(
        repo,
        &sweep.branch,
        &sweep.experiment,
        commit,
        &message,
        &signature,
    )?;
    Ok(Picked {
        trial: trial.clone(),
        commit: picked,
    })
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialPhase {
    /// Not started (or queued by Slurm).
    Pending,
    /// Training or committing.
    Running,
    /// Recorded on the sweep's branch.
    Completed,
    /// Ended without a record.
    Failed,
    /// Stopped by a signal or `scancel`.
    Cancelled,
}

impl TrialPhase {
    /// As `status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialPhase::Pending => "pending",
            TrialPhase::Running => "running",
            TrialPhase::Completed => "completed",
            TrialPhase::Failed => "failed",
            TrialPhase::Cancelled => "cancelled",
        }
    }
}

/// One trial's status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrialStatus {
    /// Index.
    pub index: usize,
    /// Trial id.
    pub id: String,
    /// Swept values.
    pub values: BTreeMap<String, toml::Value>,
    /// Where it stands.
    pub state: TrialPhase,
    /// The run commit, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Its run tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The recorded metrics.
    pub metrics: BTreeMap<String, f64>,
    /// The Slurm task, when Slurm runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
    /// The trial's log.
    pub log: String,
    /// Why it failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Every trial's status, from Git (completed trials), the scheduler (pending and running Slurm
/// tasks) and the trials' own state files. A recorded trial whose commit has no run tag yet (a
/// crash between the commit and the tag) is tagged now.
pub fn status(repo: &Repository, sweep: &SweepFile) -> Result<Vec<TrialStatus>, SweepError> {
    let dir = SweepDir::new(repo.commondir(), &sweep.id);
    // The scheduler and the state files first, Git last: a trial records before its process
    // ends, so one that ended by the time it was asked about is recorded by the time Git is read.
    let tasks = if sweep.executor == "slurm" && !sweep.slurm_jobs.is_empty() {
        slurm::query(&sweep.slurm_jobs)?
    } else {
        BTreeMap::new()
    };
    let processes: BTreeMap<usize, state::TrialState> = sweep
        .trials
        .iter()
        .filter_map(|t| Some((t.index, dir.read_state(t.index)?)))
        .collect();
    let recorded = recorded_trials(repo, sweep)?;
    let here = state::host_name();
    let mut out = Vec::new();
    for entry in &sweep.trials {
        let process = processes.get(&entry.index).cloned();
        let mut status = TrialStatus {
            index: entry.index,
            id: entry.id.clone(),
            values: entry.values.clone(),
            state: TrialPhase::Pending,
            commit: None,
            tag: None,
            metrics: BTreeMap::new(),
            slurm_job: tasks
                .get(&entry.index)
                .map(|t| t.job.clone())
                .or_else(|| process.as_ref().and_then(|p| p.slurm_job.clone())),
            log: dir.log(entry.index).display().to_string(),
            message: None,
        };
        if let Some(&commit) = recorded.get(&entry.id) {
            status.state = TrialPhase::Completed;
            status.commit = Some(commit.to_string());
            status.tag = Some(ensure_tag(repo, sweep, commit)?);
            status.metrics = record_at(repo, commit, &sweep.experiment)
                .map(|r| r.metrics.values)
                .unwrap_or_default();
        } else if let Some(task) = tasks.get(&entry.index) {
            status.state = match task.state.as_str() {
                "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD"
                | "SUSPENDED" => TrialPhase::Pending,
                "RUNNING" | "CONFIGURING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => {
                    TrialPhase::Running
                }
                "CANCELLED" => TrialPhase::Cancelled,
                "COMPLETED" => TrialPhase::Failed,
                _ => TrialPhase::Failed,
            };
            if status.state == TrialPhase::Failed {
                status.message = Some(format!(
                    "Slurm task {} ended {} without a record (see its log)",
                    task.job, task.state
                ));
            }
        } else if let Some(p) = &process {
            status.state = match p.state {
                state::ProcessState::Running
                    if p.host == here && !crate::git::lock::process_alive(p.pid) =>
                {
                    status.message = Some(format!(
                        "process {} on {} ended without a record (killed?)",
                        p.pid, p.host
                    ));
                    TrialPhase::Failed
                }
                state::ProcessState::Running => TrialPhase::Running,
                state::ProcessState::Cancelled => TrialPhase::Cancelled,
                state::ProcessState::Failed | state::ProcessState::Completed => TrialPhase::Failed,
            };
            if status.message.is_none() && status.state != TrialPhase::Running {
                status.message = p.message.clone();
            }
        } else if sweep.executor == "slurm" && !sweep.slurm_jobs.is_empty() {
            // Submitted, never started, and the scheduler no longer knows it: a pending task
            // that was cancelled (scancel removes it from the array without a trace).
            status.state = TrialPhase::Cancelled;
            status.message = Some("left the Slurm queue without starting (scancel?)".into());
        }
        out.push(status);
    }
    Ok(out)
}

fn record_at(repo: &Repository, commit: Oid, experiment: &str) -> Option<crate::record::RunRecord> {
    let tree = repo.find_commit(commit).ok()?.tree().ok()?;
    let entry = tree
        .get_path(Path::new(&layout::run_file(
            experiment,
            layout::RECORD_FILE,
        )))
        .ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    parse_record_bytes(blob.content(), &commit.to_string(), experiment).ok()
}

/// The run tag of a trial's commit, created now when a crash left it untagged.
fn ensure_tag(repo: &Repository, sweep: &SweepFile, commit: Oid) -> Result<String, SweepError> {
    let prefix = crate::git::run_tag_prefix(&sweep.branch, &sweep.experiment);
    let names = repo
        .tag_names(Some(&format!("{prefix}*")))
        .map_err(crate::git::ctx("listing tags"))?;
    for name in names.iter().flatten() {
        let target = repo
            .revparse_single(&format!("refs/tags/{name}"))
            .and_then(|o| o.peel_to_commit());
        if target.map(|c| c.id()) == Ok(commit) {
            return Ok(name.to_string());
        }
    }
    let record = record_at(repo, commit, &sweep.experiment);
    let message = match &record {
        Some(r) => format!(
            "{} on {}: {}\n",
            sweep.experiment,
            sweep.branch,
            crate::run::headline(r)
        ),
        None => format!("{} on {}\n", sweep.experiment, sweep.branch),
    };
    let signature = crate::git::signature(repo)?;
    Ok(crate::git::append::tag_appended(
        repo,
        &sweep.branch,
        &sweep.experiment,
        commit,
        &message,
        &signature,
    )?)
}
