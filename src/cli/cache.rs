//! `exp cache ls | prune`: the decoded image folders kept under `.git/exp/cache/decoded/`.

use clap::{Args, Subcommand};

use exp::data::cache;
use exp::error::UsageError;
use exp::Error;

/// Arguments of `exp cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: CacheAction,
}

/// `exp cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// List the decoded splits, most recently used first, with their sizes.
    Ls,
    /// Remove the least recently used decoded splits until the cache holds at most
    /// --max-size (default 0: all of them). Each new entry prunes the cache to 10 GiB.
    Prune {
        /// The size to keep, e.g. 2GiB, 500MB, 0.
        #[arg(long, value_name = "SIZE", default_value = "0")]
        max_size: String,
    },
}

pub(super) fn execute(args: CacheArgs) -> Result<(), Error> {
    let repo = exp::git::open(&super::cwd()?)?;
    let dir = exp::git::cache_dir(&repo);
    let io = |e: std::io::Error| {
        Error::Usage(UsageError(format!(
            "cannot read the cache {}: {e}",
            dir.display()
        )))
    };
    match args.action {
        CacheAction::Ls => {
            let entries = cache::entries(&dir).map_err(io)?;
            let total: u64 = entries.iter().map(|e| e.size).sum();
            for e in &entries {
                let used = chrono::DateTime::<chrono::Utc>::from(e.used)
                    .format("%Y-%m-%d %H:%M")
                    .to_string();
                super::outln!("{:>10}  {used}  {}", super::size(e.size), e.path.display());
            }
            super::outln!("{} decoded split(s), {}", entries.len(), super::size(total));
        }
        CacheAction::Prune { max_size } => {
            let max: bytesize::ByteSize = max_size.trim().parse().map_err(|e| {
                Error::Usage(UsageError(format!(
                    "--max-size {max_size:?}: {e} (sizes look like 0, 500MB, 2GiB)"
                )))
            })?;
            let removed = cache::prune(&dir, max.as_u64()).map_err(io)?;
            let freed: u64 = removed.iter().map(|e| e.size).sum();
            super::outln!(
                "removed {} decoded split(s), {}; the next run of their data decodes it again",
                removed.len(),
                super::size(freed)
            );
        }
    }
    Ok(())
}
