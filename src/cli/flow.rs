//! `exp flow`, `exp models`, `exp model`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use exp::flow;
use exp::Error;

/// Arguments of `exp flow`.
#[derive(Debug, Args)]
pub struct FlowArgs {
    /// The step.
    #[command(subcommand)]
    pub step: FlowStep,
}

/// Git Flow steps, each merge gated.
#[derive(Debug, Subcommand)]
pub enum FlowStep {
    /// Merge a feature branch (default: the current one) into develop with --no-ff after the
    /// gate passes on the merge's result, then delete it. When develop has meanwhile recorded a
    /// run of the same experiment, the feature's run directory and spec are taken whole.
    Finish {
        /// The feature branch (default: the current branch).
        branch: Option<String>,
        /// Keep the branch after merging.
        #[arg(long)]
        keep: bool,
    },
    /// Release develop: release/VERSION → main (gated, tagged vVERSION listing the model
    /// versions and metrics it ships) → merged back into develop.
    Release {
        /// The version, without the v (1.2.0 tags v1.2.0).
        version: String,
    },
    /// Start hotfix/NAME from main.
    Hotfix {
        /// The hotfix's name.
        name: String,
    },
}

/// Arguments of `exp models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Only this model (experiment).
    pub name: Option<String>,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `exp model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ModelAction,
}

/// `exp model get`.
#[derive(Debug, Subcommand)]
pub enum ModelAction {
    /// Write the weights of released model NAME@VERSION (release tag vVERSION) from the LFS
    /// store, verified against the record's sha256.
    Get {
        /// NAME@VERSION, e.g. mnist-cnn@1.0.0.
        model: String,
        /// Where to write them (default: NAME-VERSION.safetensors here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(super) fn execute_flow(args: FlowArgs) -> Result<(), Error> {
    let repo = exp::git::open(&super::cwd()?)?;
    let report = match args.step {
        FlowStep::Finish { branch, keep } => flow::finish(&repo, branch.as_deref(), keep),
        FlowStep::Release { version } => flow::release(&repo, &version),
        FlowStep::Hotfix { name } => flow::hotfix(&repo, &name),
    }?;
    for step in report.steps {
        super::outln!("{step}");
    }
    Ok(())
}

pub(super) fn execute_models(args: ModelsArgs) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let versions = flow::models(&repo, args.name.as_deref())?;
    if args.json {
        return super::emit_json(&versions);
    }
    if versions.is_empty() {
        super::outln!("No released model (releases are tags vVERSION: exp flow release VERSION).");
        return Ok(());
    }
    let metrics: std::collections::BTreeSet<&String> =
        versions.iter().flat_map(|v| v.metrics.keys()).collect();
    let mut header = vec!["model".to_string(), "version".into()];
    header.extend(metrics.iter().map(|m| m.to_string()));
    header.extend(["weights (sha256)".to_string(), "bytes".into()]);
    let mut table = exp::report::table(header);
    for v in &versions {
        let mut row = vec![format!("{}@{}", v.name, v.version), v.version.clone()];
        row.extend(
            metrics
                .iter()
                .map(|m| v.metrics.get(*m).map_or("-".into(), |x| format!("{x:.4}"))),
        );
        row.push(v.oid[..12.min(v.oid.len())].to_string());
        row.push(v.size.to_string());
        table.add_row(row);
    }
    super::outln!("{table}");
    Ok(())
}

pub(super) fn execute_model(args: ModelArgs) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    match args.action {
        ModelAction::Get { model, out } => {
            let path = flow::model_get(&repo, &model, out.as_deref())?;
            super::outln!("wrote {} ({model})", path.display());
        }
    }
    Ok(())
}
