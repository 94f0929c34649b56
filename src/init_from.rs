//! Transfer learning (`[init]`, docs/design.md §3): start a run from the weights of an earlier run,
//! read from Git (record and LFS pointer at a revision) and the local LFS store, never from
//! the network, or from a local `.safetensors` file in the model's own tensor names
//! (torchvision's for the ResNets, Hugging Face's for vit: docs/models.md); freeze tensors by
//! name prefix; follow the chain of parents (`exp lineage`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use git2::Repository;
use serde::Serialize;

use crate::compare::{self, CompareError};
use crate::model::Model;
use crate::record::InitRecord;
use crate::record::RunRecord;
use crate::weights::WeightsError;

/// Why a run cannot start from the weights `init.from` names.
#[derive(Debug, thiserror::Error)]
pub enum InitFromError {
    /// The revision or its record cannot be read.
    #[error("init.from = {from:?}: {source}")]
    Revision {
        /// As given.
        from: String,
        /// The cause.
        source: CompareError,
    },
    /// The revision holds several runs and none is the obvious one.
    #[error("init.from = {from:?}: the revision holds the runs of {names:?}; which one is meant is not clear")]
    Ambiguous {
        /// As given.
        from: String,
        /// The experiments recorded there.
        names: Vec<String>,
    },
    /// The weights of the parent cannot be read.
    #[error("init.from = {from:?}: {message}")]
    Weights {
        /// As given.
        from: String,
        /// What is wrong.
        message: String,
    },
    /// The LFS object of the parent's weights is not in the local store.
    #[error(
        "init.from = {from:?}: the weights of {experiment} (LFS object {oid}) are not in the local store {path}{}",
        fetch.as_ref().map(|e| format!(", and fetching them from the default remote failed: {e}")).unwrap_or_default()
    )]
    MissingObject {
        /// As given.
        from: String,
        /// The parent experiment.
        experiment: String,
        /// The object id.
        oid: String,
        /// Where it was looked for.
        path: String,
        /// Why fetching it from the default remote failed, when exp tried.
        fetch: Option<String>,
    },
    /// The parent's tensors do not fit this model.
    #[error("init.from = {from:?}: {message}")]
    Mismatch {
        /// As given.
        from: String,
        /// What does not fit.
        message: String,
    },
    /// A weights file cannot be read.
    #[error("init.from = {from:?}: cannot read the weights file {}: {message}", path.display())]
    File {
        /// As given.
        from: String,
        /// Where it was looked for.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weights file's tensors do not fit this model.
    #[error("init.from = {from:?}: the file's tensors do not fit this {model} model: {}", differences.join("; "))]
    FileMismatch {
        /// As given.
        from: String,
        /// The model the run trains.
        model: String,
        /// The missing, unexpected and misshapen tensors, one list each.
        differences: Vec<String>,
    },
    /// A freeze prefix matches no tensor.
    #[error("init.freeze: {prefix:?} matches none of the model's tensors ({names})")]
    Freeze {
        /// The prefix.
        prefix: String,
        /// The tensor names, for the message.
        names: String,
    },
}

impl InitFromError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            InitFromError::Revision { source, .. } => source.hint(),
            InitFromError::Ambiguous { .. } => Some(
                "name the parent by its run tag (`git tag -l 'run/*'`), which names the experiment"
                    .into(),
            ),
            InitFromError::MissingObject { .. } => Some(
                "exp looked in the local store and on the default remote; fetch the parent's weights with `git lfs fetch REMOTE REV`, or check out the parent revision and run `exp pull`".into(),
            ),
            InitFromError::Mismatch { .. } => Some(
                "start from a run of the same architecture (model.name and its options)".into(),
            ),
            InitFromError::Freeze { .. } => Some(
                "a prefix is the start of tensor names, ending at a '.', e.g. \"conv1.\"".into(),
            ),
            InitFromError::File { .. } => Some(
                "init.from takes a run (tag, commit, branch) or a .safetensors file; a relative path is relative to the repository's root".into(),
            ),
            InitFromError::FileMismatch { .. } => Some(
                "the file must hold this model's tensors in torchvision's (resnet18, resnet50) or Hugging Face's (vit) names and shapes: check model.width, model.stem, model.depth, model.heads, model.patch_size, model.mlp_dim and the image size against it (docs/models.md)".into(),
            ),
            InitFromError::Weights { .. } => None,
        }
    }
}

/// The weights of a parent run or file, loaded and checked.
pub struct Parent {
    /// What the record will say about it.
    pub record: InitRecord,
    /// Where the weights come from.
    pub source: ParentSource,
    tensors: HashMap<String, Tensor>,
}

/// Where a parent's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ParentSource {
    /// An earlier run.
    Run {
        /// Its architecture.
        architecture: String,
        /// Its number of classes.
        classes: usize,
    },
    /// A `.safetensors` file (the record's `init.from` is the path as given; `commit`,
    /// `experiment` and `run_id` are empty).
    File {
        /// The file, resolved.
        path: PathBuf,
    },
}

/// Tensors a weights file may hold that exp has no use for: torch's batch norm step counter.
const IGNORED_SUFFIXES: [&str; 1] = [".num_batches_tracked"];

/// Whether `init.from` names a weights file rather than a run.
pub fn names_file(from: &str) -> bool {
    from.ends_with(".safetensors")
}

/// Reads the parent run `from` names: its record and LFS pointer from Git, its weights from
/// the local LFS store (checked against the record's tensor hash). `experiment` is the run's
/// own experiment, used when the revision holds several records.
pub fn load_parent(
    repo: &Repository,
    from: &str,
    experiment: &str,
    device: &Device,
) -> Result<Parent, InitFromError> {
    let revision = |source| InitFromError::Revision {
        from: from.to_string(),
        source,
    };
    let weights_error = |message: String| InitFromError::Weights {
        from: from.to_string(),
        message,
    };
    if names_file(from) {
        let root = repo.workdir().unwrap_or_else(|| repo.path());
        return load_file(&root.join(from), from, device);
    }
    let snapshot = compare::resolve(repo, from).map_err(revision)?;
    let commit = snapshot.commit.as_ref().ok_or_else(|| {
        weights_error("names a tree, not a commit: give a commit, branch or run tag".into())
    })?;
    let blobs = compare::record_blobs(repo, &snapshot.tree).map_err(revision)?;
    if blobs.is_empty() {
        return Err(revision(CompareError::NoRecords(from.to_string())));
    }
    let name = compare::run_experiment(from, commit.message().unwrap_or(""), &blobs, experiment)
        .ok_or_else(|| InitFromError::Ambiguous {
            from: from.to_string(),
            names: blobs.keys().cloned().collect(),
        })?;
    let record: RunRecord =
        compare::parse_record(repo, blobs[&name], from, &name).map_err(revision)?;

    let (tensors, hash) =
        crate::weights::load_committed(repo, &snapshot.tree, &name, &record, device).map_err(
            |e| match e {
                WeightsError::MissingObject {
                    experiment,
                    oid,
                    path,
                    fetch,
                } => InitFromError::MissingObject {
                    from: from.to_string(),
                    experiment,
                    oid,
                    path,
                    fetch,
                },
                other => weights_error(other.to_string()),
            },
        )?;
    Ok(Parent {
        record: InitRecord {
            from: from.to_string(),
            commit: commit.id().to_string(),
            experiment: name.clone(),
            run_id: record.run.id.clone(),
            tag: compare::run_tag_of(repo, commit.id(), &name),
            tensor_hash: hash,
            reinitialized: Vec::new(),
            frozen: Vec::new(),
        },
        source: ParentSource::Run {
            architecture: record.model.architecture.clone(),
            classes: record.eval.classes,
        },
        tensors,
    })
}

/// Reads the weights file at `path` (`from` as the spec gives it, for messages and the
/// record). Its tensors are hashed as they are in the file.
pub fn load_file(path: &Path, from: &str, device: &Device) -> Result<Parent, InitFromError> {
    let file_error = |message: String| InitFromError::File {
        from: from.to_string(),
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(file_error("no such file".into()));
    }
    let tensors: BTreeMap<String, Tensor> = candle_core::safetensors::load(path, device)
        .map_err(|e| file_error(e.to_string()))?
        .into_iter()
        .collect();
    let tensor_hash =
        crate::record::tensor_hash(&tensors).map_err(|e| file_error(e.to_string()))?;
    Ok(Parent {
        record: InitRecord {
            from: from.to_string(),
            commit: String::new(),
            experiment: String::new(),
            run_id: String::new(),
            tag: None,
            tensor_hash,
            reinitialized: Vec::new(),
            frozen: Vec::new(),
        },
        source: ParentSource::File {
            path: path.to_path_buf(),
        },
        tensors: tensors.into_iter().collect(),
    })
}

/// At most this many names of each kind in a mismatch message.
const LISTED: usize = 24;

/// `what (n): a, b, …` with at most [`LISTED`] names.
fn listing(what: &str, names: &[String]) -> String {
    let shown = names[..names.len().min(LISTED)].join(", ");
    let more = names.len().saturating_sub(LISTED);
    if more > 0 {
        format!("{what} ({}): {shown}, and {more} more", names.len())
    } else {
        format!("{what} ({}): {shown}", names.len())
    }
}

impl Parent {
    /// Copies the parent's tensors into `model`. With another number of classes than the
    /// parent's, the classifier head keeps its fresh (seeded) initialisation; any other
    /// difference is an error.
    /// A weights file must hold exactly the model's tensors (bar torch's
    /// `num_batches_tracked`, which is ignored) in the model's shapes; only the head may be
    /// absent or sized for another number of classes, and then keeps its fresh initialisation.
    /// Every missing, unexpected and misshapen tensor is listed in the error.
    pub fn apply(&mut self, model: &Model, classes: usize) -> Result<(), InitFromError> {
        let from = self.record.from.clone();
        let mismatch = |message: String| InitFromError::Mismatch {
            from: from.clone(),
            message,
        };
        let parent_classes = match &self.source {
            ParentSource::Run {
                architecture,
                classes,
            } => {
                if architecture != model.name().as_str() {
                    return Err(mismatch(format!(
                        "the parent is a {} model, this run trains a {}",
                        architecture,
                        model.name().as_str()
                    )));
                }
                Some(*classes)
            }
            ParentSource::File { .. } => {
                self.check_file(model, classes)?;
                self.tensors
                    .get(&format!("{}weight", model.head_prefix()))
                    .and_then(|w| w.dims().first().copied())
            }
        };
        let head = model.head_prefix();
        let new_head = parent_classes != Some(classes);
        for (name, var) in model.params().named_state() {
            if new_head && name.starts_with(head) {
                self.record.reinitialized.push(name.clone());
                continue;
            }
            let Some(t) = self.tensors.get(name) else {
                return Err(mismatch(format!("the parent has no tensor {name}")));
            };
            if t.dims() != var.dims() {
                return Err(mismatch(format!(
                    "tensor {name} is {:?} in the parent but {:?} here",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(
                &t.to_dtype(var.dtype())
                    .map_err(|e| mismatch(e.to_string()))?,
            )
            .map_err(|e| mismatch(e.to_string()))?;
        }
        Ok(())
    }
}

impl Parent {
    /// A weights file against `model`: Err listing every missing, unexpected and misshapen
    /// tensor (the head's exempt when the file has none, or one for another class count).
    fn check_file(&self, model: &Model, classes: usize) -> Result<(), InitFromError> {
        let head = model.head_prefix();
        let file_head = self.tensors.get(&format!("{head}weight"));
        let new_head = file_head.and_then(|w| w.dims().first().copied()) != Some(classes);
        let ours = model.params().named_state();
        let skipped = |name: &str| new_head && name.starts_with(head);
        let mut missing = Vec::new();
        let mut misshapen = Vec::new();
        for (name, var) in &ours {
            if skipped(name) {
                continue;
            }
            match self.tensors.get(*name) {
                None => missing.push(name.to_string()),
                Some(t) if t.dims() != var.dims() => misshapen.push(format!(
                    "{name} is {:?} in the file, {:?} here",
                    t.dims(),
                    var.dims()
                )),
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| !ours.contains_key(n) && !skipped(n))
            .filter(|n| !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s)))
            .cloned()
            .collect();
        unexpected.sort();
        let differences: Vec<String> = [
            ("missing tensors", &missing),
            ("unexpected tensors", &unexpected),
            ("shape mismatches", &misshapen),
        ]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(what, names)| listing(what, names))
        .collect();
        if differences.is_empty() {
            return Ok(());
        }
        Err(InitFromError::FileMismatch {
            from: self.record.from.clone(),
            model: model.name().as_str().to_string(),
            differences,
        })
    }
}

/// The tensors of `model` whose names start with one of `prefixes`; Err on a prefix that
/// matches none (a typo would otherwise freeze nothing, silently).
pub fn frozen_names(model: &Model, prefixes: &[String]) -> Result<BTreeSet<String>, InitFromError> {
    let names: Vec<&String> = model.params().named().map(|(k, _)| k).collect();
    let mut frozen = BTreeSet::new();
    for prefix in prefixes {
        let hits: Vec<&&String> = names
            .iter()
            .filter(|n| n.starts_with(prefix.as_str()))
            .collect();
        if hits.is_empty() {
            return Err(InitFromError::Freeze {
                prefix: prefix.clone(),
                names: names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        frozen.extend(hits.into_iter().map(|s| s.to_string()));
    }
    Ok(frozen)
}

/// One run in a lineage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineageEntry {
    /// The run's commit.
    pub commit: String,
    /// Its experiment.
    pub experiment: String,
    /// Its run id.
    pub run_id: String,
    /// Its run tag, when it has one.
    pub tag: Option<String>,
    /// Its test accuracy.
    pub accuracy: Option<f64>,
    /// The tensors it froze.
    pub frozen: Vec<String>,
}

/// The chain of runs the model of experiment `experiment` (None: the only one, or the one
/// the run commit names) at `rev` descends from: that run first, then its parent, and so on.
pub fn lineage(
    repo: &Repository,
    rev: &str,
    experiment: Option<&str>,
) -> Result<Vec<LineageEntry>, InitFromError> {
    let revision = |from: &str, source| InitFromError::Revision {
        from: from.to_string(),
        source,
    };
    let mut chain = Vec::new();
    let mut seen = BTreeSet::new();
    let mut next = Some((rev.to_string(), experiment.map(str::to_string)));
    while let Some((at, name)) = next.take() {
        let snapshot = compare::resolve(repo, &at).map_err(|e| revision(&at, e))?;
        let commit = snapshot.commit.as_ref().map(|c| c.id());
        let blobs = compare::record_blobs(repo, &snapshot.tree).map_err(|e| revision(&at, e))?;
        if blobs.is_empty() {
            return Err(revision(&at, CompareError::NoRecords(at.clone())));
        }
        let message = snapshot
            .commit
            .as_ref()
            .and_then(|c| c.message().map(str::to_string))
            .unwrap_or_default();
        let name = match name {
            Some(n) if blobs.contains_key(&n) => n,
            Some(n) => {
                return Err(InitFromError::Ambiguous {
                    from: format!("{at} (experiment {n} is not recorded there)"),
                    names: blobs.keys().cloned().collect(),
                })
            }
            None => compare::run_experiment(&at, &message, &blobs, "").ok_or_else(|| {
                InitFromError::Ambiguous {
                    from: at.clone(),
                    names: blobs.keys().cloned().collect(),
                }
            })?,
        };
        let record =
            compare::parse_record(repo, blobs[&name], &at, &name).map_err(|e| revision(&at, e))?;
        if !seen.insert(record.run.id.clone()) {
            break;
        }
        let commit = commit.map(|c| c.to_string()).unwrap_or_else(|| at.clone());
        chain.push(LineageEntry {
            tag: git2::Oid::from_str(&commit)
                .ok()
                .and_then(|c| compare::run_tag_of(repo, c, &name)),
            commit,
            experiment: name.clone(),
            run_id: record.run.id.clone(),
            accuracy: record.metrics.values.get("accuracy").copied(),
            frozen: record
                .init
                .as_ref()
                .map(|i| i.frozen.clone())
                .unwrap_or_default(),
        });
        // A run started from a weights file has no parent run: the chain ends there.
        next = record
            .init
            .as_ref()
            .filter(|i| !i.commit.is_empty())
            .map(|i| (i.commit.clone(), Some(i.experiment.clone())));
    }
    Ok(chain)
}
