//! The run record (`metrics.toml`, docs/design.md §4), the canonical tensor hash and the run id.
//!
//! The record is self-describing: every metric carries its direction and the fingerprint of
//! the eval set it was measured on, so any later tool can tell whether two records are
//! comparable without guessing.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::data::FileFingerprint;
pub use crate::metric::Direction;
use crate::spec::Spec;

pub mod layout;

/// One row of `history.csv` (docs/design.md §4), written by training and read by `exp plot`.
/// Columns added after the first records default when absent, so old histories still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    #[serde(default)]
    pub lr: f64,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Validation loss (empty without `val_limit`).
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// Validation accuracy (empty without `val_limit`).
    #[serde(default)]
    pub val_accuracy: Option<f64>,
    /// Loss on the eval (test) set.
    pub eval_loss: f64,
    /// Accuracy on the eval (test) set.
    pub eval_accuracy: f64,
    /// Wall seconds of the epoch, evaluation included.
    #[serde(default)]
    pub seconds: f64,
    /// Wall seconds of the epoch's training steps alone (evaluation excluded).
    #[serde(default)]
    pub train_seconds: f64,
}

/// `history.csv`'s bytes: a header, then one row per epoch.
pub fn encode_history(rows: &[EpochRecord]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row)?;
    }
    writer.into_inner().map_err(|e| e.into_error().into())
}

/// Parses `history.csv`.
pub fn parse_history(bytes: &[u8]) -> Result<Vec<EpochRecord>, csv::Error> {
    csv::Reader::from_reader(bytes).deserialize().collect()
}

/// Where training time went, summed over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Reading and decoding the data set before training (0 in records before it was kept).
    #[serde(default)]
    pub load_seconds: f64,
    /// Gathering and normalising batches.
    pub data_seconds: f64,
    /// Forward pass and loss.
    pub forward_seconds: f64,
    /// Backward pass.
    pub backward_seconds: f64,
    /// Gradient accumulation and optimiser updates.
    pub optimizer_seconds: f64,
    /// Per-epoch evaluation.
    pub eval_seconds: f64,
    /// Training images per second (training steps only, evaluation excluded).
    pub images_per_second: f64,
}

/// A record that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Serialising the record failed.
    #[error("cannot serialise the run record: {0}")]
    Serialize(#[from] toml::ser::Error),
    /// The record text is not a valid record.
    #[error("invalid run record: {0}")]
    Parse(#[from] toml::de::Error),
    /// Hashing or saving tensors failed.
    #[error("cannot serialise the weights: {0}")]
    Tensors(String),
    /// The record parses but holds what exp never writes.
    #[error("invalid run record: {0}")]
    Invalid(String),
}

/// Status of a committed record: always `completed` (failed runs commit nothing).
pub const STATUS_COMPLETED: &str = "completed";

/// The complete run record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Identity and circumstances of the run.
    pub run: RunInfo,
    /// The fully resolved spec that ran.
    pub params: Spec,
    /// Fingerprints of the data.
    pub data: DataRecord,
    /// The weights.
    pub model: ModelRecord,
    /// Headline metrics on the eval set, with their meta data.
    pub metrics: MetricsTable,
    /// Per-class results on the eval set.
    pub eval: EvalRecord,
    /// The run's other files, bound to the record: file name (in the run directory) → BLAKE3
    /// of its bytes (docs/design.md §4). Empty in records written before bindings existed, which
    /// are read with a warning.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, String>,
    /// How training went.
    pub training: TrainingRecord,
    /// The run whose weights this run started from (`init.from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitRecord>,
    /// The sweep trial this run is (`exp sweep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepRecord>,
}

/// `[sweep]` of the run record: which trial of which sweep this run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// The sweep's id (its branch is `feature/sweep-<experiment>-<id>`).
    pub id: String,
    /// The trial's index in the sweep.
    pub trial: usize,
    /// The trial's id: BLAKE3 of the sweep id and the swept values (`sweep::plan::Trial::id`).
    pub trial_id: String,
    /// The swept spec keys and their values in this trial.
    pub values: BTreeMap<String, toml::Value>,
}

/// `[init]` of the run record: the run whose weights this run started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    /// `init.from` as given.
    pub from: String,
    /// The parent run's commit.
    pub commit: String,
    /// The parent's experiment.
    pub experiment: String,
    /// The parent's run id.
    pub run_id: String,
    /// The parent's run tag, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The parent's canonical tensor hash.
    pub tensor_hash: String,
    /// Tensors that kept their fresh initialisation (the classifier head, when the number of
    /// classes differs).
    pub reinitialized: Vec<String>,
    /// Tensors held fixed during training (`init.freeze`).
    pub frozen: Vec<String>,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// BLAKE3 of exp version, resolved spec, data fingerprints and seed.
    pub id: String,
    /// Experiment name.
    pub experiment: String,
    /// Branch the run was committed on.
    pub branch: String,
    /// The commit the run's commit has as parent.
    pub parent: String,
    /// RFC 3339 start time.
    pub started: String,
    /// Wall seconds from start to record.
    pub wall_seconds: f64,
    /// Device that trained (`cpu`, `cuda:0 …`).
    pub device: String,
    /// The GPU that trained, for CUDA runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<crate::device::GpuInfo>,
    /// CPU threads candle used.
    pub threads: usize,
    /// `candle` when a CPU run used candle's own ops instead of exp's CPU kernels
    /// (`EXP_CPU_OPS=candle`, for comparisons): the weights differ in the last bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ops: Option<String>,
    /// exp version.
    pub exp_version: String,
    /// candle version.
    pub candle_version: String,
    /// The seed.
    pub seed: u64,
    /// `completed`.
    pub status: String,
    /// The `--set` overrides, as given.
    pub overrides: Vec<String>,
}

/// `[data.dataset]`: the committed dataset a run trained on (`data.dataset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// The dataset's name.
    pub name: String,
    /// The Git blob id of `datasets/<name>.files` as the run read it.
    pub manifest: String,
    /// The manifest's fingerprint (BLAKE3 over the file list).
    pub fingerprint: String,
    /// The folder, relative to the work tree.
    pub folder: String,
}

/// `[data]`: one entry per split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The committed dataset the splits come from, when the spec names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetRecord>,
    /// Training split.
    pub train: SplitRecord,
    /// Validation split, when `val_limit` > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<SplitRecord>,
    /// The eval set.
    pub test: SplitRecord,
}

/// One split's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// Fingerprint of the split (its files and, for a subset, which examples).
    pub blake3: String,
    /// Examples in the split.
    pub examples: usize,
    /// Classes in the data set.
    pub classes: usize,
    /// The files, as given in the spec, with their BLAKE3 over decompressed bytes (an image
    /// folder's split: the folder, with the fingerprint of its manifest lines).
    pub files: Vec<FileFingerprint>,
    /// Image files of the source left out because they do not decode (`data.skip_corrupt`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Architecture name.
    pub architecture: String,
    /// Number of trainable scalars.
    pub parameters: usize,
    /// The weights file, relative to the experiment's directory.
    pub weights: String,
    /// LFS oid (sha256 hex) of the weights file.
    pub oid: String,
    /// Size of the weights file in bytes.
    pub size: u64,
    /// BLAKE3 over sorted tensor names, dtypes, shapes and bytes: stable across writers.
    pub tensor_hash: String,
    /// The input the model takes: `[channels, height, width]` of one image. Absent in records
    /// written before exp 0.2 recorded it; export and serving then read it from the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[usize; 3]>,
}

/// `[metrics]`: `name = value`, plus `[metrics.meta.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsTable {
    /// Metric values.
    #[serde(flatten)]
    pub values: BTreeMap<String, f64>,
    /// How to compare each metric.
    pub meta: BTreeMap<String, MetricMeta>,
}

/// What makes two values of a metric comparable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricMeta {
    /// Better direction.
    pub direction: Direction,
    /// BLAKE3 of the eval set the metric was measured on.
    pub eval_set: String,
    /// Examples it was measured on.
    pub samples: usize,
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Number of classes.
    pub classes: usize,
    /// Accuracy within each true class.
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// File with true and predicted label of every eval example.
    pub predictions: String,
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// Epochs completed.
    pub epochs: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f64,
    /// Updates skipped by f16 loss scaling (a gradient overflowed).
    #[serde(default)]
    pub skipped_steps: usize,
    /// With early stopping: the epoch whose weights were recorded (the best on validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// The class weights of the training loss, one per class, as computed for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f64>>,
    /// Where the time went.
    pub timing: Timing,
}

impl RunRecord {
    /// The TOML text.
    pub fn to_toml(&self) -> Result<String, RecordError> {
        Ok(toml::to_string(self)?)
    }

    /// Parses TOML text. The ids every tool shortens and compares (`run.id`, `model.oid`,
    /// `model.tensor_hash`) must be 64 lowercase hex digits: anything else is not a record exp
    /// wrote.
    pub fn from_toml(text: &str) -> Result<RunRecord, RecordError> {
        let record: RunRecord = toml::from_str(text)?;
        for (key, value) in [
            ("run.id", &record.run.id),
            ("model.oid", &record.model.oid),
            ("model.tensor_hash", &record.model.tensor_hash),
        ] {
            if value.len() != 64
                || !value
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(RecordError::Invalid(format!(
                    "{key} is {value:?}, not 64 lowercase hex digits"
                )));
            }
        }
        Ok(record)
    }
}

/// The `[artifacts]` value of a file: BLAKE3 of its bytes, hex.
pub fn artifact_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// BLAKE3 over the tensors sorted by name: name, dtype, shape and little-endian bytes, each
/// length-prefixed. Unlike the safetensors file, whose header layout differs between writers,
/// this only changes when a weight does.
pub fn tensor_hash(tensors: &BTreeMap<String, Tensor>) -> Result<String, RecordError> {
    let mut h = blake3::Hasher::new();
    h.update(b"exp-tensor-hash-v1\0");
    h.update(&(tensors.len() as u64).to_le_bytes());
    for (name, tensor) in tensors {
        let field = |h: &mut blake3::Hasher, bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(&mut h, name.as_bytes());
        field(&mut h, tensor.dtype().as_str().as_bytes());
        h.update(&(tensor.rank() as u64).to_le_bytes());
        for d in tensor.dims() {
            h.update(&(*d as u64).to_le_bytes());
        }
        let tensor = tensor
            .to_device(&candle_core::Device::Cpu)
            .map_err(|e| RecordError::Tensors(e.to_string()))?;
        let bytes = safetensors::View::data(&tensor);
        field(&mut h, &bytes);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The run id: BLAKE3 of exp's version, the resolved spec, the data fingerprints and the seed.
pub fn run_id(spec: &Spec, split_fingerprints: &[&str], seed: u64) -> Result<String, RecordError> {
    run_id_of_version(crate::VERSION, spec, split_fingerprints, seed)
}

/// [`run_id`] as exp `version` computes it (the version is part of the id).
pub fn run_id_of_version(
    version: &str,
    spec: &Spec,
    split_fingerprints: &[&str],
    seed: u64,
) -> Result<String, RecordError> {
    let mut h = blake3::Hasher::new();
    h.update(b"exp-run-id-v1\0");
    h.update(version.as_bytes());
    h.update(b"\0");
    h.update(toml::to_string(spec)?.as_bytes());
    for f in split_fingerprints {
        h.update(b"\0");
        h.update(f.as_bytes());
    }
    h.update(&seed.to_le_bytes());
    Ok(h.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Known answers: records in users' repositories were hashed with this definition, and
    /// `init.from` and the gate compare against them. A change here breaks every old record.
    /// The values were checked with an independent implementation of the definition (Python's
    /// `blake3` package, the fields packed with `struct`), not only taken from this code.
    #[test]
    fn tensor_hash_known_answers() {
        let mut m = BTreeMap::new();
        assert_eq!(
            tensor_hash(&m).unwrap(),
            "5e1efb1292715d988b835a57c59ba157699ef9460bf31105f01e768806ad7388"
        );
        m.insert(
            "fc.weight".to_string(),
            Tensor::new(&[[1.0f32, -2.0], [0.5, 3.25]], &Device::Cpu).unwrap(),
        );
        m.insert(
            "fc.bias".to_string(),
            Tensor::new(&[0.25f32, -0.0], &Device::Cpu).unwrap(),
        );
        m.insert(
            "bn.num_batches".to_string(),
            Tensor::new(&[7u32], &Device::Cpu).unwrap(),
        );
        assert_eq!(
            tensor_hash(&m).unwrap(),
            "881d530d0695c25db4be858bc717562d302168fb61ea99ffbdcd531d667682ea"
        );
    }

    /// The run id of the params of a record written by a real `exp run`
    /// (tests/fixtures/record.toml), as read today (defaults of later keys filled in).
    ///
    /// The fixture's own id differs: it was written before the schedule keys existed, and
    /// the resolved spec, which the id hashes, has gained them since (with the same
    /// `exp_version`). Ids are compared only for equality of runs of one exp build, so old ids
    /// stay valid as names; see docs/design.md §4.
    #[test]
    fn run_id_known_answer_from_a_real_record() {
        let record =
            RunRecord::from_toml(include_str!("../../tests/fixtures/record.toml")).unwrap();
        let splits: Vec<&str> = [
            Some(&record.data.train),
            record.data.val.as_ref(),
            Some(&record.data.test),
        ]
        .into_iter()
        .flatten()
        .map(|s| s.blake3.as_str())
        .collect();
        let id = run_id_of_version(
            &record.run.exp_version,
            &record.params,
            &splits,
            record.run.seed,
        )
        .unwrap();
        assert_eq!(
            id,
            "e788f6c45cc02cb21d930aaa83538850c4fd419230d4ded47f2d617654ff16ec"
        );
        // Every input counts.
        assert_ne!(
            run_id_of_version("0.1.1", &record.params, &splits, record.run.seed).unwrap(),
            id
        );
        assert_ne!(
            run_id_of_version(&record.run.exp_version, &record.params, &splits, 2).unwrap(),
            id
        );
        assert_ne!(
            run_id_of_version(
                &record.run.exp_version,
                &record.params,
                &splits[..1],
                record.run.seed
            )
            .unwrap(),
            id
        );
    }

    /// The record's byte layout: an old record (tests/fixtures/record.toml) reads, and is
    /// written back exactly as tests/golden/record-written.toml holds it (the keys added since
    /// take their defaults), so a field renamed, reordered or re-typed shows here.
    #[test]
    fn record_layout_is_pinned() {
        let text = include_str!("../../tests/fixtures/record.toml");
        let written = RunRecord::from_toml(text).unwrap().to_toml().unwrap();
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/record-written.toml");
        if std::env::var_os("EXP_BLESS").is_some() {
            std::fs::write(&golden, &written).unwrap();
        }
        assert_eq!(written, std::fs::read_to_string(&golden).unwrap());
        // And what is written reads back to the same record.
        let again = RunRecord::from_toml(&written).unwrap();
        assert_eq!(again.to_toml().unwrap(), written);
    }

    /// `[artifacts]`: file name → BLAKE3 hex of its bytes, after `[eval]`; absent when empty.
    #[test]
    fn artifacts_layout_is_pinned() {
        assert_eq!(
            artifact_hash(b"abc"),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let mut record =
            RunRecord::from_toml(include_str!("../../tests/fixtures/record.toml")).unwrap();
        assert!(!record.to_toml().unwrap().contains("[artifacts]"));
        record.artifacts = [("predictions.bin", &b"abc"[..]), ("history.csv", b"")]
            .into_iter()
            .map(|(f, b)| (f.to_string(), artifact_hash(b)))
            .collect();
        let text = record.to_toml().unwrap();
        let table = "\n[artifacts]\n\"history.csv\" = \"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"\n\"predictions.bin\" = \"6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85\"\n";
        let at = text.find(table).expect(&text);
        assert!(text.find("\n[eval]").unwrap() < at && at < text.find("\n[training]").unwrap());
        assert_eq!(RunRecord::from_toml(&text).unwrap(), record);
    }

    #[test]
    fn tensor_hash_is_value_shape_and_dtype_sensitive() {
        let a = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let b = Tensor::new(&[3.0f32], &Device::Cpu).unwrap();
        let mut m1 = BTreeMap::new();
        m1.insert("b".to_string(), b.clone());
        m1.insert("a".to_string(), a.clone());
        let mut m2 = m1.clone();
        m2.insert(
            "b".to_string(),
            Tensor::new(&[3.5f32], &Device::Cpu).unwrap(),
        );
        assert_ne!(tensor_hash(&m1).unwrap(), tensor_hash(&m2).unwrap());
        // Same bytes, different shape or dtype: different hash.
        let mut m3 = BTreeMap::new();
        m3.insert("a".to_string(), a.reshape((2, 1)).unwrap());
        m3.insert("b".to_string(), b.clone());
        assert_ne!(tensor_hash(&m1).unwrap(), tensor_hash(&m3).unwrap());
        let mut m4 = m1.clone();
        m4.insert("b".to_string(), b.to_dtype(DType::F64).unwrap());
        assert_ne!(tensor_hash(&m1).unwrap(), tensor_hash(&m4).unwrap());
    }
}
