//! `exp apply RUN | --best METRIC`: the chosen run at the tip of the checked-out branch.

use clap::Args;

use exp::apply::{apply, Choice};
use exp::Error;

/// The long help of `exp apply`.
pub(super) const APPLY_LONG_ABOUT: &str =
    "Put the run you want at the tip of the checked-out branch, so that `exp flow finish` and \
`exp flow release` ship that model rather than the last one recorded.

RUN is a run tag (run/<branch>/<experiment>/<n>) or a commit. --best METRIC takes the best run \
on METRIC among the branch's runs since it left develop (or main) that were measured on the \
latest run's eval set; ties go to the latest. The run's spec, record, weights pointer, \
predictions and history become one commit at the tip (no new run tag: `exp log` shows it as \
\"apply of <tag>\"), and the work tree gets its files, weights included. The record is audited \
against its committed files first. Refused when the experiment's files have uncommitted \
changes.

Exit: 0 applied (or already at the tip), 2 nothing to apply or a bad argument.";

/// Arguments of `exp apply`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["run", "best"])))]
pub struct ApplyArgs {
    /// The run: a run tag or a commit.
    pub run: Option<String>,
    /// Take the best comparable run of the branch on this metric (accuracy, macro_f1, loss).
    #[arg(long, value_name = "METRIC")]
    pub best: Option<String>,
    /// The experiment, when the run's commit (or the branch) holds several.
    #[arg(long, short = 'e', value_name = "NAME")]
    pub experiment: Option<String>,
}

pub(super) fn execute(args: ApplyArgs) -> Result<(), Error> {
    let repo = exp::git::open(&super::cwd()?)?;
    // Apply commits into the work tree: one committing command at a time.
    let lock = exp::git::lock::lock_worktree(&repo, "exp apply")?;
    for note in exp::run::recover_after_kill(&repo, &lock)? {
        eprintln!("note: {note}");
    }
    let choice = match (args.run, args.best) {
        (Some(run), None) => Choice::Run(run),
        (None, Some(metric)) => Choice::Best(metric),
        _ => unreachable!("clap requires exactly one of RUN and --best"),
    };
    let applied = apply(&repo, &choice, args.experiment.as_deref())?;
    let metrics = applied
        .run
        .metrics
        .iter()
        .map(|(k, v)| format!("{k}={v:.4}"))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(among) = applied.among {
        super::outln!(
            "{} is the best of {among} comparable run(s) of {} on {}",
            applied.run.name(),
            applied.experiment,
            applied.branch
        );
    }
    for skipped in &applied.skipped {
        super::warn(skipped);
    }
    if applied.pointer_in_work_tree {
        super::warn(&format!(
            "experiments/{}/model.safetensors in the work tree is the LFS pointer, not the weights: no LFS filter applies to it (check .gitattributes; `exp init` writes the rule)",
            applied.experiment
        ));
    }
    match applied.commit {
        Some(commit) => super::outln!(
            "Applied {} ({}: {metrics}) at the tip of {}: commit {}",
            applied.run.name(),
            applied.experiment,
            applied.branch,
            exp::report::short(&commit.to_string())
        ),
        None => super::outln!(
            "{}'s tip already holds {} ({}: {metrics}); nothing to apply",
            applied.branch,
            applied.run.name(),
            applied.experiment
        ),
    }
    Ok(())
}
