//! The experiment spec (`experiments/<name>.toml`, DESIGN §3): one schema, `--set` overrides,
//! and errors that name the key, the file and the line.
//!
//! Parsing happens in three steps so that every error can point at its origin:
//! 1. the file alone is deserialised (serde + toml give the line of any unknown key or wrong
//!    type);
//! 2. each `--set KEY=VALUE` is applied and the result deserialised again, so an override that
//!    breaks the schema is reported as that override;
//! 3. the typed spec is checked for what a schema cannot say (positive learning rate, options
//!    that belong to another model) and resolved: defaults filled in, so the record stores the
//!    complete spec that ran.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An error in an experiment spec. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file does not exist or cannot be read.
    #[error("cannot read experiment spec {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not parse or does not fit the schema.
    #[error("{path}:{line}:{column}: {key}{message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// `key: ` when the offending key is known, else empty.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A `--set` argument is malformed or breaks the schema.
    #[error("--set {arg}: {message}")]
    Override {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-typed but not allowed.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// `file:line` or `--set KEY=VALUE`.
        origin: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The experiment name cannot name a spec file.
    #[error("invalid experiment name {0:?}: use letters, digits, '.', '_' and '-' (the file is experiments/<name>.toml)")]
    BadName(String),
}

impl SpecError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SpecError::Read { path, .. } => Some(format!(
                "create {} (see the examples `exp init` writes to experiments/), or check the experiment name",
                path.display()
            )),
            SpecError::Override { .. } => {
                Some("overrides look like --set train.epochs=3 or --set model.hidden=[256,128]".into())
            }
            _ => None,
        }
    }
}

/// The complete experiment spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Which model to train.
    pub model: ModelSpec,
    /// Where the data comes from.
    pub data: DataSpec,
    /// The training recipe.
    #[serde(default)]
    pub train: TrainSpec,
    /// Where the initial weights come from.
    #[serde(default)]
    pub init: InitSpec,
    /// The regression gate's policy. Not a training parameter: it stays out of the run
    /// record and the run id, and `exp gate` reads it from the base revision's spec file.
    #[serde(default, skip_serializing)]
    pub gate: GateSpec,
}

/// `[gate]`: when a merge into develop or main is a regression (docs/gate.md has the rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSpec {
    /// Gated metrics (their better direction comes from the records).
    pub metrics: Vec<String>,
    /// Largest tolerated worsening, absolute (e.g. 0.005 = half a point of accuracy).
    pub max_drop: Option<f64>,
    /// Largest tolerated worsening relative to the base value (e.g. 0.01 = 1 %).
    pub max_relative_drop: Option<f64>,
    /// Floor for metrics whose better direction is up: the head must reach it.
    pub min: Option<f64>,
    /// Ceiling for metrics whose better direction is down: the head must not exceed it.
    pub max: Option<f64>,
    /// Significance level of the paired (McNemar) test on accuracy.
    pub alpha: f64,
    /// Whether records evaluated on different eval sets are an error (the default) or are
    /// compared on their metrics alone.
    pub allow_different_eval_set: bool,
}

impl Default for GateSpec {
    fn default() -> Self {
        GateSpec {
            metrics: vec!["accuracy".into()],
            max_drop: None,
            max_relative_drop: None,
            min: None,
            max: None,
            alpha: 0.05,
            allow_different_eval_set: false,
        }
    }
}

impl GateSpec {
    /// Checks the values (not only the types); the key of the first bad one and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.metrics.is_empty() {
            return Err(("gate.metrics", "name at least one metric".into()));
        }
        for (key, value) in [
            ("gate.max_drop", self.max_drop),
            ("gate.max_relative_drop", self.max_relative_drop),
        ] {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    return Err((key, format!("must be a number ≥ 0, got {v}")));
                }
            }
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err((
                "gate.alpha",
                format!("must be between 0 and 1, got {}", self.alpha),
            ));
        }
        Ok(())
    }
}

/// The model zoo's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelName {
    /// Multi-layer perceptron with configurable hidden sizes.
    Mlp,
    /// The classic one-conv MNIST tutorial net.
    SeedCnn,
    /// A deeper CNN with dropout.
    Cnn,
    /// CIFAR-style ResNet-18 with batch norm.
    Resnet18,
}

impl ModelName {
    /// The name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::Mlp => "mlp",
            ModelName::SeedCnn => "seed-cnn",
            ModelName::Cnn => "cnn",
            ModelName::Resnet18 => "resnet18",
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Architecture.
    pub name: ModelName,
    /// mlp: hidden layer widths (default `[128]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,
    /// mlp, cnn: dropout probability before each dense layer after the first (mlp default 0,
    /// cnn default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// cnn: dropout probability after the convolutional block (default 0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_dropout: Option<f64>,
    /// resnet18: channels of the first stage (default 64; the stages have w, 2w, 4w, 8w).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
}

/// Data set file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// LeCun's IDX (MNIST, Fashion-MNIST), raw or gzipped.
    Idx,
    /// The CIFAR-10 binary version: 3073-byte records, label first.
    Cifar10,
}

/// Per-channel normalisation applied to pixels / 255.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Per-channel mean (one value applies to every channel).
    pub mean: Vec<f64>,
    /// Per-channel standard deviation.
    pub std: Vec<f64>,
}

/// `[data]`. Paths are relative to the data root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// File format of every file below.
    pub format: DataFormat,
    /// Training images (idx) or training batch files (cifar10: one path or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub train_images: Vec<String>,
    /// Training labels (idx only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub train_labels: String,
    /// Test images (idx) or test batch files (cifar10).
    #[serde(deserialize_with = "one_or_many")]
    pub test_images: Vec<String>,
    /// Test labels (idx only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub test_labels: String,
    /// Normalisation of pixels / 255; none means pixels / 255 as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,
    /// When positive: train on the first N of a seeded permutation of the training set.
    #[serde(default)]
    pub train_limit: usize,
    /// When positive: hold out N training examples (from the same permutation) as a validation set.
    #[serde(default)]
    pub val_limit: usize,
    /// When positive: evaluate on the first N test examples only (in file order, so eval sets agree
    /// across seeds).
    #[serde(default)]
    pub test_limit: usize,
    /// When positive: this fraction of the training examples (of `train_limit` when set) is
    /// held out as the validation set, from the same seeded permutation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub val_fraction: f64,
    /// Keep only these labels, in every split, relabelled 0, 1, … in this order (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<u8>,
    /// Per-class caps on the training split, keyed by the label as the files have it: at most
    /// N examples of that class, the first of the seeded permutation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub class_limit: BTreeMap<String, usize>,
}

impl DataSpec {
    /// `class_limit` with its keys as labels; Err names a key that is not one.
    pub fn class_caps(&self) -> Result<BTreeMap<u8, usize>, String> {
        self.class_limit
            .iter()
            .map(|(k, &v)| match k.trim().parse::<u8>() {
                Ok(label) => Ok((label, v)),
                Err(_) => Err(format!(
                    "keys are class labels as the files have them (0–255), got {k:?}"
                )),
            })
            .collect()
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or an array of strings")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Optimisers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerName {
    /// Adam with L2 weight decay added to the gradient (PyTorch's `Adam`).
    Adam,
    /// Adam with decoupled weight decay (PyTorch's `AdamW`).
    Adamw,
    /// Stochastic gradient descent with optional momentum (PyTorch's `SGD`).
    Sgd,
}

impl Precision {
    /// The name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// Floating-point precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit floats throughout.
    F32,
    /// bfloat16 activations with f32 master weights.
    Bf16,
    /// float16 activations with f32 master weights.
    F16,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSpec {
    /// adam | adamw | sgd.
    pub optimizer: OptimizerName,
    /// Learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay (L2 for adam and sgd, decoupled for adamw).
    pub weight_decay: f64,
    /// Examples per optimiser step (per micro-batch with `accumulate` > 1).
    pub batch_size: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Seed of every random draw.
    pub seed: u64,
    /// auto | cpu | cuda | cuda:N.
    pub device: String,
    /// f32 | bf16 | f16.
    pub precision: Precision,
    /// Micro-batches whose gradients are summed before each optimiser step.
    pub accumulate: usize,
    /// Learning-rate schedule over epochs: constant | cosine | step.
    pub schedule: Schedule,
    /// Epochs of linear warm-up before the schedule (epoch e ≤ W runs at lr·e/(W+1)).
    pub warmup_epochs: usize,
    /// Cosine: the learning rate the last epoch approaches.
    pub min_lr: f64,
    /// Step: epochs between decays.
    pub step_size: usize,
    /// Step: the factor of each decay.
    pub gamma: f64,
    /// Label smoothing ε of the training loss (0 = plain cross-entropy; evaluation never smooths).
    pub label_smoothing: f64,
    /// Random transformations of the training batches (left out of the record when off, so
    /// the run ids of runs without augmentation stay as they were).
    #[serde(skip_serializing_if = "AugmentSpec::is_off")]
    pub augment: AugmentSpec,
    /// Stop when the validation metric stops improving, keeping the best epoch's weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Per-class weights of the training loss (none: every class weighs 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<ClassWeights>,
}

/// `train.early_stopping`: watch a validation metric after every epoch; stop after `patience`
/// epochs without an improvement larger than `min_delta`; the best epoch's weights are the
/// ones recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without improvement before training stops.
    pub patience: usize,
    /// The validation metric watched.
    #[serde(default = "StopMetric::default_metric")]
    pub metric: StopMetric,
    /// The smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// Validation metrics early stopping can watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// Mean cross-entropy on the validation set (lower is better).
    ValLoss,
    /// Accuracy on the validation set (higher is better).
    ValAccuracy,
}

impl StopMetric {
    fn default_metric() -> StopMetric {
        StopMetric::ValLoss
    }

    /// The name as written in specs and history.csv.
    pub fn as_str(self) -> &'static str {
        match self {
            StopMetric::ValLoss => "val_loss",
            StopMetric::ValAccuracy => "val_accuracy",
        }
    }
}

/// `train.class_weights`: a rule, or one weight per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "\"inverse-frequency\" or an array of weights, one per class"
)]
pub enum ClassWeights {
    /// A rule computed from the training split.
    Rule(ClassWeightRule),
    /// One weight per class, in label order (after any `data.classes` relabelling).
    Explicit(Vec<f64>),
}

/// Rules for class weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeightRule {
    /// n / (K · n_c) for class c with n_c of the n training examples (scikit-learn's
    /// "balanced"): a class half as frequent weighs twice as much.
    InverseFrequency,
}

/// `[train.augment]`: random transformations of every training batch, drawn afresh each epoch
/// from the run's augmentation stream; validation and evaluation images are never augmented.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSpec {
    /// Random crop: pad each side by this many black pixels, crop back to the original size at
    /// a random offset (torchvision's `RandomCrop(size, padding)`); 0 = no crop.
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2. Off by default: a mirrored digit is not the
    /// same digit.
    pub flip: bool,
}

impl AugmentSpec {
    /// True when no transformation is on.
    pub fn is_off(&self) -> bool {
        *self == AugmentSpec::default()
    }
}

/// Learning-rate schedules (applied per epoch, after any warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The same learning rate every epoch.
    Constant,
    /// Cosine annealing from lr to min_lr (PyTorch's CosineAnnealingLR stepped per epoch).
    Cosine,
    /// Multiplied by gamma every step_size epochs (PyTorch's StepLR).
    Step,
}

impl TrainSpec {
    /// The learning rate of 1-based epoch `epoch`.
    pub fn learning_rate(&self, epoch: usize) -> f64 {
        let warmup = self.warmup_epochs;
        if epoch <= warmup {
            return self.lr * epoch as f64 / (warmup + 1) as f64;
        }
        // Epochs after warm-up, 0-based, and how many there are.
        let t = (epoch - warmup - 1) as f64;
        let span = self.epochs.saturating_sub(warmup).max(1) as f64;
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                self.min_lr
                    + (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t / span).cos())
                        / 2.0
            }
            Schedule::Step => {
                self.lr * self.gamma.powi((t as usize / self.step_size.max(1)) as i32)
            }
        }
    }
}

impl Default for TrainSpec {
    fn default() -> Self {
        TrainSpec {
            optimizer: OptimizerName::Adam,
            lr: 1e-3,
            momentum: 0.0,
            weight_decay: 0.0,
            batch_size: 64,
            epochs: 1,
            seed: 1,
            device: "auto".into(),
            precision: Precision::F32,
            accumulate: 1,
            schedule: Schedule::Constant,
            warmup_epochs: 0,
            min_lr: 0.0,
            step_size: 1,
            gamma: 0.1,
            label_smoothing: 0.0,
            augment: AugmentSpec::default(),
            early_stopping: None,
            class_weights: None,
        }
    }
}

/// `[init]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitSpec {
    /// A revision or run tag whose weights start this run ("" = fresh initialisation).
    pub from: String,
    /// Tensor-name prefixes to freeze, each ending at a '.' boundary (one prefix may be given
    /// as a plain string: `--set init.freeze=conv.`).
    #[serde(deserialize_with = "one_or_many")]
    pub freeze: Vec<String>,
}

/// The largest `train.augment.crop_padding`: beyond it a crop is mostly padding.
const MAX_CROP_PADDING: usize = 64;

/// Keys whose schema type is a string: for these `--set` takes the raw text unless it is a
/// quoted TOML string (DESIGN §3), so `init.from=2024` is the string "2024".
const STRING_KEYS: &[&str] = &[
    "model.name",
    "data.format",
    "data.train_images",
    "data.train_labels",
    "data.test_images",
    "data.test_labels",
    "train.optimizer",
    "train.device",
    "train.precision",
    "train.schedule",
    "init.from",
];

/// A spec as it ran: the typed, resolved spec plus where each key came from.
#[derive(Debug, Clone)]
pub struct ResolvedSpec {
    /// The resolved spec: defaults filled in.
    pub spec: Spec,
    /// The spec file.
    pub path: PathBuf,
    /// The `--set` arguments, in order.
    pub overrides: Vec<String>,
    /// The spec file's text, for locating keys in later messages.
    text: String,
    /// The key path of each override, with the argument as given.
    override_keys: Vec<(Vec<String>, String)>,
}

impl ResolvedSpec {
    /// Where `dotted.key`'s value came from: `file:line`, `--set KEY=VALUE`, or the default.
    pub fn origin(&self, key: &str) -> String {
        Origins {
            path: &self.path,
            text: &self.text,
            overrides: &self.override_keys,
        }
        .of(key)
    }
}

/// Where a key's value came from, for error messages.
struct Origins<'a> {
    path: &'a Path,
    text: &'a str,
    overrides: &'a [(Vec<String>, String)],
}

impl Origins<'_> {
    fn of(&self, key: &str) -> String {
        // An override of the key, of a key inside it (`train.early_stopping.patience` for
        // `train.early_stopping`) or of the table holding it.
        let touches = |set: &str| {
            set == key
                || set.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
                || key.strip_prefix(set).is_some_and(|r| r.starts_with('.'))
        };
        if let Some((_, arg)) = self
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| touches(&k.join(".")))
        {
            return format!("--set {arg}");
        }
        match key_span(self.text, key) {
            Some(offset) => format!("{}:{}", self.path.display(), line_col(self.text, offset).0),
            None => format!("{} (default)", self.path.display()),
        }
    }
}

/// Loads `path`, applies `--set` overrides, validates and resolves.
pub fn load(path: &Path, overrides: &[String]) -> Result<ResolvedSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, overrides)
}

/// [`load`] on text already read; `path` is used in messages only.
pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<ResolvedSpec, SpecError> {
    // 1. The file alone, for errors with file lines.
    let mut table: toml::Table = toml::from_str(text).map_err(|e| schema_error(path, text, &e))?;
    toml::from_str::<Spec>(text).map_err(|e| schema_error(path, text, &e))?;

    // 2. Each override in turn.
    let mut parsed_overrides = Vec::new();
    for arg in overrides {
        let (key, value) = parse_override(arg)?;
        set_key(&mut table, &key, value).map_err(|message| SpecError::Override {
            arg: arg.clone(),
            message,
        })?;
        toml::Value::Table(table.clone())
            .try_into::<Spec>()
            .map_err(|e| SpecError::Override {
                arg: arg.clone(),
                message: e.message().trim().to_string(),
            })?;
        parsed_overrides.push((key, arg.clone()));
    }
    let spec: Spec = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| SpecError::Override {
            arg: overrides.join(" "),
            message: e.message().to_string(),
        })?;

    // 3. Semantic checks and defaults.
    let origins = Origins {
        path,
        text,
        overrides: &parsed_overrides,
    };
    let spec = validate(spec, &origins)?;
    Ok(ResolvedSpec {
        spec,
        path: path.to_path_buf(),
        overrides: overrides.to_vec(),
        text: text.to_string(),
        override_keys: parsed_overrides,
    })
}

fn parse_override(arg: &str) -> Result<(Vec<String>, toml::Value), SpecError> {
    let bad = |message: &str| SpecError::Override {
        arg: arg.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE"))?;
    let key = key.trim();
    let path: Vec<String> = key.split('.').map(|s| s.trim().to_string()).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad("the key is empty or has an empty part"));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let value = if STRING_KEYS.contains(&key) {
        match parsed {
            Some(toml::Value::String(s)) if is_quoted(raw) => toml::Value::String(s),
            // Array of paths for the image keys.
            Some(v @ toml::Value::Array(_)) if key.ends_with("_images") => v,
            _ => toml::Value::String(raw.to_string()),
        }
    } else {
        parsed.unwrap_or_else(|| toml::Value::String(raw.to_string()))
    };
    Ok((path, value))
}

fn is_quoted(raw: &str) -> bool {
    let t = raw.trim();
    t.len() >= 2
        && ((t.starts_with('"') && t.ends_with('"')) || (t.starts_with('\'') && t.ends_with('\'')))
}

fn set_key(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", path[..=i].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn validate(mut spec: Spec, origins: &Origins) -> Result<Spec, SpecError> {
    let invalid = |key: &str, message: String| SpecError::Invalid {
        origin: origins.of(key),
        key: key.to_string(),
        message,
    };
    let not_for = |key: &str, name: ModelName| {
        invalid(key, format!("does not apply to model {:?}", name.as_str()))
    };
    let check_p = |key: &str, p: Option<f64>| -> Result<(), SpecError> {
        match p {
            Some(p) if !(0.0..1.0).contains(&p) => {
                Err(invalid(key, format!("must be in [0, 1), got {p}")))
            }
            _ => Ok(()),
        }
    };

    // Model options apply to some models only: an option that would be silently ignored is
    // an error, not a no-op.
    let m = &mut spec.model;
    match m.name {
        ModelName::Mlp => {
            if m.conv_dropout.is_some() {
                return Err(not_for("model.conv_dropout", m.name));
            }
            let hidden = m.hidden.get_or_insert_with(|| vec![128]);
            if hidden.contains(&0) {
                return Err(invalid(
                    "model.hidden",
                    "layer widths must be positive".into(),
                ));
            }
            m.dropout.get_or_insert(0.0);
        }
        ModelName::Cnn => {
            if m.hidden.is_some() {
                return Err(not_for("model.hidden", m.name));
            }
            m.dropout.get_or_insert(0.5);
            m.conv_dropout.get_or_insert(0.25);
        }
        ModelName::SeedCnn | ModelName::Resnet18 => {
            for (key, set) in [
                ("model.hidden", m.hidden.is_some()),
                ("model.dropout", m.dropout.is_some()),
                ("model.conv_dropout", m.conv_dropout.is_some()),
            ] {
                if set {
                    return Err(not_for(key, m.name));
                }
            }
            if m.name == ModelName::Resnet18 && *m.width.get_or_insert(64) == 0 {
                return Err(invalid("model.width", "must be at least 1".into()));
            }
        }
    }
    if m.width.is_some() && m.name != ModelName::Resnet18 {
        return Err(not_for("model.width", m.name));
    }
    check_p("model.dropout", m.dropout)?;
    check_p("model.conv_dropout", m.conv_dropout)?;

    let d = &spec.data;
    if d.train_images.is_empty() || d.train_images.iter().any(|p| p.is_empty()) {
        return Err(invalid("data.train_images", "must name a file".into()));
    }
    if d.test_images.is_empty() || d.test_images.iter().any(|p| p.is_empty()) {
        return Err(invalid("data.test_images", "must name a file".into()));
    }
    match d.format {
        DataFormat::Idx => {
            for (key, images, labels) in [
                ("data.train", &d.train_images, &d.train_labels),
                ("data.test", &d.test_images, &d.test_labels),
            ] {
                if images.len() != 1 {
                    return Err(invalid(
                        &format!("{key}_images"),
                        "idx takes one images file".into(),
                    ));
                }
                if labels.is_empty() {
                    return Err(invalid(
                        &format!("{key}_labels"),
                        "idx needs a labels file".into(),
                    ));
                }
            }
        }
        DataFormat::Cifar10 => {
            for key in ["data.train_labels", "data.test_labels"] {
                let set = if key == "data.train_labels" {
                    &d.train_labels
                } else {
                    &d.test_labels
                };
                if !set.is_empty() {
                    return Err(invalid(
                        key,
                        "cifar10 files carry their labels; remove this key".into(),
                    ));
                }
            }
        }
    }
    if !(0.0..1.0).contains(&d.val_fraction) {
        return Err(invalid(
            "data.val_fraction",
            format!("must be in [0, 1), got {}", d.val_fraction),
        ));
    }
    if d.val_fraction > 0.0 && d.val_limit > 0 {
        return Err(invalid(
            "data.val_fraction",
            "give data.val_fraction or data.val_limit, not both".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = d.classes.iter().find(|c| !seen.insert(**c)) {
        return Err(invalid(
            "data.classes",
            format!("label {dup} is listed twice"),
        ));
    }
    if d.classes.len() == 1 {
        return Err(invalid(
            "data.classes",
            "list at least two classes (or none, for all)".into(),
        ));
    }
    let caps = d.class_caps().map_err(|m| invalid("data.class_limit", m))?;
    for label in caps.keys() {
        if !d.classes.is_empty() && !d.classes.contains(label) {
            return Err(invalid(
                "data.class_limit",
                format!("label {label} is not one of data.classes {:?}", d.classes),
            ));
        }
    }
    if caps.values().any(|&n| n == 0) {
        return Err(invalid(
            "data.class_limit",
            "a cap must be at least 1 (leave a class out with data.classes)".into(),
        ));
    }
    if let Some(n) = &d.normalize {
        if n.mean.is_empty() || n.mean.len() != n.std.len() {
            return Err(invalid(
                "data.normalize",
                "mean and std need the same number of values (one, or one per channel)".into(),
            ));
        }
        if n.std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
            return Err(invalid(
                "data.normalize",
                "std values must be positive".into(),
            ));
        }
    }

    let t = &spec.train;
    if !(t.lr > 0.0 && t.lr.is_finite()) {
        return Err(invalid(
            "train.lr",
            format!("must be positive, got {}", t.lr),
        ));
    }
    if !(0.0..1.0).contains(&t.momentum) {
        return Err(invalid(
            "train.momentum",
            format!("must be in [0, 1), got {}", t.momentum),
        ));
    }
    if t.momentum != 0.0 && t.optimizer != OptimizerName::Sgd {
        return Err(invalid(
            "train.momentum",
            "applies to optimizer \"sgd\" only".into(),
        ));
    }
    if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
        return Err(invalid("train.weight_decay", "must be >= 0".into()));
    }
    for (key, v) in [
        ("train.batch_size", t.batch_size),
        ("train.epochs", t.epochs),
        ("train.accumulate", t.accumulate),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1".into()));
        }
    }
    crate::device::DeviceRequest::parse(&t.device).map_err(|m| invalid("train.device", m))?;
    if !spec.init.freeze.is_empty() && spec.init.from.trim().is_empty() {
        return Err(invalid(
            "init.freeze",
            "freezing needs init.from: frozen random weights would stay random".into(),
        ));
    }
    if let Some(p) = spec
        .init
        .freeze
        .iter()
        .find(|p| p.is_empty() || !p.ends_with('.'))
    {
        return Err(invalid(
            "init.freeze",
            format!("{p:?}: a prefix ends at a '.' boundary, e.g. \"conv1.\""),
        ));
    }
    let t = &spec.train;
    if t.warmup_epochs > 0 && t.warmup_epochs >= t.epochs {
        return Err(invalid(
            "train.warmup_epochs",
            format!(
                "must be fewer than train.epochs ({}), got {}",
                t.epochs, t.warmup_epochs
            ),
        ));
    }
    if t.step_size == 0 {
        return Err(invalid("train.step_size", "must be at least 1".into()));
    }
    if !(t.gamma > 0.0 && t.gamma <= 1.0) {
        return Err(invalid(
            "train.gamma",
            format!("must be in (0, 1], got {}", t.gamma),
        ));
    }
    if !(t.min_lr >= 0.0 && t.min_lr <= t.lr) {
        return Err(invalid(
            "train.min_lr",
            format!("must be in [0, train.lr], got {}", t.min_lr),
        ));
    }
    if !(0.0..1.0).contains(&t.label_smoothing) {
        return Err(invalid(
            "train.label_smoothing",
            format!("must be in [0, 1), got {}", t.label_smoothing),
        ));
    }
    if let Some(stop) = &t.early_stopping {
        if stop.patience == 0 {
            return Err(invalid(
                "train.early_stopping",
                "patience must be at least 1".into(),
            ));
        }
        if !(stop.min_delta >= 0.0 && stop.min_delta.is_finite()) {
            return Err(invalid(
                "train.early_stopping",
                format!("min_delta must be a number ≥ 0, got {}", stop.min_delta),
            ));
        }
        if spec.data.val_limit == 0 && spec.data.val_fraction == 0.0 {
            return Err(invalid(
                "train.early_stopping",
                "needs a validation set (data.val_fraction or data.val_limit): early stopping never looks at the test set".into(),
            ));
        }
    }
    if let Some(ClassWeights::Explicit(w)) = &t.class_weights {
        if w.len() < 2 || w.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(invalid(
                "train.class_weights",
                "give one positive weight per class (at least two)".into(),
            ));
        }
    }
    if t.augment.crop_padding > MAX_CROP_PADDING {
        return Err(invalid(
            "train.augment.crop_padding",
            format!(
                "must be at most {MAX_CROP_PADDING}, got {}",
                t.augment.crop_padding
            ),
        ));
    }
    spec.gate
        .check()
        .map_err(|(key, message)| invalid(key, message))?;
    Ok(spec)
}

/// Flattens a spec into `dotted.key = value` pairs (the record's params and `exp diff` use it).
pub fn flatten(spec: &Spec) -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = toml::Value::try_from(spec) {
        walk("", &value, &mut out);
    }
    out
}

/// Checks that `name` can name an experiment (`experiments/<name>.toml`).
pub fn check_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        return Err(SpecError::BadName(name.to_string()));
    }
    Ok(())
}

// ---- locating keys in the text, for line numbers ----

fn schema_error(path: &Path, text: &str, e: &toml::de::Error) -> SpecError {
    let (line, column, key) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (
                l,
                c,
                key_at(text, span.start)
                    .map(|k| format!("{k}: "))
                    .unwrap_or_default(),
            )
        }
        None => (1, 1, String::new()),
    };
    SpecError::Schema {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message: e.message().trim().to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset of `dotted.key` in the document, if it is written there.
fn key_span(text: &str, dotted: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut span = None;
    for part in dotted.split('.') {
        let table = item.as_table_like()?;
        let (key, value) = table.get_key_value(part)?;
        span = key.span().or_else(|| value.span());
        item = value;
    }
    span.map(|s| s.start)
}

/// The dotted key whose key or value contains `offset`, the innermost one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut found = None;
    fn walk(prefix: &str, item: &toml_edit::Item, offset: usize, found: &mut Option<String>) {
        let Some(table) = item.as_table_like() else {
            return;
        };
        for (k, v) in table.iter() {
            let key = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            let key_span = table.get_key_value(k).and_then(|(kk, _)| kk.span());
            let hit = |s: Option<std::ops::Range<usize>>| {
                s.is_some_and(|s| s.contains(&offset) || s.start == offset)
            };
            if hit(key_span) || hit(v.span()) {
                *found = Some(key.clone());
            }
            walk(&key, v, offset, found);
        }
    }
    walk("", doc.as_item(), offset, &mut found);
    // A key missing from a table is reported at the table's header: name the table.
    found.or_else(|| {
        let line_start = text[..offset.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = text[line_start..].lines().next()?.trim();
        line.strip_prefix('[')
            .and_then(|l| l.strip_suffix(']'))
            .map(|t| t.trim().to_string())
    })
}

/// Every key the schema knows, for `exp run --help` and the docs.
pub fn schema_keys() -> BTreeSet<&'static str> {
    [
        "model.name",
        "model.hidden",
        "model.dropout",
        "model.conv_dropout",
        "model.width",
        "data.format",
        "data.train_images",
        "data.train_labels",
        "data.test_images",
        "data.test_labels",
        "data.normalize",
        "data.train_limit",
        "data.val_limit",
        "data.test_limit",
        "data.val_fraction",
        "data.classes",
        "data.class_limit",
        "train.optimizer",
        "train.lr",
        "train.momentum",
        "train.weight_decay",
        "train.batch_size",
        "train.epochs",
        "train.seed",
        "train.device",
        "train.precision",
        "train.accumulate",
        "train.schedule",
        "train.warmup_epochs",
        "train.min_lr",
        "train.step_size",
        "train.gamma",
        "train.label_smoothing",
        "train.augment",
        "train.augment.crop_padding",
        "train.augment.flip",
        "train.class_weights",
        "train.early_stopping",
        "train.early_stopping.patience",
        "train.early_stopping.metric",
        "train.early_stopping.min_delta",
        "init.from",
        "init.freeze",
        "gate.metrics",
        "gate.max_drop",
        "gate.max_relative_drop",
        "gate.min",
        "gate.max",
        "gate.alpha",
        "gate.allow_different_eval_set",
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    fn train(schedule: Schedule, epochs: usize, warmup: usize) -> TrainSpec {
        TrainSpec {
            lr: 0.1,
            epochs,
            schedule,
            warmup_epochs: warmup,
            min_lr: 0.01,
            step_size: 2,
            gamma: 0.5,
            ..TrainSpec::default()
        }
    }

    #[test]
    fn schedules_follow_pytorch() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let c = train(Schedule::Constant, 3, 0);
        (1..=3).for_each(|e| close(c.learning_rate(e), 0.1));
        // CosineAnnealingLR(T_max = 4, eta_min = 0.01) stepped per epoch: 0.1, 0.08682, 0.055, 0.02318.
        let c = train(Schedule::Cosine, 4, 0);
        close(c.learning_rate(1), 0.1);
        close(
            c.learning_rate(2),
            0.01 + 0.09 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0,
        );
        close(c.learning_rate(3), 0.055);
        close(
            c.learning_rate(4),
            0.01 + 0.09 * (1.0 + (3.0 * std::f64::consts::PI / 4.0).cos()) / 2.0,
        );
        // StepLR(step_size = 2, gamma = 0.5): 0.1, 0.1, 0.05, 0.05, 0.025.
        let s = train(Schedule::Step, 5, 0);
        let expected = [0.1, 0.1, 0.05, 0.05, 0.025];
        (1..=5).for_each(|e| close(s.learning_rate(e), expected[e - 1]));
        // Two warm-up epochs (lr/3, 2·lr/3), then cosine over the remaining two.
        let w = train(Schedule::Cosine, 4, 2);
        close(w.learning_rate(1), 0.1 / 3.0);
        close(w.learning_rate(2), 0.2 / 3.0);
        close(w.learning_rate(3), 0.1);
        close(w.learning_rate(4), 0.055);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MNIST: &str = r#"[model]
name = "seed-cnn"

[data]
format = "idx"
train_images = "mnist/train-images-idx3-ubyte.gz"
train_labels = "mnist/train-labels-idx1-ubyte.gz"
test_images = "mnist/t10k-images-idx3-ubyte.gz"
test_labels = "mnist/t10k-labels-idx1-ubyte.gz"
normalize = { mean = [0.1307], std = [0.3081] }

[train]
lr = 1e-3
epochs = 1
"#;

    fn p(text: &str, sets: &[&str]) -> Result<Spec, SpecError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse(Path::new("experiments/x.toml"), text, &sets).map(|r| r.spec)
    }

    #[test]
    fn parses_and_fills_defaults() {
        let s = p(MNIST, &[]).unwrap();
        assert_eq!(s.model.name, ModelName::SeedCnn);
        assert_eq!(s.train.batch_size, 64);
        assert_eq!(s.train.optimizer, OptimizerName::Adam);
        assert_eq!(
            s.data.train_images,
            vec!["mnist/train-images-idx3-ubyte.gz"]
        );
        let mlp = p(MNIST, &["model.name=mlp"]).unwrap();
        assert_eq!(mlp.model.hidden, Some(vec![128]));
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = MNIST.replace("epochs = 1", "epochs = 1\nlearning_rate = 3");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("experiments/x.toml:15:1"), "{e}");
        assert!(e.contains("learning_rate"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = MNIST.replace("epochs = 1", "epochs = \"ten\"");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("experiments/x.toml:14:10"), "{e}");
        assert!(e.contains("train.epochs"), "{e}");
    }

    #[test]
    fn missing_required_key_names_table() {
        let text = MNIST.replace("format = \"idx\"\n", "");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("format"), "{e}");
        assert!(e.contains("experiments/x.toml:"), "{e}");
    }

    #[test]
    fn overrides_follow_design_rules() {
        let s = p(
            MNIST,
            &[
                "train.epochs=3",
                "train.lr=0.01",
                "model.name=mlp",
                "model.hidden=[64,32]",
            ],
        )
        .unwrap();
        assert_eq!(s.train.epochs, 3);
        assert_eq!(s.train.lr, 0.01);
        assert_eq!(s.model.hidden, Some(vec![64, 32]));
        // Strings: raw text unless quoted; numbers-looking text stays a string.
        let s = p(MNIST, &["train.device=cpu"]).unwrap();
        assert_eq!(s.train.device, "cpu");
        let s = p(MNIST, &["train.device=\"cpu\""]).unwrap();
        assert_eq!(s.train.device, "cpu");
        let s = p(MNIST, &["data.train_labels=2024"]).unwrap();
        assert_eq!(s.data.train_labels, "2024");
    }

    #[test]
    fn override_errors_name_the_key() {
        let e = p(MNIST, &["train.epochs=banana"]).unwrap_err().to_string();
        assert!(e.starts_with("--set train.epochs=banana"), "{e}");
        let e = p(MNIST, &["train.nope=1"]).unwrap_err().to_string();
        assert!(
            e.contains("--set train.nope=1") && e.contains("nope"),
            "{e}"
        );
        let e = p(MNIST, &["trainepochs"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = p(
            MNIST,
            &["train.early_stopping.patience=0", "data.val_limit=5"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--set train.early_stopping.patience=0"),
            "{e}"
        );
        let e = p(MNIST, &["train.lr=-1"]).unwrap_err().to_string();
        assert!(
            e.contains("--set train.lr=-1") && e.contains("train.lr"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_point_at_the_file_line() {
        let text = MNIST.replace("lr = 1e-3", "lr = 0.0");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(
            e.contains("experiments/x.toml:13") && e.contains("train.lr"),
            "{e}"
        );
        let e = p(MNIST, &["model.hidden=[10]"]).unwrap_err().to_string();
        assert!(e.contains("does not apply"), "{e}");
        let e = p(MNIST, &["model.width=8"]).unwrap_err().to_string();
        assert!(
            e.contains("model.width") && e.contains("does not apply"),
            "{e}"
        );
        let r = p(MNIST, &["model.name=resnet18"]).unwrap();
        assert_eq!(r.model.width, Some(64));
        assert!(p(MNIST, &["model.name=resnet18", "model.width=0"]).is_err());
    }

    #[test]
    fn flatten_lists_resolved_keys() {
        let s = p(MNIST, &[]).unwrap();
        let flat = flatten(&s);
        let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"train.batch_size"));
        assert!(keys.contains(&"data.normalize.mean"));
        for (k, _) in &flat {
            let root = k.split('.').take(2).collect::<Vec<_>>().join(".");
            assert!(
                schema_keys().contains(root.as_str()),
                "{k} not in schema_keys"
            );
        }
    }

    #[test]
    fn classes_and_class_weights_are_checked() {
        let s = p(
            MNIST,
            &[
                "data.classes=[3, 5]",
                "data.class_limit={5 = 20}",
                "train.class_weights=inverse-frequency",
            ],
        )
        .unwrap();
        assert_eq!(s.data.classes, vec![3, 5]);
        assert_eq!(
            s.data.class_caps().unwrap(),
            BTreeMap::from([(5u8, 20usize)])
        );
        assert_eq!(
            s.train.class_weights,
            Some(ClassWeights::Rule(ClassWeightRule::InverseFrequency))
        );
        let s = p(MNIST, &["train.class_weights=[1, 2.5]"]).unwrap();
        assert_eq!(
            s.train.class_weights,
            Some(ClassWeights::Explicit(vec![1.0, 2.5]))
        );
        for (sets, key) in [
            (&["data.classes=[3, 3]"][..], "data.classes"),
            (&["data.classes=[3]"][..], "data.classes"),
            (&["data.classes=[300]"][..], "data.classes"),
            (&["data.class_limit={x = 2}"][..], "data.class_limit"),
            (&["data.class_limit={1 = 0}"][..], "data.class_limit"),
            (
                &["data.classes=[3, 5]", "data.class_limit={4 = 2}"][..],
                "data.class_limit",
            ),
            (&["train.class_weights=[1, -1]"][..], "train.class_weights"),
            (&["train.class_weights=balanced"][..], "train.class_weights"),
        ] {
            let e = p(MNIST, sets).unwrap_err().to_string();
            assert!(e.contains(key), "{sets:?}: {e}");
        }
    }

    #[test]
    fn validation_and_early_stopping_are_checked() {
        let s = p(
            MNIST,
            &[
                "data.val_fraction=0.2",
                "train.early_stopping={patience = 3, metric = \"val_accuracy\"}",
            ],
        )
        .unwrap();
        let stop = s.train.early_stopping.unwrap();
        assert_eq!((stop.patience, stop.metric), (3, StopMetric::ValAccuracy));
        assert_eq!(stop.min_delta, 0.0);
        let default_metric = p(
            MNIST,
            &["data.val_limit=10", "train.early_stopping={patience = 1}"],
        )
        .unwrap();
        assert_eq!(
            default_metric.train.early_stopping.unwrap().metric,
            StopMetric::ValLoss
        );
        for sets in [
            &["data.val_fraction=1.0"][..],
            &["data.val_fraction=0.1", "data.val_limit=10"][..],
            &["train.early_stopping={patience = 2}"][..],
            &["data.val_limit=10", "train.early_stopping={patience = 0}"][..],
            &[
                "data.val_limit=10",
                "train.early_stopping={patience = 1, metric = \"eval_loss\"}",
            ][..],
        ] {
            assert!(p(MNIST, sets).is_err(), "{sets:?}");
        }
    }

    #[test]
    fn freeze_prefixes_are_checked() {
        let s = p(
            MNIST,
            &["init.from=run/f-x/mnist-cnn/1", "init.freeze=[\"conv.\"]"],
        )
        .unwrap();
        assert_eq!(s.init.freeze, vec!["conv."]);
        let one = p(MNIST, &["init.from=v1", "init.freeze=conv."]).unwrap();
        assert_eq!(one.init.freeze, vec!["conv."]);
        for sets in [
            &["init.freeze=[\"conv.\"]"][..],
            &["init.from=v1", "init.freeze=[\"conv\"]"][..],
            &["init.from=v1", "init.freeze=[\"\"]"][..],
        ] {
            let e = p(MNIST, sets).unwrap_err().to_string();
            assert!(e.contains("init.freeze"), "{sets:?}: {e}");
        }
    }

    #[test]
    fn experiment_names_are_checked() {
        assert!(check_name("mnist-cnn").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
    }
}
