//! The experiment spec (`experiments/<name>.toml`, docs/design.md §3): one schema, `--set` overrides,
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

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod keys;
mod lines;
mod parse;
pub mod sweep;
mod validate;

pub use parse::{load, override_value, parse, ResolvedSpec};

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
    /// The experiment name is a word exp uses itself.
    #[error("{0:?} cannot be an experiment name: `exp sweep {0}` is a subcommand")]
    ReservedName(String),
}

impl SpecError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SpecError::Read { path, source } => Some(match source.kind() {
                std::io::ErrorKind::NotFound => {
                    let (names, closest) = experiments_near(path);
                    match closest {
                        Some(name) => format!(
                            "did you mean {name}? The experiments here: {} (`exp ls` lists them with their latest runs)",
                            names.join(", ")
                        ),
                        None if !names.is_empty() => format!(
                            "the experiments here: {}; or create {} (see the examples `exp init` writes)",
                            names.join(", "),
                            path.display()
                        ),
                        None => format!(
                            "create {} (see the examples `exp init` writes to experiments/), or check the experiment name",
                            path.display()
                        ),
                    }
                }
                std::io::ErrorKind::InvalidData => format!(
                    "{} is not UTF-8 text: save it as UTF-8 (TOML files are UTF-8)",
                    path.display()
                ),
                std::io::ErrorKind::PermissionDenied => {
                    format!("make {} readable (chmod u+r)", path.display())
                }
                _ => format!("check that {} is a readable file", path.display()),
            }),
            SpecError::Override { .. } => {
                Some("overrides look like --set train.epochs=3 or --set model.hidden=[256,128]".into())
            }
            SpecError::Schema { .. } | SpecError::Invalid { .. } => Some(
                "docs/spec.md lists every key, its type and its range; `exp run --help` lists the keys".into(),
            ),
            SpecError::BadName(_) => {
                Some("`ls experiments/` shows the experiments of this repository".into())
            }
            SpecError::ReservedName(_) => Some(format!(
                "rename the spec file; {} are exp sweep's subcommands",
                RESERVED_NAMES.join(", ")
            )),
        }
    }
}

/// Whether `name` can name a dataset (`datasets/<name>.toml`): letters, digits, `.`, `_`, `-`,
/// not starting with `.` or `-`; Err says why not.
pub fn check_dataset_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        // Git refuses ".." in a ref name, and the name goes into its feature branch's.
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} cannot name a dataset: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.' or '-', no '..'); the manifest is datasets/<name>.toml"
        ))
    }
}

/// The experiments whose specs are in `dir` (an `experiments/` folder): the names of its `*.toml`
/// files, sorted.
pub fn experiment_names(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".toml").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The experiments beside the missing spec `path` (the `*.toml` files of its folder, sorted),
/// and the one whose name is closest to the one asked for, when one is close (a typo, `_` for
/// `-`, another case).
fn experiments_near(path: &std::path::Path) -> (Vec<String>, Option<String>) {
    let wanted = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let names = path
        .parent()
        .and_then(|dir| experiment_names(dir).ok())
        .unwrap_or_default();
    let normal = |s: &str| s.to_lowercase().replace('_', "-");
    let closest = names
        .iter()
        .map(|n| (strsim::damerau_levenshtein(&normal(n), &normal(&wanted)), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n.clone());
    (names, closest)
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
    /// The trials `exp sweep` runs (`sweep.rs`). Like `[gate]`, not a training parameter.
    #[serde(default, skip_serializing)]
    pub sweep: Option<sweep::SweepSpec>,
}

/// `[gate]`: when a merge into develop or main is a regression (docs/gate.md has the rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSpec {
    /// Gated metrics, from `metric::KNOWN_METRICS` (which gives their better direction).
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
        // The gate takes a metric's direction from the table of known metrics, so it can only
        // judge metrics that table knows.
        if let Some(unknown) = self
            .metrics
            .iter()
            .find(|m| crate::metric::known(m).is_none())
        {
            return Err((
                "gate.metrics",
                format!(
                    "names {unknown:?}, which exp does not know; the known metrics are {}",
                    crate::metric::known_names()
                ),
            ));
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
    /// ResNet-50: bottleneck blocks, batch norm, a CIFAR or ImageNet stem.
    Resnet50,
    /// Vision Transformer (candle-transformers' ViT configuration and naming).
    Vit,
}

impl ModelName {
    /// The name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelName::Mlp => "mlp",
            ModelName::SeedCnn => "seed-cnn",
            ModelName::Cnn => "cnn",
            ModelName::Resnet18 => "resnet18",
            ModelName::Resnet50 => "resnet50",
            ModelName::Vit => "vit",
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
    /// resnet18, resnet50: channels of the first stage (default 64; the stages have w, 2w,
    /// 4w, 8w, resnet50's blocks widen them 4× at their outputs); vit: the hidden size
    /// (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// resnet18, resnet50: the stem — `cifar` (3×3 convolution, stride 1, no pooling: small
    /// images) or `imagenet` (7×7, stride 2, then 3×3 max pooling). Default cifar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem: Option<Stem>,
    /// vit: the side of the square patches the image is cut into (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<usize>,
    /// vit: transformer layers (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    /// vit: attention heads per layer; divides `width` (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    /// vit: the hidden size of each layer's MLP (default 2 × width).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_dim: Option<usize>,
}

impl ModelSpec {
    /// Model `name` with no option set: what a spec of just `name = "…"` holds before its
    /// defaults are filled in.
    pub fn named(name: ModelName) -> ModelSpec {
        ModelSpec {
            name,
            hidden: None,
            dropout: None,
            conv_dropout: None,
            width: None,
            stem: None,
            patch_size: None,
            depth: None,
            heads: None,
            mlp_dim: None,
        }
    }
}

/// A ResNet's stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// 3×3 convolution, stride 1, no pooling (CIFAR-sized images).
    Cifar,
    /// 7×7 convolution, stride 2, then 3×3 max pooling with stride 2 (ImageNet-sized images).
    Imagenet,
}

/// Data set file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// LeCun's IDX (MNIST, Fashion-MNIST), raw or gzipped.
    Idx,
    /// The CIFAR-10 binary version: 3073-byte records, label first.
    Cifar10,
    /// A folder of PNG and JPEG files, one sub-folder per class (`data/folder.rs`).
    ImageFolder,
}

impl DataFormat {
    fn image_folder() -> DataFormat {
        DataFormat::ImageFolder
    }

    /// The name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            DataFormat::Idx => "idx",
            DataFormat::Cifar10 => "cifar10",
            DataFormat::ImageFolder => "image-folder",
        }
    }
}

/// `data.normalize`: given, or computed over the training split when the data loads (the
/// record then holds the computed values, so evaluation, export and serving use them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "\"train\" (computed over the training split) or a table { mean = [..], std = [..] }"
)]
pub enum NormalizeSpec {
    /// `"train"`: per-channel mean and standard deviation of the training split.
    Computed(FromTrain),
    /// `{ mean, std }`.
    Given(Normalize),
}

/// The one keyword of a computed normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FromTrain {
    /// Over the training split.
    Train,
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
    /// File format of every file below (image-folder when absent: the format of datasets).
    #[serde(default = "DataFormat::image_folder")]
    pub format: DataFormat,
    /// A dataset committed with `exp data add` (`datasets/<name>.toml`): its folder in the work
    /// tree is read as an image folder, and must match the manifest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dataset: String,
    /// image-folder: the folder, `<path>/<split>/<class>/<file>` (splits train, test, optional
    /// val) or `<path>/<class>/<file>` with `test_fraction`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// image-folder: channels the images are decoded to, 1 (grey, Pillow's luma) or 3 (RGB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<usize>,
    /// image-folder: `[height, width]` every image is resized to (antialiased bilinear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
    /// image-folder without split folders: the fraction of the images held out as the test set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_fraction: f64,
    /// The seed of every draw that decides which example is in which split (test and
    /// validation fractions, limits, class caps). image-folder: 0 unless set; idx and cifar10:
    /// the training seed unless set, as before the key existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    /// image-folder: skip files that do not decode (counted in the record) instead of failing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_corrupt: bool,
    /// Training images (idx) or training batch files (cifar10: one path or a list).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub train_images: Vec<String>,
    /// Training labels (idx only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub train_labels: String,
    /// Test images (idx) or test batch files (cifar10).
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test_images: Vec<String>,
    /// Test labels (idx only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub test_labels: String,
    /// Normalisation of pixels / 255; none means pixels / 255 as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<NormalizeSpec>,
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
    /// The data set's number of classes, for formats that do not fix it (IDX: 10 unless set).
    /// A label at or above it is an error, never an extra class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Keep only these labels, in every split, relabelled 0, 1, … in this order (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<u8>,
    /// Per-class caps on the training split, keyed by the label as the files have it: at most
    /// N examples of that class, the first of the seeded permutation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub class_limit: BTreeMap<String, usize>,
    /// A name for each class, in class order (after `classes`): what exported models and
    /// `exp serve` call the classes. Empty: each class is called by its label in the files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

impl DataSpec {
    /// The classes the files' labels may name: the format's (CIFAR-10: 10), else
    /// `num_classes`, else 10 (MNIST, Fashion-MNIST). An image folder's are its class folders,
    /// known once it is read (0 before: the resolved spec of a run holds the count).
    pub fn file_classes(&self) -> usize {
        match self.format {
            DataFormat::Cifar10 => 10,
            DataFormat::Idx => self.num_classes.unwrap_or(10),
            DataFormat::ImageFolder => self.num_classes.unwrap_or(0),
        }
    }

    /// The seed of the draws that decide the splits (`split_seed`'s rule).
    pub fn split_seed(&self, training_seed: u64) -> u64 {
        match (self.split_seed, self.format) {
            (Some(seed), _) => seed,
            (None, DataFormat::ImageFolder) => 0,
            (None, _) => training_seed,
        }
    }

    /// The number of classes a model of this data has: `classes` when set, else the files'.
    pub fn model_classes(&self) -> usize {
        if self.classes.is_empty() {
            self.file_classes()
        } else {
            self.classes.len()
        }
    }

    /// The name of every class, in class order: `class_names`, else each class's label as the
    /// files have it.
    pub fn class_names(&self) -> Vec<String> {
        if !self.class_names.is_empty() {
            return self.class_names.clone();
        }
        if self.classes.is_empty() {
            (0..self.file_classes()).map(|l| l.to_string()).collect()
        } else {
            self.classes.iter().map(|l| l.to_string()).collect()
        }
    }

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

fn is_false(b: &bool) -> bool {
    !*b
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
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// Floating-point precision of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit floats throughout, exact FP32 arithmetic.
    F32,
    /// 32-bit floats, with convolutions and matrix products on TF32 tensor cores (10-bit
    /// mantissa inputs, f32 accumulation; CUDA only): PyTorch's default for convolutions.
    Tf32,
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
    /// f32 | tf32 | bf16 | f16.
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
    if RESERVED_NAMES.contains(&name) {
        return Err(SpecError::ReservedName(name.to_string()));
    }
    Ok(())
}

/// Words `exp sweep` takes as subcommands, so never experiment names.
pub const RESERVED_NAMES: [&str; 5] = ["status", "resume", "show", "pick", "trial"];

#[cfg(test)]
mod tests;
