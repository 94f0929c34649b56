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
    /// Write the weights of released model NAME@VERSION (release tag vVERSION), or of NAME's
    /// latest release, from the LFS store, verified against the record's sha256.
    Get {
        /// NAME@VERSION, e.g. mnist-cnn@1.0.0; NAME alone takes its latest release (by semantic
        /// version).
        model: String,
        /// Where to write them (default: exp-out/NAME-VERSION.safetensors at the work tree's
        /// root).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Take the weights of a v* tag that is not a release made by `exp flow release`
        /// (lightweight, off main's first-parent history, or with another message).
        #[arg(long)]
        force: bool,
    },
    /// Check that tag TAG is a release made through the gate: an annotated vX.Y.Z tag on main's
    /// first-parent history whose message is the one `exp flow release` writes (the server's
    /// pre-receive hook runs this for every v* tag pushed). Exit 0 yes, 1 no.
    CheckRelease {
        /// The tag name, e.g. v1.2.0.
        tag: String,
        /// The tag object to check (default: the existing refs/tags/TAG).
        #[arg(long, value_name = "OID")]
        object: Option<String>,
        /// The main commit to check against (default: main's tip); a hook passes the pushed one.
        #[arg(long, value_name = "OID")]
        main: Option<String>,
    },
}

pub(super) fn execute_flow(args: FlowArgs) -> Result<(), Error> {
    let repo = exp::git::open(&super::cwd()?)?;
    // Flow steps switch branches and commit in the work tree: one committing command at a time.
    let lock = exp::git::lock::lock_worktree(&repo, "exp flow")?;
    for note in exp::run::recover_after_kill(&repo, &lock)? {
        eprintln!("note: {note}");
    }
    let report = match args.step {
        FlowStep::Finish { branch, keep } => flow::finish(&repo, branch.as_deref(), keep),
        FlowStep::Release { version } => flow::release(&repo, &version),
        FlowStep::Hotfix { name } => flow::hotfix(&repo, &name),
    }?;
    for warning in &report.warnings {
        super::warn(warning);
    }
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
    for v in versions.iter().filter(|v| v.not_released.is_some()) {
        super::warn(&format!(
            "{}@{}: v{} is not a release made through the gate: {}",
            v.name,
            v.version,
            v.version,
            v.not_released.as_deref().unwrap_or_default()
        ));
    }
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
        ModelAction::Get { model, out, force } => {
            let (path, version) = flow::model_get(&repo, &model, out.as_deref(), force)?;
            let name = model.split('@').next().unwrap_or(&model);
            super::outln!("wrote {} ({name}@{version})", path.display());
        }
        ModelAction::CheckRelease { tag, object, main } => {
            let oid = |what: &str, text: &str| {
                git2::Oid::from_str(text).map_err(|_| {
                    exp::error::UsageError(format!("--{what} {text:?} is not an object id"))
                })
            };
            let object = match object {
                Some(text) => oid("object", &text)?,
                None => repo
                    .refname_to_id(&format!("refs/tags/{tag}"))
                    .map_err(|_| exp::error::UsageError(format!("there is no tag {tag}")))?,
            };
            let main = main.map(|text| oid("main", &text)).transpose()?;
            if let Err(reason) = exp::release::check(&repo, &tag, object, main) {
                return Err(exp::error::Verdict {
                    message: format!("{tag} is not a release made through the gate: {reason}"),
                    hint: "releases are made by `exp flow release VERSION` on develop; delete the tag (git tag -d) and release through the gate".into(),
                    code: exp::ExitCode::Negative,
                }
                .into());
            }
            super::outln!("{tag} is a release made through the gate");
        }
    }
    Ok(())
}
