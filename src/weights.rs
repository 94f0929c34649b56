//! A run's committed weights, loaded and checked against its record: the LFS pointer committed
//! at `experiments/<name>/model.safetensors` must name the record's `model.oid` and `size`, the
//! object comes from the local LFS store (fetched, verified, from the default remote when it is
//! not there, as a checkout through exp's filter would), and the tensors must hash to the
//! record's `model.tensor_hash`. Used by `init.from` and `exp verify`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use git2::{ObjectType, Repository, Tree};

use crate::lfs::{LfsPointer, LfsStore};
use crate::record::layout;
use crate::record::RunRecord;

/// Why the committed weights cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The pointer file is missing, unreadable, not a pointer, or names other weights than the
    /// record: the weights and the record do not belong together.
    #[error("{0}")]
    Committed(String),
    /// The LFS object is in neither the local store nor the default remote.
    #[error(
        "the weights of {experiment} (LFS object {oid}) are not in the local store {path}{}",
        fetch.as_ref().map(|e| format!(", and fetching them from the default remote failed: {e}")).unwrap_or_default()
    )]
    MissingObject {
        /// The experiment.
        experiment: String,
        /// The object id.
        oid: String,
        /// Where it was looked for.
        path: String,
        /// Why fetching it from the default remote failed, when exp tried.
        fetch: Option<String>,
    },
    /// The object is there but is not the record's weights.
    #[error("{0}")]
    Object(String),
}

/// Tensors by name, as safetensors holds them.
pub type Tensors = HashMap<String, Tensor>;

/// Loads experiment `name`'s weights committed in `tree` onto `device`, checked against
/// `record`; returns the tensors and their tensor hash.
pub fn load_committed(
    repo: &Repository,
    tree: &Tree,
    name: &str,
    record: &RunRecord,
    device: &Device,
) -> Result<(Tensors, String), WeightsError> {
    let pointer = committed_pointer(repo, tree, name, record)?;
    let store = LfsStore::for_repo(repo);
    let path = store.object_path(&pointer.oid);
    let mut fetch = None;
    if !path.is_file() {
        if let Some(remote) = crate::lfs::remote::default_remote_store(repo) {
            if let Err(e) = remote.download(&store, std::slice::from_ref(&pointer)) {
                fetch = Some(e.to_string());
            }
        }
    }
    if !path.is_file() {
        return Err(WeightsError::MissingObject {
            experiment: name.to_string(),
            oid: pointer.oid.as_str().to_string(),
            path: path.display().to_string(),
            fetch,
        });
    }
    let object = |m: String| WeightsError::Object(m);
    let bytes =
        std::fs::read(&path).map_err(|e| object(format!("cannot read {}: {e}", path.display())))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| object(format!("{}: {e}", path.display())))?;
    let sorted = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    let hash = crate::record::tensor_hash(&sorted).map_err(|e| object(e.to_string()))?;
    if hash != record.model.tensor_hash {
        return Err(object(format!(
            "the weights in the store do not hash to the record's tensor_hash ({hash} vs {})",
            record.model.tensor_hash
        )));
    }
    Ok((tensors, hash))
}

/// The LFS pointer committed for experiment `name`'s weights, which must name the object (oid
/// and size) the record names.
pub fn committed_pointer(
    repo: &Repository,
    tree: &Tree,
    name: &str,
    record: &RunRecord,
) -> Result<LfsPointer, WeightsError> {
    let committed = WeightsError::Committed;
    let path = layout::run_file(name, &record.model.weights);
    let entry = tree.get_path(Path::new(&path)).map_err(|_| {
        committed(format!(
            "{path} is not committed, so the recorded model cannot be checked"
        ))
    })?;
    if entry.kind() != Some(ObjectType::Blob) {
        return Err(committed(format!("{path} is not a file")));
    }
    let blob = repo
        .find_blob(entry.id())
        .map_err(|e| committed(format!("{path} is unreadable: {}", e.message())))?;
    let pointer = LfsPointer::parse(blob.content()).map_err(|_| {
        committed(format!("{path} is committed as raw content, not as an LFS pointer (is the LFS filter installed? `exp init` sets it up)"))
    })?;
    let short = |s: &str| s[..s.len().min(12)].to_string();
    if pointer.oid.as_str() != record.model.oid {
        return Err(committed(format!(
            "{path} points to LFS object {}, but the record names {}: the weights and the record do not belong together",
            short(pointer.oid.as_str()),
            short(&record.model.oid)
        )));
    }
    if pointer.size != record.model.size {
        return Err(committed(format!(
            "{path} gives the size of LFS object {} as {} bytes, but the record says {}: the pointer was edited",
            short(pointer.oid.as_str()),
            pointer.size,
            record.model.size
        )));
    }
    Ok(pointer)
}

/// Builds the model `record` describes, for images of `shape`, on `device`, and loads
/// `tensors` into it: every tensor the model has, of its shape, and no other.
pub fn rebuild_model(
    record: &RunRecord,
    shape: crate::data::ImageShape,
    tensors: &Tensors,
    device: &Device,
) -> Result<crate::model::Model, String> {
    let model = crate::model::Model::new(
        &record.params.model,
        shape,
        record.eval.classes,
        record.params.train.seed,
        device,
    )
    .map_err(|e| format!("the recorded model cannot be built: {e}"))?;
    if model.name().as_str() != record.model.architecture {
        return Err(format!(
            "[params.model] builds a {}, the record's model.architecture is {}",
            model.name().as_str(),
            record.model.architecture
        ));
    }
    let state = model.params().named_state();
    if let Some(extra) = tensors.keys().find(|k| !state.contains_key(k)) {
        return Err(format!(
            "the weights hold a tensor {extra} the recorded model does not have"
        ));
    }
    for (name, var) in state {
        let t = tensors
            .get(name)
            .ok_or_else(|| format!("the weights lack the recorded model's tensor {name}"))?;
        if t.dims() != var.dims() {
            return Err(format!(
                "tensor {name} is {:?} in the weights but {:?} in the recorded model",
                t.dims(),
                var.dims()
            ));
        }
        t.to_dtype(var.dtype())
            .and_then(|t| t.to_device(device))
            .and_then(|t| var.set(&t))
            .map_err(|e| format!("tensor {name}: {e}"))?;
    }
    Ok(model)
}
