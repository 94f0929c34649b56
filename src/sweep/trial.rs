//! One trial of a sweep (`exp sweep trial ID INDEX`, what the executors run): a headless run of
//! the sweep's spec snapshot with the trial's values written in, recorded on the sweep's branch
//! unless the branch already holds the trial's id.

use std::collections::BTreeMap;
use std::path::PathBuf;

use git2::Repository;

use super::state::{ProcessState, SweepDir, SweepFile, TrialEntry, TrialState};
use super::{plan, recorded_below, SweepError};
use crate::record::SweepRecord;
use crate::run::{run_headless, HeadlessOptions, HeadlessOutcome, RunError};
use crate::train::{StopFlag, TrainError, TrainObserver};

/// The spec text trial `entry` of `sweep` runs and commits: the snapshot with the sweep's
/// `--set` values and the trial's values written in, so that `exp run` on its commit
/// reproduces it.
pub fn trial_spec(sweep: &SweepFile, entry: &TrialEntry) -> Result<String, SweepError> {
    let mut values: BTreeMap<String, toml::Value> = BTreeMap::new();
    for arg in &sweep.overrides {
        let (key, value) = crate::spec::override_value(arg)?;
        values.insert(key, value);
    }
    values.extend(entry.values.clone());
    let values: Vec<(String, toml::Value)> = values.into_iter().collect();
    plan::write_values(&sweep.spec_text, &values).map_err(|message| SweepError::Definition {
        origin: sweep.spec_path.clone(),
        key: "sweep".into(),
        message,
    })
}

/// Runs trial `index` of sweep `id`, keeping its state file up to date.
pub fn run_trial(
    repo: &Repository,
    id: &str,
    index: usize,
    stop: &StopFlag,
    progress: &mut dyn TrainObserver,
) -> Result<HeadlessOutcome, SweepError> {
    let dir = SweepDir::new(repo.commondir(), id);
    let sweep = dir.read()?;
    let entry = sweep
        .trials
        .iter()
        .find(|t| t.index == index)
        .cloned()
        .ok_or_else(|| SweepError::NoSuchTrial {
            sweep: id.to_string(),
            index,
            trials: sweep.trials.len(),
        })?;
    let slurm_job = match (
        std::env::var("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_ARRAY_TASK_ID"),
    ) {
        (Ok(job), Ok(task)) => Some(format!("{job}_{task}")),
        _ => None,
    };
    let mut state = TrialState {
        state: ProcessState::Running,
        pid: std::process::id(),
        host: super::state::host_name(),
        slurm_job,
        // Milliseconds: the orchestration overhead per trial is measured from these.
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ended: None,
        exit_code: None,
        message: None,
    };
    dir.write_state(index, &state)?;
    let result = trial_spec(&sweep, &entry).and_then(|spec_text| {
        let already = |repo: &Repository, tip| {
            let recorded =
                recorded_below(repo, tip, &sweep).map_err(|e| crate::git::GitError::Command {
                    command: "log (the sweep's branch)".into(),
                    stderr: e.to_string(),
                })?;
            Ok(recorded.get(&entry.id).copied())
        };
        let options = HeadlessOptions {
            experiment: sweep.experiment.clone(),
            spec_path: PathBuf::from(&sweep.spec_path),
            spec_text,
            data_root: PathBuf::from(&sweep.data_root),
            branch: sweep.branch.clone(),
            sweep: Some(SweepRecord {
                id: sweep.id.clone(),
                trial: entry.index,
                trial_id: entry.id.clone(),
                values: entry.values.clone(),
            }),
            already: &already,
        };
        run_headless(repo, &options, stop, progress).map_err(SweepError::from)
    });
    state.ended = Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    match &result {
        Ok(_) => {
            state.state = ProcessState::Completed;
            state.exit_code = Some(0);
        }
        Err(SweepError::Run(e))
            if matches!(e.as_ref(), RunError::Train(TrainError::Interrupted(_))) =>
        {
            state.state = ProcessState::Cancelled;
            state.message = Some(e.to_string());
        }
        Err(e) => {
            state.state = ProcessState::Failed;
            state.message = Some(e.to_string());
        }
    }
    // The record (or its absence) is what counts; a state file that cannot be written only
    // makes `status` less precise.
    let _ = dir.write_state(index, &state);
    result
}
