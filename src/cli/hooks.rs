//! `exp hooks`.

use clap::{Args, Subcommand};

use exp::Error;

/// Arguments of `exp hooks`.
#[derive(Debug, Args)]
pub struct HooksArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: HooksAction,
}

/// `exp hooks install | uninstall`.
#[derive(Debug, Subcommand)]
pub enum HooksAction {
    /// Install the gate's hooks: pre-merge-commit, pre-commit (concluded conflicted merges) and
    /// pre-push in a repository with a work tree, pre-receive in a bare one; make merges into
    /// develop and main --no-ff. Hooks you already had are kept (renamed <hook>.local) and run
    /// first.
    Install,
    /// Undo exactly what install did: remove exp's hooks, restore yours, restore the merge
    /// options.
    Uninstall,
}

pub(super) fn execute(args: HooksArgs) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let report = match args.action {
        HooksAction::Install => exp::hooks::install(&repo),
        HooksAction::Uninstall => exp::hooks::uninstall(&repo),
    }
    .map_err(Error::Hooks)?;
    super::outln!("{}:", report.dir.display());
    if report.changes.is_empty() {
        super::outln!("  nothing to do");
    }
    for change in &report.changes {
        super::outln!("  {change}");
    }
    Ok(())
}
