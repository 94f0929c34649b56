//! `exp export REV|NAME@VERSION --format onnx|torch`: a run's model for other frameworks.

use std::path::PathBuf;

use clap::Args;

use exp::export::{onnx, Format};
use exp::Error;

/// The long help of `exp export`.
pub(super) const EXPORT_LONG_ABOUT: &str =
    "Write a run's model in a format other frameworks load. The weights come from the LFS \
store (fetched from the default remote when missing), checked against the run record, never \
from the work tree.

SOURCE is a revision holding a run (a run tag run/<branch>/<experiment>/<n>, a commit, a \
branch) or NAME@VERSION for a release (`exp models` lists them).

--format onnx writes a standard ONNX graph (opset 17 unless --opset) with a dynamic batch \
dimension: input `pixels`, float32 [N, C, H, W] = pixels / 255 (the run's normalisation is in \
the graph), output `logits` [N, classes]. --format torch writes FILE.safetensors (PyTorch's \
state-dict names, batch-norm buffers included) and FILE.py, the nn.Module that loads it with \
load_state_dict(strict=True). Both carry exp.* metadata: experiment, commit, run id, run tag, \
release, weights oid, input shape, normalisation, class names (data.class_names).

Without -o the file goes to exp-out/ (ignored by Git): <experiment>-<version or commit>.onnx, \
or <experiment>_<version or commit>.{safetensors,py}; an -o that is a directory (or ends in /) \
gets that name inside it. An existing file is replaced only with --force, and never a file Git \
tracks or one inside .git.

Exit: 0 written, 2 a bad source or option, or weights that cannot be read.";

/// Arguments of `exp export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run: a revision (run tag, commit, branch) or NAME@VERSION of a release.
    pub source: String,
    /// The format to write.
    #[arg(long, value_enum)]
    pub format: Format,
    /// The file to write (for --format torch, the path without extension, or either file's).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The ONNX opset (14–21).
    #[arg(long, default_value_t = onnx::DEFAULT_OPSET, value_name = "N")]
    pub opset: i64,
    /// The experiment, when the revision holds several runs.
    #[arg(long, short = 'e', value_name = "NAME")]
    pub experiment: Option<String>,
    /// Replace files that exist (never files Git tracks).
    #[arg(long)]
    pub force: bool,
}

/// The model `source` names in the repository of the current directory, loaded onto `device`;
/// with the repository and the current directory.
pub(super) fn load(
    source: &str,
    experiment: Option<&str>,
    device: &candle_core::Device,
) -> Result<(git2::Repository, PathBuf, exp::artifact::Artifact), Error> {
    let cwd = super::cwd()?;
    let repo = exp::git::open(&cwd)?;
    // Only records written before model.input need the data, for the image shape.
    let data_root = exp::data::data_root(&cwd).ok();
    let artifact = exp::artifact::load(&repo, source, experiment, device, data_root.as_deref())?;
    Ok((repo, cwd, artifact))
}

pub(super) fn execute(args: ExportArgs) -> Result<(), Error> {
    let (repo, cwd, artifact) = load(
        &args.source,
        args.experiment.as_deref(),
        &candle_core::Device::Cpu,
    )?;
    let out = match args.out {
        Some(out) => out,
        None => {
            exp::export::default_path(&exp::git::output_dir(&repo, &cwd)?, &artifact, args.format)
        }
    };
    let targets = exp::export::targets(&out, &artifact, args.format);
    exp::export::check_targets(&repo, &targets, args.force)?;
    let written = exp::export::export(&artifact, args.format, &targets, args.opset)?;
    let p = &artifact.provenance;
    for path in written {
        super::outln!(
            "Exported {} (run {}, commit {}) to {}",
            p.experiment,
            p.run_tag.as_deref().unwrap_or(&p.run_id),
            exp::report::short(&p.commit),
            path.display()
        );
    }
    Ok(())
}
