//! `exp lfs`.

use clap::{Args, Subcommand};

use crate::Error;

/// Arguments of `exp lfs`.
#[derive(Debug, Args)]
pub struct LfsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LfsAction,
}

/// `exp lfs` actions.
#[derive(Debug, Subcommand)]
pub enum LfsAction {
    /// Upload the LFS objects a push references to a remote on the file system (path or
    /// file:// URL), with Git's pre-push arguments and stdin; exp's pre-push hook calls it when
    /// git-lfs is not in charge. A referenced object missing locally, or an HTTP(S) remote,
    /// refuses the push rather than leaving the remote with pointers but no weights.
    PrePush {
        /// The remote's name.
        remote: String,
        /// The remote's URL (default: the remote's configured URL).
        url: Option<String>,
    },
}

pub(super) fn execute(args: LfsArgs) -> Result<(), Error> {
    let repo = crate::git::open_any(&super::cwd()?)?;
    match args.action {
        LfsAction::PrePush { remote, url } => {
            let url = match url {
                Some(u) => u,
                None => repo
                    .find_remote(&remote)
                    .ok()
                    .and_then(|r| r.url().map(String::from))
                    .unwrap_or(remote.clone()),
            };
            let stdin = std::io::stdin();
            let report = crate::lfs::push::pre_push(&repo, &url, stdin.lock())?;
            if report.uploaded > 0 {
                eprintln!(
                    "exp lfs: uploaded {} of {} LFS object(s) to {remote}",
                    report.uploaded, report.referenced
                );
            }
        }
    }
    Ok(())
}
