//! `exp run`: resolve the spec and the data, train, evaluate, and record the run as one commit
//! with a run tag, in the order docs/design.md §5 fixes: everything that can fail for the user's
//! reasons (spec, data, device, branch switch) is checked before training, and Git is touched
//! only after training succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::{data_root, Dataset, Split};
use crate::device::{DeviceError, DeviceRequest};
use crate::eval::{encode_predictions, Metrics};
use crate::git::{self, BranchPlan, CommitFile};
use crate::init_from;
use crate::lfs::LfsStore;
use crate::metric::KNOWN_METRICS;
use crate::model::Model;
use crate::record::layout::{self, HISTORY_FILE, PREDICTIONS_FILE, RECORD_FILE, WEIGHTS_FILE};
use crate::record::{
    self, DataRecord, EvalRecord, MetricMeta, MetricsTable, ModelRecord, RunInfo, RunRecord,
    SplitRecord, TrainingRecord,
};
use crate::spec::{self, Precision, ResolvedSpec};
use crate::train::{self, StopFlag, TrainObserver};

/// A failure of the run workflow itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing history.csv failed.
    #[error("cannot write history.csv: {0}")]
    Csv(#[from] csv::Error),
    /// The weights could not be serialised.
    #[error("cannot serialise the weights: {0}")]
    Safetensors(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A data set could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The committed dataset the spec names cannot be used.
    #[error(transparent)]
    Dataset(Box<crate::dataset::DatasetError>),
    /// The device cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Training failed or was interrupted.
    #[error(transparent)]
    Train(#[from] train::TrainError),
    /// The weights could not be stored.
    #[error(transparent)]
    Lfs(#[from] crate::lfs::LfsError),
    /// Committing or tagging failed.
    #[error(transparent)]
    Git(#[from] git::GitError),
    /// The record could not be written.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// `init.from` names weights that cannot start this run.
    #[error(transparent)]
    InitFrom(#[from] crate::init_from::InitFromError),
    /// Another exp command holds the work tree.
    #[error(transparent)]
    Lock(#[from] git::lock::LockError),
    /// exp would write through a symlink.
    #[error("{path} is a symbolic link (to {target}); exp writes a run's outputs there and never writes through a link")]
    Symlink {
        /// The link, relative to the work tree.
        path: String,
        /// Where it points.
        target: String,
    },
    /// The run is committed, but what should follow the commit failed.
    #[error("the run is committed as {commit}, but {what}: {source}")]
    AfterCommit {
        /// The run commit.
        commit: String,
        /// What failed.
        what: &'static str,
        /// Why.
        source: git::GitError,
    },
    /// A headless run's branch is checked out in a work tree, which the append would leave
    /// stale.
    #[error("{branch} is checked out in {worktree}; a headless run appends to it without updating that work tree")]
    BranchCheckedOut {
        /// The branch.
        branch: String,
        /// The work tree.
        worktree: PathBuf,
    },
    /// The commit failed; the trained run is kept under a ref.
    #[error("{source}\n  the trained run is kept as {kept}")]
    Kept {
        /// The ref that holds the run's commit.
        kept: String,
        /// Why the commit failed.
        source: Box<RunError>,
    },
}

impl From<crate::dataset::DatasetError> for RunError {
    fn from(e: crate::dataset::DatasetError) -> RunError {
        RunError::Dataset(Box::new(e))
    }
}

impl RunError {
    /// What the user can do about the failures of the workflow itself; the wrapped errors of
    /// other modules carry their own hints (the top-level error unwraps them).
    pub fn hint(&self) -> Option<String> {
        match self {
            RunError::Write { .. } | RunError::Csv(_) => Some(
                "nothing was committed; check that the work tree is writable and the disk has space, then run again".into(),
            ),
            RunError::Safetensors(_) => Some(
                "nothing was committed; this is a bug in exp: please report it with the spec and `exp --version`".into(),
            ),
            RunError::Signals(_) => Some("nothing was trained; run again".into()),
            RunError::Lock(e) => e.hint(),
            RunError::Symlink { .. } => Some(
                "nothing was trained; replace the link by a directory (git rm the link, commit) and run again".into(),
            ),
            RunError::BranchCheckedOut { .. } => Some(
                "switch that work tree to another branch (git switch develop), then resume the sweep".into(),
            ),
            RunError::AfterCommit { .. } => Some(
                "nothing is lost: the next exp command (exp run, exp log, exp flow) tags the run commit".into(),
            ),
            RunError::Kept { kept, source } => Some(format!(
                "recover the run with `git switch -c feature/recovered {kept}` (or `git cherry-pick {kept}`); {}",
                source.hint().unwrap_or_else(|| "then fix what refused the commit".into())
            )),
            _ => None,
        }
    }
}

/// What `exp run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Experiment name (`experiments/<name>.toml`).
    pub experiment: String,
    /// `--set KEY=VALUE` overrides.
    pub overrides: Vec<String>,
    /// The directory exp was started in.
    pub cwd: PathBuf,
}

/// What a recorded run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run commit.
    pub commit: String,
    /// The run tag.
    pub tag: String,
    /// Where the run moved from, when it started on develop or main.
    pub switched_from: Option<String>,
    /// The record as committed.
    pub record: RunRecord,
    /// The per-operation time table, with `EXP_PROFILE_OPS=1`.
    pub op_profile: Option<String>,
    /// What this run put back that a killed exp command had left (one line each).
    pub recovered: Vec<String>,
}

/// Runs an experiment and records it.
pub fn run(
    options: &RunOptions,
    stop: &StopFlag,
    progress: &mut dyn TrainObserver,
) -> Result<RunSummary, RunError> {
    let started = Started::now();
    let repo = git::open(&options.cwd)?;
    let worktree = git::workdir(&repo).to_path_buf();
    git::current_branch(&repo)?;
    spec::check_name(&options.experiment)?;
    let lock = git::lock::lock_worktree(&repo, &format!("exp run {}", options.experiment))?;
    let recovered = recover_after_kill(&repo, &lock)?;
    let (current, parent_commit) = git::current_branch(&repo)?;
    // A run commit a kill left untagged gets its tag before this run takes the next number.
    git::append::tag_untagged_runs(&repo, &current)?;
    let resolved = spec::load(
        &layout::spec_file_in(&worktree, &options.experiment),
        &options.overrides,
    )?;
    let root = data_root(&options.cwd)?;
    let prepared = prepare(&repo, resolved, &options.experiment, &root, stop, progress)?;
    git::check_identity(&repo)?;
    let plan = git::plan_branch(&repo, &options.experiment, &prepared.run_id)?;
    // Everything that could refuse the commit or the tag, before training.
    git::check_can_record(&repo, plan.branch(), &options.experiment)?;
    check_no_symlinks(&worktree, &options.experiment)?;
    drop(LfsStore::for_repo(&repo).writer()?);
    stop.check()?;

    let trained = train_and_record(
        &repo,
        prepared,
        &options.experiment,
        plan.branch(),
        parent_commit,
        &started,
        stop,
        progress,
    )?;

    // From here on the run is complete: signals no longer abort it, so that a commit is
    // never left half made.
    let undo = match git::switch_for_run(&repo, &plan, &options.experiment) {
        Ok(undo) => undo,
        // Nothing of the run is in the work tree yet: keep it where nothing can take it away.
        Err(e) => {
            let spec_bytes = trained.resolved.text().as_bytes().to_vec();
            let mut trained = trained;
            return Err(
                match run_files(&options.experiment, spec_bytes, &mut trained, &started) {
                    Ok(files) => {
                        keep_trained(&repo, &options.experiment, &trained, &files, e.into())
                    }
                    Err(_) => e.into(),
                },
            );
        }
    };
    let result = write_and_commit(&repo, &worktree, &options.experiment, trained, &started);
    match result {
        Ok(summary) => {
            if let Some(undo) = undo {
                undo.complete(&repo);
            }
            Ok(RunSummary {
                switched_from: match &plan {
                    BranchPlan::NewFeature { from, .. } => Some(from.clone()),
                    BranchPlan::Stay { .. } => None,
                },
                recovered,
                ..summary
            })
        }
        // Committed: nothing to undo (the branch holds the run).
        Err(e @ RunError::AfterCommit { .. }) => {
            if let Some(undo) = undo {
                undo.complete(&repo);
            }
            Err(e)
        }
        Err(e) => {
            restore_outputs(&worktree, &options.experiment);
            if let Some(undo) = undo {
                undo.undo(&repo);
            }
            Err(e)
        }
    }
}

/// Puts back what an exp command killed in the work tree left there, now that this one holds
/// the work-tree lock (so the killed one is gone): Git's lock files it left (only those newer
/// than its start), the outputs a killed `exp run` wrote and never committed, and a branch
/// switch it made and never committed on (`git::recover_interrupted_switch`). Returns a line
/// for the user per thing put back.
pub fn recover_after_kill(
    repo: &git2::Repository,
    lock: &git::lock::WorktreeLock,
) -> Result<Vec<String>, RunError> {
    let worktree = git::workdir(repo).to_path_buf();
    let mut notes = Vec::new();
    if let Ok((current, _)) = git::current_branch(repo) {
        lock.clear_dead_git_locks(repo, &current);
    }
    // An exp run killed in its commit phase may have left outputs it wrote (and never
    // committed) in its experiment's directory: exp's own files, put back as HEAD has them.
    if let Some(killed) = lock
        .replaced
        .as_ref()
        .and_then(|r| r.command.strip_prefix("exp run "))
    {
        if spec::check_name(killed).is_ok() {
            restore_outputs(&worktree, killed);
        }
    }
    if let Some(note) = crate::apply::recover(repo)? {
        notes.push(note);
    }
    if let Some(switch) = git::recover_interrupted_switch(repo)? {
        notes.push(if switch.start_gone && !switch.kept {
            format!(
                "an earlier exp run of {} was killed before committing on {}; the branch it started on, {}, no longer exists, so nothing was switched back",
                switch.experiment, switch.branch, switch.from
            )
        } else if switch.kept {
            format!(
                "an earlier exp run of {} was killed after committing on {}: kept",
                switch.experiment, switch.branch
            )
        } else {
            format!(
                "an earlier exp run of {} was killed before committing on {}: switched back to {} and removed the empty branch",
                switch.experiment, switch.branch, switch.from
            )
        });
    }
    Ok(notes)
}

/// exp writes `experiments/<name>/` and its files: none of them may be a symbolic link (a
/// committed link could point anywhere, `.git` included).
fn check_no_symlinks(worktree: &Path, experiment: &str) -> Result<(), RunError> {
    let dir = layout::run_dir(experiment);
    let mut paths = vec![layout::EXPERIMENTS_DIR.to_string(), dir.clone()];
    paths.extend(
        layout::RUN_FILES
            .iter()
            .map(|f| layout::run_file(experiment, f)),
    );
    for rel in paths {
        let path = worktree.join(&rel);
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                return Err(RunError::Symlink { path: rel, target });
            }
        }
    }
    Ok(())
}

/// When a run started: the record's start time and the clock of its wall seconds.
pub struct Started {
    at: chrono::DateTime<chrono::Utc>,
    clock: Instant,
}

impl Started {
    /// Now.
    pub fn now() -> Started {
        Started {
            at: chrono::Utc::now(),
            clock: Instant::now(),
        }
    }
}

/// What a run has read and decided before training: the spec, the device, the parent's
/// weights, the data and the run id.
pub struct Prepared {
    resolved: ResolvedSpec,
    opened: crate::device::OpenedDevice,
    parent: Option<init_from::Parent>,
    data: Dataset,
    dataset: Option<crate::record::DatasetRecord>,
    /// The run id (docs/design.md §4).
    pub run_id: String,
    load_seconds: f64,
}

/// Everything that can fail for the user's reasons before training, in the order of
/// docs/design.md §5: the device, the parent's weights, the data; then the run id.
pub fn prepare(
    repo: &git2::Repository,
    mut resolved: ResolvedSpec,
    experiment: &str,
    root: &Path,
    stop: &StopFlag,
    progress: &mut dyn TrainObserver,
) -> Result<Prepared, RunError> {
    let spec = &resolved.spec;
    let device_request = DeviceRequest::parse(&spec.train.device).map_err(|reason| DeviceError {
        requested: spec.train.device.clone(),
        reason,
    });
    let opened = device_request
        .and_then(|r| r.open(&spec.train.device))
        .map_err(train::TrainError::from)?;
    if opened.device.is_cpu() && spec.train.precision != Precision::F32 {
        // Refused here, before the data is read, rather than after it.
        return Err(train::TrainError::PrecisionNeedsCuda {
            precision: spec.train.precision.as_str().to_string(),
        }
        .into());
    }
    stop.check()?;

    // The parent's weights are read (and checked) before the data: a missing LFS object is
    // the user's to fix, and must not wait for the data to load.
    let parent = match spec.init.from.trim() {
        "" => None,
        from => Some(init_from::load_parent(
            repo,
            from,
            experiment,
            &opened.device,
        )?),
    };

    let loading = Instant::now();
    progress.loading_data(None);
    let cache = crate::git::cache_dir(repo);
    // A committed dataset is read from its folder in the work tree, after checking that the
    // folder is exactly its manifest: a run never trains on data it cannot name.
    let (dataset, data_spec, data_root) = if spec.data.dataset.is_empty() {
        (None, spec.data.clone(), root.to_path_buf())
    } else {
        let (load, worktree, used) = crate::dataset::resolve(repo, &spec.data)?;
        (Some(used), load, worktree)
    };
    let data = Dataset::load(
        &data_root,
        &data_spec,
        spec.train.seed,
        &|key| resolved.origin(key),
        Some(&cache),
    )?;
    let load_seconds = loading.elapsed().as_secs_f64();
    // What loading decided (an image folder's classes, a computed normalisation) goes into
    // the spec the record keeps, and so into the run id.
    data.resolve_spec(&mut resolved.spec.data);
    let spec = &resolved.spec;
    progress.loading_data(Some(train::DataLoaded {
        train: data.train.len,
        val: data.val.as_ref().map_or(0, |v| v.len),
        eval: data.test.len,
        seconds: load_seconds,
    }));
    // The parent's weights are an input like the data: `init.from = "develop"` names other
    // weights as develop moves.
    let split_ids: Vec<&str> = [Some(&data.train), data.val.as_ref(), Some(&data.test)]
        .into_iter()
        .flatten()
        .map(|s| s.blake3.as_str())
        .chain(parent.as_ref().map(|p| p.record.tensor_hash.as_str()))
        .collect();
    let run_id = record::run_id(spec, &split_ids, spec.train.seed)?;
    Ok(Prepared {
        resolved,
        opened,
        parent,
        data,
        dataset,
        run_id,
        load_seconds,
    })
}

/// A trained run: its record (wall seconds still to fill in), its weights in the LFS store and
/// what training produced.
pub struct Trained {
    resolved: ResolvedSpec,
    record: RunRecord,
    pointer: crate::lfs::LfsPointer,
    store: LfsStore,
    outcome: train::TrainOutcome,
}

/// Trains the prepared run, stores its weights in the LFS store and builds its record for
/// `branch` (the commit's parent is `parent_commit`).
#[allow(clippy::too_many_arguments)]
pub fn train_and_record(
    repo: &git2::Repository,
    prepared: Prepared,
    experiment: &str,
    branch: &str,
    parent_commit: git2::Oid,
    started: &Started,
    stop: &StopFlag,
    progress: &mut dyn TrainObserver,
) -> Result<Trained, RunError> {
    let Prepared {
        resolved,
        opened,
        mut parent,
        data,
        dataset,
        run_id,
        load_seconds,
    } = prepared;
    let spec = &resolved.spec;
    let device = opened.device.clone();
    let mut model = Model::new(
        &spec.model,
        data.shape,
        data.classes,
        spec.train.seed,
        &device,
    )
    .map_err(train::TrainError::from)?;
    if let Some(p) = parent.as_mut() {
        p.apply(&model, data.classes)?;
        let frozen = init_from::frozen_names(&model, &spec.init.freeze)?;
        p.record.frozen = frozen.iter().cloned().collect();
        model.freeze(frozen);
    }
    let outcome = train::train(&model, &data, &spec.train, &device, stop, progress)?;
    stop.check()?;

    // Weights into the LFS store before Git changes: the store is branch-independent.
    let tensors = model.params().tensors();
    let tensor_hash = record::tensor_hash(&tensors)?;
    let weights = serialize_weights(&tensors)?;
    let store = LfsStore::for_repo(repo);
    let pointer = store.insert(&weights[..])?;

    let metrics = Metrics::new(&outcome.evaluation, data.classes);
    let record = RunRecord {
        run: RunInfo {
            id: run_id,
            experiment: experiment.to_string(),
            branch: branch.to_string(),
            parent: parent_commit.to_string(),
            started: started
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            wall_seconds: 0.0,
            device: opened.description.clone(),
            gpu: opened.gpu.clone(),
            threads: candle_core::utils::get_num_threads(),
            cpu_ops: (opened.device.is_cpu() && crate::model::candle_cpu_ops_forced())
                .then(|| "candle".to_string()),
            exp_version: crate::VERSION.to_string(),
            candle_version: crate::CANDLE_VERSION.to_string(),
            seed: spec.train.seed,
            status: record::STATUS_COMPLETED.to_string(),
            overrides: resolved.overrides.clone(),
        },
        params: spec.clone(),
        data: DataRecord {
            dataset,
            train: split_record(&data.train, &data.train_files, data.classes),
            val: data
                .val
                .as_ref()
                .map(|v| split_record(v, &data.train_files, data.classes)),
            test: split_record(&data.test, &data.test_files, data.classes),
        },
        model: ModelRecord {
            architecture: model.name().as_str().to_string(),
            parameters: model.params().count(),
            weights: WEIGHTS_FILE.to_string(),
            oid: pointer.oid.to_string(),
            size: pointer.size,
            tensor_hash,
            input: Some([data.shape.channels, data.shape.height, data.shape.width]),
        },
        metrics: metrics_table(&metrics, &data.test),
        eval: EvalRecord {
            classes: data.classes,
            per_class_accuracy: metrics.per_class_accuracy.clone(),
            confusion: metrics.confusion.clone(),
            predictions: PREDICTIONS_FILE.to_string(),
        },
        // Bound in run_files, once the files' bytes exist.
        artifacts: BTreeMap::new(),
        training: TrainingRecord {
            epochs: outcome.history.len(),
            steps: outcome.steps,
            final_train_loss: outcome.history.last().map_or(f64::NAN, |h| h.train_loss),
            skipped_steps: outcome.skipped_steps,
            best_epoch: outcome.best_epoch,
            class_weights: outcome.class_weights.clone(),
            timing: record::Timing {
                load_seconds,
                ..outcome.timing.clone()
            },
        },
        init: parent.map(|p| p.record),
        sweep: None,
    };
    Ok(Trained {
        resolved,
        record,
        pointer,
        store,
        outcome,
    })
}

/// The files of a run's commit — the spec, the weights' pointer, the record (bound to its
/// artifacts, wall seconds filled in), the predictions and the history — and the record as
/// committed.
fn run_files(
    experiment: &str,
    spec_bytes: Vec<u8>,
    trained: &mut Trained,
    started: &Started,
) -> Result<Vec<CommitFile>, RunError> {
    let record = &mut trained.record;
    let predictions = encode_predictions(
        &trained.outcome.evaluation.labels,
        &trained.outcome.evaluation.predictions,
        record.eval.classes,
    );
    let history = record::encode_history(&trained.outcome.history)?;
    record.artifacts = [(PREDICTIONS_FILE, &predictions), (HISTORY_FILE, &history)]
        .into_iter()
        .map(|(file, bytes)| (file.to_string(), record::artifact_hash(bytes)))
        .collect();
    record.run.wall_seconds = (started.clock.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    let record_text = record.to_toml()?;
    Ok(vec![
        CommitFile {
            path: layout::spec_path(experiment),
            blob: spec_bytes,
        },
        CommitFile {
            path: layout::run_file(experiment, WEIGHTS_FILE),
            blob: trained.pointer.encode().into_bytes(),
        },
        CommitFile {
            path: layout::run_file(experiment, RECORD_FILE),
            blob: record_text.into_bytes(),
        },
        CommitFile {
            path: layout::run_file(experiment, PREDICTIONS_FILE),
            blob: predictions,
        },
        CommitFile {
            path: layout::run_file(experiment, HISTORY_FILE),
            blob: history,
        },
    ])
}

/// The run commit's message and the run tag's.
fn messages(record: &RunRecord) -> (String, String) {
    let experiment = &record.run.experiment;
    let headline = headline(record);
    (
        format!(
            "{} {headline}\n\nrun id {}\n",
            git::run_subject(experiment),
            record.run.id
        ),
        format!("{experiment} on {}: {headline}\n", record.run.branch),
    )
}

/// Which commit from a branch tip down already holds a run (`None`: none does).
pub type AlreadyRecorded<'a> =
    &'a dyn Fn(&git2::Repository, git2::Oid) -> Result<Option<git2::Oid>, git::GitError>;

/// A run that never touches a work tree, index or HEAD (docs/design.md §5): a sweep trial.
pub struct HeadlessOptions<'a> {
    /// The experiment.
    pub experiment: String,
    /// The spec file's path, for messages (its text is `spec_text`).
    pub spec_path: PathBuf,
    /// The spec as the run reads and commits it.
    pub spec_text: String,
    /// The data root.
    pub data_root: PathBuf,
    /// The branch the run is appended to (it must exist).
    pub branch: String,
    /// What the record says of the sweep trial this run is.
    pub sweep: Option<record::SweepRecord>,
    /// Whether the branch already holds this run, from its tip down: then nothing is
    /// appended (a retried trial). Asked before training and again before each append.
    pub already: AlreadyRecorded<'a>,
}

/// What a headless run did.
#[derive(Debug, Clone)]
pub enum HeadlessOutcome {
    /// Recorded: the commit, its run tag and the record.
    Recorded(Box<RunSummary>),
    /// The branch already held this run (found before training or before the append).
    AlreadyRecorded {
        /// The commit that holds it.
        commit: String,
    },
}

/// Trains and records a run headless: the spec from `options.spec_text`, the weights into the
/// LFS store (durable before naming), the blobs straight into the object database, and a
/// commit built from the branch tip's tree with the experiment's files replaced, appended by
/// compare-and-swap (git::append); then the run tag.
pub fn run_headless(
    repo: &git2::Repository,
    options: &HeadlessOptions,
    stop: &StopFlag,
    progress: &mut dyn TrainObserver,
) -> Result<HeadlessOutcome, RunError> {
    let started = Started::now();
    let experiment = &options.experiment;
    spec::check_name(experiment)?;
    let refname = format!("refs/heads/{}", options.branch);
    let tip = repo
        .refname_to_id(&refname)
        .map_err(git::ctx(format!("reading {}", options.branch)))?;
    if let Some(commit) = (options.already)(repo, tip)? {
        return Ok(HeadlessOutcome::AlreadyRecorded {
            commit: commit.to_string(),
        });
    }
    if let Some(worktree) = git::append::checked_out_in(repo, &options.branch) {
        return Err(RunError::BranchCheckedOut {
            branch: options.branch.clone(),
            worktree,
        });
    }
    let resolved = spec::parse(&options.spec_path, &options.spec_text, &[])?;
    let prepared = prepare(
        repo,
        resolved,
        experiment,
        &options.data_root,
        stop,
        progress,
    )?;
    let signature = git::signature(repo)?;
    let mut trained = train_and_record(
        repo,
        prepared,
        experiment,
        &options.branch,
        tip,
        &started,
        stop,
        progress,
    )?;
    trained.record.sweep = options.sweep.clone();
    let files = run_files(
        experiment,
        options.spec_text.clone().into_bytes(),
        &mut trained,
        &started,
    )?;
    let record = trained.record;
    let (message, tag_message) = messages(&record);
    let appended = git::append::append_files(
        repo,
        &options.branch,
        &layout::run_dir(experiment),
        &files,
        &message,
        &signature,
        &|tip| (options.already)(repo, tip),
    )?;
    let commit = match appended {
        git::append::Appended::New(commit) => commit,
        git::append::Appended::Existing(commit) => {
            return Ok(HeadlessOutcome::AlreadyRecorded {
                commit: commit.to_string(),
            })
        }
    };
    let tag = git::append::tag_appended(
        repo,
        &options.branch,
        experiment,
        commit,
        &tag_message,
        &signature,
    )?;
    Ok(HeadlessOutcome::Recorded(Box::new(RunSummary {
        commit: commit.to_string(),
        tag,
        switched_from: None,
        record,
        op_profile: trained.outcome.op_profile.clone(),
        recovered: Vec::new(),
    })))
}

fn write_and_commit(
    repo: &git2::Repository,
    worktree: &Path,
    experiment: &str,
    mut trained: Trained,
    started: &Started,
) -> Result<RunSummary, RunError> {
    let out_dir = layout::run_dir_in(worktree, experiment);
    std::fs::create_dir_all(&out_dir).map_err(|source| RunError::Write {
        path: out_dir.clone(),
        source,
    })?;
    let spec_path = trained.resolved.path.clone();
    let spec_bytes = std::fs::read(&spec_path).map_err(|source| RunError::Write {
        path: spec_path.clone(),
        source,
    })?;
    let files = run_files(experiment, spec_bytes, &mut trained, started)?;
    // The work tree holds the real weights; the commit holds the pointer.
    let object_path = trained.store.object_path(&trained.pointer.oid);
    let object = std::fs::read(&object_path).map_err(|source| RunError::Write {
        path: object_path.clone(),
        source,
    })?;
    let written = (|| {
        write_atomic(&out_dir.join(WEIGHTS_FILE), &object)?;
        for f in files.iter().filter(|f| {
            f.path != layout::spec_path(experiment)
                && f.path != layout::run_file(experiment, WEIGHTS_FILE)
        }) {
            write_atomic(&worktree.join(&f.path), &f.blob)?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        return Err(keep_trained(repo, experiment, &trained, &files, e));
    }

    let dir_rel = layout::run_dir(experiment);
    let (message, tag_message) = messages(&trained.record);
    let commit = match git::commit_files(repo, Some(&dir_rel), &files, &message) {
        Ok(commit) => commit,
        Err(git::GitError::IndexNotUpdated { commit, source }) => {
            return Err(RunError::AfterCommit {
                commit: commit.to_string(),
                what: "the index could not be updated (`git reset -q` refreshes it)",
                source: git::GitError::Git2 {
                    context: "writing the index".into(),
                    source,
                },
            })
        }
        Err(e) => return Err(keep_trained(repo, experiment, &trained, &files, e.into())),
    };
    let record = trained.record;
    let tag = git::tag_run(repo, &record.run.branch, experiment, commit, &tag_message).map_err(
        |source| RunError::AfterCommit {
            commit: commit.to_string(),
            what: "its run tag could not be written",
            source,
        },
    )?;
    Ok(RunSummary {
        commit: commit.to_string(),
        tag,
        switched_from: None,
        record,
        op_profile: trained.outcome.op_profile.clone(),
        recovered: Vec::new(),
    })
}

/// A run trained but not committed (`error` stopped it between training and the commit): its
/// commit built without the work tree under `refs/exp/failed/<run id>`, where nothing can take
/// it away, and the error says how to get it. When even that fails, `error` as it was.
fn keep_trained(
    repo: &git2::Repository,
    experiment: &str,
    trained: &Trained,
    files: &[CommitFile],
    error: RunError,
) -> RunError {
    let record = &trained.record;
    let (message, _) = messages(record);
    let kept = git2::Oid::from_str(&record.run.parent).map(|parent| {
        git::keep_failed_run(
            repo,
            parent,
            &layout::run_dir(experiment),
            files,
            &message,
            &record.run.id,
        )
    });
    match kept {
        Ok(Ok(kept)) => RunError::Kept {
            kept,
            source: Box::new(error),
        },
        _ => error,
    }
}

/// `accuracy=0.9812 loss=0.0612`: the commit and tag headline.
pub fn headline(record: &RunRecord) -> String {
    let v = |k: &str| record.metrics.values.get(k).copied().unwrap_or(f64::NAN);
    format!("accuracy={:.4} loss={:.4}", v("accuracy"), v("loss"))
}

fn split_record(
    split: &Split,
    files: &[crate::data::FileFingerprint],
    classes: usize,
) -> SplitRecord {
    SplitRecord {
        blake3: split.blake3.clone(),
        examples: split.len,
        classes,
        files: files.to_vec(),
        skipped: split.skipped,
    }
}

fn metrics_table(metrics: &Metrics, eval_set: &Split) -> MetricsTable {
    let mut values = BTreeMap::new();
    let mut meta = BTreeMap::new();
    // eval::Metrics computes every known metric (its unit test says so).
    for known in KNOWN_METRICS {
        let Some(value) = metrics.get(known.name) else {
            continue;
        };
        values.insert(known.name.to_string(), value);
        meta.insert(
            known.name.to_string(),
            MetricMeta {
                direction: known.direction,
                eval_set: eval_set.blake3.clone(),
                samples: eval_set.len,
            },
        );
    }
    MetricsTable { values, meta }
}

fn serialize_weights(tensors: &BTreeMap<String, candle_core::Tensor>) -> Result<Vec<u8>, RunError> {
    let cpu: Vec<(String, candle_core::Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&candle_core::Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| RunError::Safetensors(e.to_string()))?;
    // "format": "pt" lets the usual safetensors loaders (transformers, timm) take the file.
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| RunError::Safetensors(e.to_string()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    crate::files::write_whole(path, bytes, false).map_err(|source| RunError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// After a failed commit (or a run killed in its commit phase): put the experiment's directory
/// back as HEAD has it. Files HEAD holds are checked out again first; only if that worked are
/// the run files HEAD does not hold removed, so a failure here never loses a committed file.
fn restore_outputs(worktree: &Path, experiment: &str) {
    let dir_rel = layout::run_dir(experiment);
    let in_head = |file: &str| {
        git::git(
            worktree,
            &[
                "cat-file",
                "-e",
                &format!("HEAD:{}", layout::run_file(experiment, file)),
            ],
        )
        .is_ok()
    };
    let tracked: Vec<&str> = layout::RUN_FILES
        .iter()
        .copied()
        .filter(|f| in_head(f))
        .collect();
    if !tracked.is_empty() {
        let mut args = vec!["checkout".to_string(), "HEAD".into(), "--".into()];
        args.extend(tracked.iter().map(|f| layout::run_file(experiment, f)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if git::git(worktree, &args).is_err() {
            return;
        }
    }
    for file in layout::RUN_FILES.iter().filter(|f| !tracked.contains(f)) {
        let _ = std::fs::remove_file(worktree.join(&dir_rel).join(file));
    }
    // write_atomic's temp files (`.exp-*`), which a kill leaves before their rename.
    if let Ok(entries) = std::fs::read_dir(worktree.join(&dir_rel)) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(crate::files::TEMP_PREFIX)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = git::git(worktree, &["reset", "--quiet", "--", &dir_rel]);
    let _ = std::fs::remove_dir(worktree.join(&dir_rel));
}
