//! `exp verify` (docs/design.md §7): re-evaluate a run's committed weights and compare with
//! what its record and `predictions.bin` claim.
//!
//! The audit (compare/audit.rs) shows that a record agrees with its `predictions.bin`; only
//! re-evaluating the weights shows that both came from them. The eval set is rebuilt from the
//! record's own `[params]` data section (not today's spec) under the data root, and must have
//! the record's fingerprint; the weights come from the LFS store and must hash to the record's
//! tensor hash; the model runs on the CPU in f32.
//!
//! What counts as the same result depends on where the run was evaluated:
//! - on this machine's kind of CPU path (f32, exp's CPU kernels, or candle's when the run
//!   recorded `cpu_ops = "candle"` and this process uses them too): `predictions.bin` byte for
//!   byte and the loss within 1e-6 (threads may sum in another order);
//! - anywhere else (a GPU, half precision, the other CPU path): at most max(1, N/1000)
//!   predictions may differ and the loss by 1e-4, and the report says that tolerance was used.

use std::path::Path;

use candle_core::{DType, Device};
use git2::Repository;
use serde::Serialize;

use crate::compare::audit::audit;
use crate::compare::{stored_record, Snapshot, StoredRecord};
use crate::data::{DataError, Dataset};
use crate::eval::{decode_predictions, encode_predictions, evaluate};
use crate::model::Model;
use crate::record::layout::{self, PREDICTIONS_FILE, RECORD_FILE};
use crate::record::RunRecord;
use crate::spec::Precision;
use crate::weights::{load_committed, WeightsError};

/// Largest |Δloss| of a re-evaluation on the path the run was evaluated on.
pub const EXACT_LOSS_TOLERANCE: f64 = 1e-6;
/// Largest |Δloss| when the run was evaluated elsewhere (GPU, half precision, other kernels).
pub const CROSS_DEVICE_LOSS_TOLERANCE: f64 = 1e-4;

/// How close the re-evaluation must come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Tolerance {
    /// Byte-identical predictions, |Δloss| ≤ 1e-6.
    Exact,
    /// At most `max_differing` predictions differ, |Δloss| ≤ 1e-4.
    CrossDevice {
        /// Predictions allowed to differ: max(1, N/1000).
        max_differing: usize,
    },
}

/// One experiment's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyOutcome {
    /// The weights reproduce the record.
    Verified,
    /// They do not (exit 1).
    Mismatch,
    /// Verification was not possible: no data, no object (exit 2).
    CannotVerify,
}

/// What `exp verify` found for one experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentVerify {
    /// Experiment name.
    pub name: String,
    /// The verdict.
    pub outcome: VerifyOutcome,
    /// Why, for a mismatch or a verification not possible; what tolerance was used otherwise.
    pub reason: String,
    /// The tolerance applied, once the weights were evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
    /// Where the run was evaluated (the record's `run.device`).
    pub recorded_device: String,
    /// Examples re-evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub examples: Option<usize>,
    /// Predictions that differ from the committed ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differing_predictions: Option<usize>,
    /// The record's loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_loss: Option<f64>,
    /// The loss of the re-evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// The re-evaluation itself (labels, predictions, loss), for the gate to judge.
    #[serde(skip)]
    pub evaluation: Option<crate::eval::Evaluation>,
}

/// `exp verify`'s answer for a revision.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The revision as given.
    pub rev: String,
    /// One entry per experiment verified.
    pub experiments: Vec<ExperimentVerify>,
}

impl VerifyReport {
    /// 1 when an experiment does not match (whatever else), else 2 when one could not be
    /// verified, else 0.
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        let any = |o| self.experiments.iter().any(|e| e.outcome == o);
        if any(VerifyOutcome::Mismatch) {
            crate::exit::ExitCode::Negative
        } else if any(VerifyOutcome::CannotVerify) {
            crate::exit::ExitCode::Usage
        } else {
            crate::exit::ExitCode::Success
        }
    }
}

/// Why `exp verify` could not start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The revision or its records cannot be read.
    #[error(transparent)]
    Compare(#[from] crate::compare::CompareError),
    /// `--experiment` names no record at the revision.
    #[error("no run record of {name:?} at {rev} (it records {known})")]
    NoSuchExperiment {
        /// As given.
        name: String,
        /// The revision.
        rev: String,
        /// The experiments it records.
        known: String,
    },
    /// The data root cannot be determined.
    #[error(transparent)]
    Data(#[from] DataError),
}

impl VerifyError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            VerifyError::Compare(e) => e.hint(),
            VerifyError::NoSuchExperiment { .. } => {
                Some("name one of the recorded experiments with --experiment".into())
            }
            VerifyError::Data(e) => e.hint(),
        }
    }
}

/// Verifies the records of `snapshot` (only `experiment`'s when given), reading data under
/// the data root `root`.
pub fn verify(
    repo: &Repository,
    snapshot: &Snapshot,
    experiment: Option<&str>,
    root: &Path,
) -> Result<VerifyReport, VerifyError> {
    let blobs = crate::compare::record_blobs(repo, &snapshot.tree)?;
    if blobs.is_empty() {
        return Err(crate::compare::CompareError::NoRecords(snapshot.name.clone()).into());
    }
    let names: Vec<&String> = match experiment {
        Some(name) => {
            let Some((name, _)) = blobs.get_key_value(name) else {
                return Err(VerifyError::NoSuchExperiment {
                    name: name.to_string(),
                    rev: snapshot.name.clone(),
                    known: blobs.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            };
            vec![name]
        }
        None => blobs.keys().collect(),
    };
    let mut experiments = Vec::new();
    for name in names {
        let stored = stored_record(repo, snapshot, name, blobs[name])?;
        experiments.push(verify_one(repo, snapshot, name, &stored, root));
    }
    Ok(VerifyReport {
        rev: snapshot.name.clone(),
        experiments,
    })
}

/// Verifies one experiment's record `stored` in `snapshot`.
pub fn verify_one(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    stored: &StoredRecord,
    root: &Path,
) -> ExperimentVerify {
    let record = &stored.record;
    let mut out = ExperimentVerify {
        name: name.to_string(),
        outcome: VerifyOutcome::CannotVerify,
        reason: String::new(),
        tolerance: None,
        recorded_device: record.run.device.clone(),
        examples: None,
        differing_predictions: None,
        recorded_loss: record.metrics.values.get("loss").copied(),
        loss: None,
        evaluation: None,
    };
    let verdict = |mut out: ExperimentVerify, outcome, reason: String| {
        out.outcome = outcome;
        out.reason = reason;
        out
    };
    // The record must first agree with its own predictions: otherwise there is nothing
    // consistent to reproduce.
    if let Err(reason) = audit(repo, snapshot, name, stored) {
        return verdict(out, VerifyOutcome::Mismatch, reason);
    }
    // The record names the data files; on a server, they must stay under the data root.
    if let Some(bad) = data_paths(record).into_iter().find(|p| escapes_root(p)) {
        return verdict(
            out,
            VerifyOutcome::CannotVerify,
            format!("[params.data] names {bad:?}, outside the data root; exp verify reads only under it"),
        );
    }
    let data = match rebuilt_test_set(repo, snapshot, name, record, root) {
        Ok(data) => data,
        Err(reason) => return verdict(out, VerifyOutcome::CannotVerify, reason),
    };
    let device = Device::Cpu;
    let (tensors, _) = match load_committed(repo, &snapshot.tree, name, record, &device) {
        Ok(loaded) => loaded,
        Err(e @ WeightsError::MissingObject { .. }) => {
            return verdict(out, VerifyOutcome::CannotVerify, e.to_string())
        }
        Err(e) => return verdict(out, VerifyOutcome::Mismatch, e.to_string()),
    };
    let model = match load_model(record, &data, &tensors) {
        Ok(model) => model,
        Err(reason) => return verdict(out, VerifyOutcome::Mismatch, reason),
    };
    let evaluation = match data
        .feed(&data.test, &device, DType::F32)
        .and_then(|split| evaluate(&model, &split))
    {
        Ok(e) => e,
        Err(e) => {
            return verdict(
                out,
                VerifyOutcome::CannotVerify,
                format!("evaluating the weights failed: {e}"),
            )
        }
    };
    let n = evaluation.labels.len();
    let tolerance = tolerance_for(record, n);
    out.tolerance = Some(tolerance);
    out.examples = Some(n);
    out.loss = Some(evaluation.loss);
    let again = encode_predictions(
        &evaluation.labels,
        &evaluation.predictions,
        record.eval.classes,
    );
    // The audit decoded the committed file already; it cannot fail here.
    let committed = committed_predictions(repo, snapshot, name);
    let (labels, predictions) = match committed.as_deref().map(decode_predictions) {
        Some(Ok((labels, predictions, _))) => (labels, predictions),
        _ => {
            return verdict(
                out,
                VerifyOutcome::Mismatch,
                format!("{} is unreadable", layout::run_file(name, PREDICTIONS_FILE)),
            )
        }
    };
    if labels != evaluation.labels {
        return verdict(
            out,
            VerifyOutcome::Mismatch,
            format!(
                "the true labels in {} are not those of the rebuilt eval set",
                layout::run_file(name, PREDICTIONS_FILE)
            ),
        );
    }
    out.evaluation = Some(evaluation.clone());
    let differing = predictions
        .iter()
        .zip(&evaluation.predictions)
        .filter(|(a, b)| a != b)
        .count();
    out.differing_predictions = Some(differing);
    let loss_delta = out
        .recorded_loss
        .map(|recorded| (evaluation.loss - recorded).abs());
    let mut problems = Vec::new();
    let (max_differing, max_loss_delta, how) = match tolerance {
        Tolerance::Exact => (
            0,
            EXACT_LOSS_TOLERANCE,
            "on the CPU path it was evaluated on: predictions byte for byte, loss within 1e-6"
                .to_string(),
        ),
        Tolerance::CrossDevice { max_differing } => (
            max_differing,
            CROSS_DEVICE_LOSS_TOLERANCE,
            format!(
                "on the CPU, for a run evaluated on {}: at most {max_differing} of {n} predictions may differ, loss within 1e-4",
                describe_path(record)
            ),
        ),
    };
    let same_bytes = committed.as_deref() == Some(&again[..]);
    if differing > max_differing || (tolerance == Tolerance::Exact && !same_bytes) {
        problems.push(format!(
            "{differing} of {n} predictions differ from {}",
            layout::run_file(name, PREDICTIONS_FILE)
        ));
    }
    match (out.recorded_loss, loss_delta) {
        (Some(recorded), Some(delta)) if delta.is_nan() || delta > max_loss_delta => problems.push(format!(
            "the loss is {} again, the record says {recorded} (|Δ| = {delta:.3e} > {max_loss_delta:e})",
            evaluation.loss
        )),
        (None, _) => problems.push("the record has no metrics.loss".into()),
        _ => {}
    }
    if problems.is_empty() {
        verdict(out, VerifyOutcome::Verified, format!("re-evaluated {how}"))
    } else {
        verdict(
            out,
            VerifyOutcome::Mismatch,
            format!(
                "the committed weights do not produce the record: {} (re-evaluated {how})",
                problems.join("; ")
            ),
        )
    }
}

/// The tolerance for a run evaluated as `record` says, re-evaluated here on `n` examples. The
/// loose one needs a record consistent with a GPU run (a CUDA device and its `[run.gpu]`) or
/// with the other CPU path; with `--verify` the gate judges the re-evaluated metrics anyway, so
/// a record that claims either gains nothing.
pub fn tolerance_for(record: &RunRecord, n: usize) -> Tolerance {
    let on_gpu = record.run.gpu.is_some() && record.run.device.starts_with("cuda");
    let other_cpu_path = record.run.cpu_ops.is_some() != crate::model::candle_cpu_ops_forced();
    if on_gpu || other_cpu_path {
        Tolerance::CrossDevice {
            max_differing: (n / 1000).max(1),
        }
    } else {
        Tolerance::Exact
    }
}

fn describe_path(record: &RunRecord) -> String {
    let mut parts = vec![record.run.device.clone()];
    if record.params.train.precision != Precision::F32 {
        parts.push(record.params.train.precision.as_str().to_string());
    }
    if record.run.gpu.is_none() {
        parts.push(match &record.run.cpu_ops {
            Some(ops) => format!("{ops}'s CPU ops"),
            None => "exp's CPU kernels".into(),
        });
    }
    parts.join(", ")
}

/// The model of the record's `[params.model]`, holding `tensors`.
fn load_model(
    record: &RunRecord,
    data: &Dataset,
    tensors: &crate::weights::Tensors,
) -> Result<Model, String> {
    if data.classes != record.eval.classes {
        return Err(format!(
            "the rebuilt data has {} classes, the record's eval.classes {}",
            data.classes, record.eval.classes
        ));
    }
    crate::weights::rebuild_model(record, data.shape, tensors, &Device::Cpu)
}

/// Evaluates the committed weights of experiment `name` in `weights` (its record at
/// `weights_at`) on the test split of `data` (a record of the same experiment at `data_at`),
/// on the CPU: what `exp gate --reeval` judges when the head's test set is not the base's. The
/// test split is rebuilt from the data record's `[params.data]` (a committed dataset's folder
/// must hold the version of `data_at`) and must have the fingerprint that record names; the
/// weights must take its images and classes.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_on(
    repo: &Repository,
    name: &str,
    weights_at: &Snapshot,
    weights: &RunRecord,
    data_at: &Snapshot,
    data: &RunRecord,
    root: &Path,
) -> Result<crate::eval::Evaluation, String> {
    let rebuilt = rebuilt_test_set(repo, data_at, name, data, root)
        .map_err(|e| format!("the test set of {}: {e}", data_at.name))?;
    if let Some([c, h, w]) = weights.model.input {
        if [c, h, w]
            != [
                rebuilt.shape.channels,
                rebuilt.shape.height,
                rebuilt.shape.width,
            ]
        {
            return Err(format!(
                "the model at {} takes {c}×{h}×{w} images, the test set of {} has {}×{}×{}",
                weights_at.name,
                data_at.name,
                rebuilt.shape.channels,
                rebuilt.shape.height,
                rebuilt.shape.width
            ));
        }
    }
    let (tensors, _) =
        crate::weights::load_committed(repo, &weights_at.tree, name, weights, &Device::Cpu)
            .map_err(|e| format!("the weights at {}: {e}", weights_at.name))?;
    let model = load_model(weights, &rebuilt, &tensors)
        .map_err(|e| format!("the model at {}: {e}", weights_at.name))?;
    rebuilt
        .feed(&rebuilt.test, &Device::Cpu, DType::F32)
        .and_then(|split| evaluate(&model, &split))
        .map_err(|e| format!("evaluating the weights at {} failed: {e}", weights_at.name))
}

/// The data set of the record of `name` at `snapshot`, rebuilt from its `[params.data]` (under
/// the data root `root`, or a committed dataset's folder, which must hold the version of
/// `snapshot`), with the test set the record names; `Err` says why it cannot be. `exp bench`
/// measures on the same set.
pub fn rebuilt_test_set(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    record: &RunRecord,
    root: &Path,
) -> Result<Dataset, String> {
    let record_path = format!(
        "{} at {}",
        layout::run_file(name, RECORD_FILE),
        snapshot.name
    );
    // A run on a committed dataset is re-evaluated on its folder, which must hold the version
    // the run read (the manifest in the run's commit).
    let (data_root, data_spec) = match dataset_folder(repo, snapshot, record)? {
        Some(found) => found,
        None => (root.to_path_buf(), record.params.data.clone()),
    };
    let cache = crate::git::cache_dir(repo);
    let data = Dataset::load(
        &data_root,
        &data_spec,
        record.params.train.seed,
        &|_| record_path.clone(),
        Some(&cache),
    )
    .map_err(|e| format!("the run's eval set cannot be rebuilt from its [params.data]: {e}"))?;
    if data.test.blake3 != record.data.test.blake3 {
        return Err(format!(
            "the data root {} holds another eval set than the run's: its fingerprint is {}, the record's data.test.blake3 {}",
            data_root.display(),
            data.test.blake3,
            record.data.test.blake3
        ));
    }
    Ok(data)
}

/// For a record of a run on a committed dataset: the work tree and the data spec reading the
/// dataset's folder, once the folder is checked to hold the version the run's commit lists.
fn dataset_folder(
    repo: &Repository,
    snapshot: &Snapshot,
    record: &RunRecord,
) -> Result<Option<(std::path::PathBuf, crate::spec::DataSpec)>, String> {
    let name = &record.params.data.dataset;
    if name.is_empty() {
        return Ok(None);
    }
    let committed = crate::dataset::read_tree(repo, &snapshot.tree, name)
        .map_err(|e| format!("the run's dataset cannot be read at {}: {e}", snapshot.name))?;
    let state = crate::dataset::status(repo, &committed)
        .map_err(|e| format!("the dataset's folder cannot be read: {e}"))?;
    crate::dataset::check_matches(&state, &committed).map_err(|e| {
        format!(
            "{e}; put the run's version back with `exp data checkout {name} --rev {}`",
            snapshot.name
        )
    })?;
    let mut spec = record.params.data.clone();
    spec.path = committed.manifest.folder.clone();
    Ok(Some((crate::git::workdir(repo).to_path_buf(), spec)))
}

/// Every data file a record's `[params.data]` names.
fn data_paths(record: &RunRecord) -> Vec<String> {
    let d = &record.params.data;
    let mut paths = vec![
        d.train_labels.clone(),
        d.test_labels.clone(),
        d.path.clone(),
    ];
    paths.extend(d.train_images.iter().cloned());
    paths.extend(d.test_images.iter().cloned());
    paths
}

/// Whether a data path would leave the data root (absolute, or with a `..` component).
fn escapes_root(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        || p.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::Prefix(_)
            )
        })
}

/// The bytes of experiment `name`'s committed `predictions.bin` at `snapshot`, if it has one.
pub fn committed_predictions(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
) -> Option<Vec<u8>> {
    let path = layout::run_file(name, PREDICTIONS_FILE);
    let entry = snapshot.tree.get_path(Path::new(&path)).ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    Some(blob.content().to_vec())
}
