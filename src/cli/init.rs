//! `exp init`.

use std::path::PathBuf;

use clap::Args;

use exp::init::{init, LfsFilter};
use exp::Error;

/// The long help of `exp init`.
pub(super) const INIT_LONG_ABOUT: &str =
    "Make DIR (default: the current directory) a Git repository ready for exp.

- creates the repository (branch main) when DIR is not one; an existing repository keeps its \
history and files;
- adds `*.safetensors filter=lfs diff=lfs merge=lfs -text` to .gitattributes;
- writes the example experiment specs to experiments/ (never overwriting a file);
- commits what it added (only that), and creates the Git Flow branches main and develop;
- runs `git lfs install --local` when git-lfs is installed.

Running it twice changes nothing.";

/// Arguments of `exp init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The directory to initialise.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

pub(super) fn execute(args: InitArgs) -> Result<(), Error> {
    let report = init(&args.dir)?;
    let dir = report.dir.display();
    if report.created_repository {
        super::outln!("Initialised a Git repository in {dir}");
    } else {
        super::outln!("Using the existing repository in {dir}");
    }
    for f in &report.files_written {
        super::outln!("  wrote {f}");
    }
    if let Some(commit) = &report.commit {
        super::outln!("  committed them as {}", &commit[..commit.len().min(10)]);
    }
    for b in &report.branches_created {
        super::outln!("  created branch {b}");
    }
    if report.files_written.is_empty()
        && report.branches_created.is_empty()
        && !report.created_repository
    {
        super::outln!("  already set up; nothing to change");
    }
    match report.lfs {
        LfsFilter::GitLfs => super::outln!("  Git LFS: git-lfs handles *.safetensors in this repository"),
        LfsFilter::Exp => super::outln!(
            "  Git LFS: git-lfs is not installed; exp's own filter (`exp lfs filter-process`) handles *.safetensors"
        ),
    }
    super::outln!("Next: exp run mnist-cnn");
    Ok(())
}
