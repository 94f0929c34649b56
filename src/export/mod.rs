//! `exp export`: a run's model written out for other frameworks (docs/design.md §10): a standard
//! ONNX graph (onnx.rs) or a safetensors file with the matching PyTorch module (torch.rs). Both
//! take float32 `[N, C, H, W]` = pixels / 255 with the run's normalisation folded in, and carry
//! the same `exp.*` metadata naming the run.

pub mod onnx;
pub mod torch;

use std::path::{Path, PathBuf};

use crate::artifact::Artifact;

/// Why a model cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An option the exporter cannot honour.
    #[error("{0}")]
    Option(String),
    /// The model's tensors cannot be read into the file.
    #[error("{0}")]
    Tensor(String),
    /// The model is one exp cannot write out (its layers have no exported form yet).
    #[error(
        "exp export does not write {architecture} models yet: only mlp, seed-cnn, cnn and resnet18 with the CIFAR stem have an ONNX and PyTorch form (the run's model.safetensors already uses torchvision's and Hugging Face's tensor names)"
    )]
    Unsupported {
        /// The run's `model.name` (and stem).
        architecture: String,
    },
    /// The file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The formats `exp export --format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An ONNX model (`.onnx`).
    Onnx,
    /// A safetensors file and the PyTorch module that loads it (`.safetensors` + `.py`).
    Torch,
}

/// The metadata every exported file carries, as `(key, value)` pairs in this order: the one
/// table of what an export says about its run. Values are strings; lists and the input
/// description are JSON.
pub fn metadata(artifact: &Artifact) -> Vec<(String, String)> {
    let p = &artifact.provenance;
    let json = |v: serde_json::Value| v.to_string();
    let s = artifact.input;
    [
        ("exp.experiment", p.experiment.clone()),
        ("exp.commit", p.commit.clone()),
        ("exp.run_id", p.run_id.clone()),
        ("exp.run_tag", p.run_tag.clone().unwrap_or_default()),
        ("exp.release", p.release.clone().unwrap_or_default()),
        ("exp.weights_oid", p.weights_oid.clone()),
        (
            "exp.architecture",
            artifact.record.model.architecture.clone(),
        ),
        ("exp.trained_by", p.trained_by.clone()),
        ("exp.version", crate::VERSION.to_string()),
        (
            "exp.input",
            json(serde_json::json!({
                "dtype": "float32",
                "shape": ["N", s.channels, s.height, s.width],
                "scale": "pixels / 255",
            })),
        ),
        (
            "exp.normalize",
            json(serde_json::json!({
                "mean": artifact.normalisation.mean,
                "std": artifact.normalisation.std,
                "folded_in": true,
            })),
        ),
        (
            "exp.class_names",
            json(serde_json::json!(artifact.class_names)),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The dims and float32 values of the weights tensor `name`, in row-major order.
pub(crate) fn f32_tensor(
    artifact: &Artifact,
    name: &str,
) -> Result<(Vec<usize>, Vec<f32>), ExportError> {
    let tensor = artifact.tensors.get(name).ok_or_else(|| {
        ExportError::Tensor(format!("the weights have no tensor {name} the model uses"))
    })?;
    let values = tensor
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| ExportError::Tensor(format!("tensor {name}: {e}")))?;
    Ok((tensor.dims().to_vec(), values))
}

/// The model's layers, or the error that names a model exp cannot export.
pub(crate) fn layers(artifact: &Artifact) -> Result<Vec<crate::model::Layer>, ExportError> {
    artifact.model.layers().ok_or_else(|| {
        let model = &artifact.record.params.model;
        let architecture = match model.stem {
            Some(crate::spec::Stem::Imagenet) => {
                format!("{} (ImageNet stem)", model.name.as_str())
            }
            _ => model.name.as_str().to_string(),
        };
        ExportError::Unsupported { architecture }
    })
}

/// Where `exp export` writes when no `-o` is given: `<output dir>/<experiment>-<version or
/// short commit>.onnx`, or for PyTorch `<experiment>_<…>` (a Python module name) without
/// extension.
pub fn default_path(out_dir: &Path, artifact: &Artifact, format: Format) -> PathBuf {
    let p = &artifact.provenance;
    let which = match &p.release {
        Some(version) => version.clone(),
        None => p.commit[..p.commit.len().min(12)].to_string(),
    };
    match format {
        Format::Onnx => out_dir.join(format!("{}-{which}.onnx", p.experiment)),
        Format::Torch => {
            let identifier: String = format!("{}_{which}", p.experiment)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            out_dir.join(identifier)
        }
    }
}

/// Writes `bytes` to `path` whole (`files::write_whole`): a failed export never leaves a
/// truncated model where a good one was.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    crate::files::write_whole(path, bytes, false).map_err(|source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The files `exp export` writes for `out`: `out` itself (ONNX), or `out` with the extensions
/// `.safetensors` and `.py` (PyTorch; an extension of either already there is replaced). An
/// `out` that is a directory, or ends in `/`, holds the default file name.
pub fn targets(out: &Path, artifact: &Artifact, format: Format) -> Vec<PathBuf> {
    let names_directory = out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/');
    let out = if names_directory {
        default_path(out, artifact, format)
    } else {
        out.to_path_buf()
    };
    match format {
        Format::Onnx => vec![out],
        Format::Torch => {
            let stem = match out.extension().and_then(|e| e.to_str()) {
                Some("py" | "safetensors") => out.with_extension(""),
                _ => out,
            };
            vec![
                append_extension(&stem, "safetensors"),
                append_extension(&stem, "py"),
            ]
        }
    }
}

/// Refuses to write `targets` where that would lose something: inside the git dir, over a file
/// Git tracks, or over any existing file unless `force`.
pub fn check_targets(
    repo: &git2::Repository,
    targets: &[PathBuf],
    force: bool,
) -> Result<(), ExportError> {
    for target in targets {
        let refuse = |why: String| Err(ExportError::Option(format!("{}: {why}", target.display())));
        if let Some(git_dir) = crate::git::inside_git_dir(repo, target) {
            return refuse(format!(
                "inside the repository's git dir {}; export elsewhere",
                git_dir.display()
            ));
        }
        if let Some(tracked) = crate::git::tracked_path(repo, target) {
            return refuse(format!(
                "Git tracks {tracked}; exp export never writes over a tracked file"
            ));
        }
        if target.is_dir() {
            return refuse("is a directory".into());
        }
        if !force && std::fs::symlink_metadata(target).is_ok() {
            return refuse("exists; --force replaces it".into());
        }
    }
    Ok(())
}

/// Writes `artifact` in `format` to `targets` (from [`targets`]). Returns the files written.
pub fn export(
    artifact: &Artifact,
    format: Format,
    targets: &[PathBuf],
    opset: i64,
) -> Result<Vec<PathBuf>, ExportError> {
    match (format, targets) {
        (Format::Onnx, [out]) => {
            let bytes = onnx::to_onnx(artifact, opset)?;
            write_atomically(out, &bytes)?;
            Ok(vec![out.to_path_buf()])
        }
        (Format::Torch, [weights_path, module_path]) => {
            if opset != onnx::DEFAULT_OPSET {
                return Err(ExportError::Option(
                    "--opset applies to --format onnx only".into(),
                ));
            }
            let (weights, module) = torch::to_torch(artifact)?;
            write_atomically(weights_path, &weights)?;
            write_atomically(module_path, module.as_bytes())?;
            Ok(targets.to_vec())
        }
        _ => Err(ExportError::Option(format!(
            "{targets:?} are not the files of a {format:?} export"
        ))),
    }
}

/// `path` with `.extension` added (not replacing a dot already in the name: `a-1.2.0`).
fn append_extension(path: &Path, extension: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}
