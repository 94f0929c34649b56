//! `exp push` and `exp pull`.

use clap::Args;

use exp::lfs::sync;
use exp::Error;

/// Arguments of `exp push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The remote (default: the current branch's upstream remote, else origin).
    pub remote: Option<String>,
    /// Branches to push (default: the current branch). Run tags (`run/…`) and release tags
    /// (`v…`) on them go too.
    pub branches: Vec<String>,
}

/// Arguments of `exp pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The remote (default: the current branch's upstream remote, else origin).
    pub remote: Option<String>,
}

fn remote_or_default(
    repo: &git2::Repository,
    remote: Option<String>,
) -> Result<String, sync::SyncError> {
    remote
        .or_else(|| exp::lfs::remote::default_remote(repo))
        .ok_or(sync::SyncError::NoDefaultRemote)
}

pub(super) fn execute_push(args: PushArgs) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let remote = remote_or_default(&repo, args.remote).map_err(Error::Push)?;
    let summary = sync::push(&repo, &remote, &args.branches).map_err(Error::Push)?;
    if summary.by_git_lfs {
        outln!("LFS objects pushed by git-lfs");
        if summary.objects.uploaded > 0 {
            outln!(
                "{} dataset object(s) uploaded and confirmed on {remote} by exp (git-lfs does not read datasets/*.files)",
                summary.objects.uploaded
            );
        }
    } else {
        outln!(
            "{} LFS object(s) referenced, {} uploaded and confirmed on {remote}",
            summary.objects.referenced,
            summary.objects.uploaded
        );
    }
    for r in &summary.refs {
        outln!("pushed {r}");
    }
    Ok(())
}

pub(super) fn execute_pull(args: PullArgs) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    let remote = remote_or_default(&repo, args.remote).map_err(Error::Pull)?;
    let summary = sync::pull(&repo, &remote).map_err(Error::Pull)?;
    if summary.by_git_lfs {
        outln!("LFS objects pulled by git-lfs");
        if summary.objects > 0 {
            outln!(
                "{} dataset object(s) downloaded from {remote} by exp",
                summary.objects
            );
        }
    } else {
        outln!("{} LFS object(s) downloaded from {remote}", summary.objects);
    }
    for path in &summary.restored {
        outln!("restored {path}");
    }
    Ok(())
}
