//! A trained model on its way out of the repository (docs/design.md §10): the run a revision or a
//! release (`NAME@VERSION`) names, its weights read from the LFS store (never the work tree) and
//! checked against the record, the model rebuilt around them, and what an exported file or a
//! server says about it (provenance, input shape, normalisation, class names). `exp export` and
//! `exp serve` both load through here.

use std::path::Path;

use candle_core::Device;
use git2::Repository;
use serde::Serialize;

use crate::compare::{self, CompareError};
use crate::data::{Dataset, ImageShape, Normalisation};
use crate::model::Model;
use crate::record::RunRecord;
use crate::weights::{Tensors, WeightsError};

/// Why the model a source names cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The revision or its records cannot be read.
    #[error("{0}")]
    Revision(#[from] CompareError),
    /// The revision holds several runs and none is the obvious one.
    #[error("{source_name} holds the runs of {names:?}; which one is meant is not clear")]
    Ambiguous {
        /// As given.
        source_name: String,
        /// The experiments recorded there.
        names: Vec<String>,
    },
    /// The experiment named with `-e` is not recorded at the revision.
    #[error("{source_name} holds no run of {experiment:?} (it holds {names:?})")]
    NoSuchExperiment {
        /// As given.
        source_name: String,
        /// The experiment asked for.
        experiment: String,
        /// The experiments recorded there.
        names: Vec<String>,
    },
    /// `NAME@VERSION` names no release, or a tag that is not a release made through the gate.
    #[error("{0}")]
    Release(String),
    /// The weights cannot be read from the LFS store or do not match the record.
    #[error("{0}")]
    Weights(#[from] WeightsError),
    /// The model cannot be rebuilt from the record and the weights.
    #[error("{0}")]
    Model(String),
}

impl ArtifactError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ArtifactError::Revision(e) => e.hint(),
            ArtifactError::Ambiguous { .. } | ArtifactError::NoSuchExperiment { .. } => Some(
                "name the run by its run tag (`git tag -l 'run/*'`), or the experiment with -e NAME"
                    .into(),
            ),
            ArtifactError::Release(_) => Some(
                "`exp models` lists the released versions; a revision (commit, branch, run tag) names any run".into(),
            ),
            ArtifactError::Weights(WeightsError::MissingObject { .. }) => Some(
                "fetch the weights first: `exp pull`, or `git lfs fetch REMOTE REV`".into(),
            ),
            ArtifactError::Weights(_) | ArtifactError::Model(_) => None,
        }
    }
}

/// Where a model comes from: what exported files and the server report about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    /// The source as given (`run/feature/x/mnist-cnn/2`, `mnist-cnn@1.0.0`, a commit).
    pub source: String,
    /// The experiment.
    pub experiment: String,
    /// The commit holding the record.
    pub commit: String,
    /// The run id.
    pub run_id: String,
    /// The run tag on that commit, when there is one.
    pub run_tag: Option<String>,
    /// The release version, when the source is `NAME@VERSION`.
    pub release: Option<String>,
    /// The LFS oid (sha256) of the weights.
    pub weights_oid: String,
    /// The exp version that trained the model.
    pub trained_by: String,
}

/// A run's model, loaded and described.
pub struct Artifact {
    /// Where it comes from.
    pub provenance: Provenance,
    /// The run record.
    pub record: RunRecord,
    /// The weights, by tensor name, as the LFS object holds them.
    pub tensors: Tensors,
    /// The model, with the weights loaded, on the device it was loaded for.
    pub model: Model,
    /// One input image's shape.
    pub input: ImageShape,
    /// How pixels become inputs.
    pub normalisation: Normalisation,
    /// A name for each class, in class order.
    pub class_names: Vec<String>,
}

/// Splits `NAME@VERSION` (VERSION a semantic version, with or without a leading `v`) from a
/// revision; None for anything else, so `HEAD@{1}` stays a revision.
pub fn release_source(source: &str) -> Option<(&str, String)> {
    let (name, version) = source.rsplit_once('@')?;
    let version = version.strip_prefix('v').unwrap_or(version);
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (valid_name && semver::Version::parse(version).is_ok()).then(|| (name, version.to_string()))
}

/// Loads the model `source` names onto `device`: a revision (commit, branch, run tag) holding a
/// run record (the experiment picked by `experiment`, else by the run tag or commit), or
/// `NAME@VERSION` for a release. `data_root` is read only for records that predate
/// `model.input`, to learn the image shape.
pub fn load(
    repo: &Repository,
    source: &str,
    experiment: Option<&str>,
    device: &Device,
    data_root: Option<&Path>,
) -> Result<Artifact, ArtifactError> {
    let (rev, experiment, release) = match release_source(source) {
        Some((name, version)) => {
            let tag = format!("v{version}");
            if repo.revparse_single(&format!("refs/tags/{tag}")).is_err() {
                return Err(ArtifactError::Release(format!(
                    "there is no release {tag} (for {source})"
                )));
            }
            if let Err(reason) = crate::release::check_existing(repo, &tag) {
                return Err(ArtifactError::Release(format!(
                    "{tag} is not a release made through the gate: {reason}"
                )));
            }
            (tag, Some(name.to_string()), Some(version))
        }
        None => (source.to_string(), experiment.map(str::to_string), None),
    };
    let snapshot = compare::resolve(repo, &rev)?;
    let commit = snapshot.commit.as_ref().ok_or_else(|| {
        ArtifactError::Model(format!(
            "{source} names a tree, not a commit: give a commit, branch, run tag or NAME@VERSION"
        ))
    })?;
    let blobs = compare::record_blobs(repo, &snapshot.tree)?;
    if blobs.is_empty() {
        return Err(CompareError::NoRecords(source.to_string()).into());
    }
    let names = || blobs.keys().cloned().collect::<Vec<_>>();
    let name = match experiment {
        Some(e) if blobs.contains_key(&e) => e,
        Some(e) => {
            return Err(ArtifactError::NoSuchExperiment {
                source_name: source.to_string(),
                experiment: e,
                names: names(),
            })
        }
        None => compare::run_experiment(&rev, commit.message().unwrap_or(""), &blobs, "")
            .ok_or_else(|| ArtifactError::Ambiguous {
                source_name: source.to_string(),
                names: names(),
            })?,
    };
    let record = compare::parse_record(repo, blobs[&name], source, &name)?;
    let (tensors, _) =
        crate::weights::load_committed(repo, &snapshot.tree, &name, &record, &Device::Cpu)?;
    let input = input_shape(&record, data_root)?;
    let model = crate::weights::rebuild_model(&record, input, &tensors, device)
        .map_err(ArtifactError::Model)?;
    let data = &record.params.data;
    let normalisation =
        Normalisation::of(data, input.channels).map_err(|e| ArtifactError::Model(e.to_string()))?;
    let class_names = data.class_names();
    if class_names.len() != record.eval.classes {
        return Err(ArtifactError::Model(format!(
            "the record names {} classes but its model has {}",
            class_names.len(),
            record.eval.classes
        )));
    }
    Ok(Artifact {
        provenance: Provenance {
            source: source.to_string(),
            experiment: name.clone(),
            commit: commit.id().to_string(),
            run_id: record.run.id.clone(),
            run_tag: compare::run_tag_of(repo, commit.id(), &name),
            release,
            weights_oid: record.model.oid.clone(),
            trained_by: record.run.exp_version.clone(),
        },
        record,
        tensors,
        model,
        input,
        normalisation,
        class_names,
    })
}

/// The image shape the record's model takes: `model.input`, or, for a record written before
/// exp recorded it, the shape of the record's data under `data_root`.
fn input_shape(record: &RunRecord, data_root: Option<&Path>) -> Result<ImageShape, ArtifactError> {
    if let Some([channels, height, width]) = record.model.input {
        return Ok(ImageShape {
            channels,
            height,
            width,
        });
    }
    let missing = |why: String| {
        ArtifactError::Model(format!(
            "the record predates model.input, so the image shape comes from its data, which {why}"
        ))
    };
    let root = data_root.ok_or_else(|| missing("needs a data root (EXP_DATA)".into()))?;
    let data = Dataset::load(
        root,
        &record.params.data,
        record.params.train.seed,
        &|_| "the record's [params.data]".to_string(),
        None,
    )
    .map_err(|e| missing(format!("cannot be read: {e}")))?;
    Ok(data.shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_sources_are_told_from_revisions() {
        assert_eq!(
            release_source("mnist-cnn@1.2.0"),
            Some(("mnist-cnn", "1.2.0".to_string()))
        );
        assert_eq!(
            release_source("mnist-cnn@v1.2.0"),
            Some(("mnist-cnn", "1.2.0".to_string()))
        );
        for revision in [
            "HEAD@{1}",
            "@",
            "main",
            "run/feature/x/mnist-cnn/2",
            "a@b",
            "@1.0.0",
        ] {
            assert_eq!(release_source(revision), None, "{revision}");
        }
    }
}
