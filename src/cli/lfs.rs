//! `exp lfs`: Git LFS without git-lfs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{emit_json, UsageError};
use exp::lfs::config::{self, InCharge};
use exp::lfs::filter::{self, Filter};
use exp::lfs::{maintain, LfsStore};
use exp::Error;

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
    /// Git's long-running filter process (pkt-line, version 2, clean and smudge); Git starts it
    /// as `filter.lfs.process` when exp's filter is in charge.
    FilterProcess,
    /// Clean one file: content on stdin, its pointer on stdout (the object is stored).
    Clean {
        /// The work-tree path Git is cleaning (`%f`), for the stat cache.
        path: Option<PathBuf>,
    },
    /// Smudge one file: a pointer on stdin, the object's content on stdout (the pointer itself,
    /// with a warning, when the object is not in the local store).
    Smudge {
        /// The work-tree path Git is smudging (`%f`), for messages.
        path: Option<PathBuf>,
    },
    /// Make exp's filter the repository's filter.lfs (even where git-lfs is installed).
    Install,
    /// Remove exp's filter; git-lfs takes over when it is installed.
    Uninstall,
    /// List the LFS files at a revision: oid, size, present or missing.
    Ls {
        /// The revision (default HEAD).
        #[arg(default_value = "HEAD")]
        rev: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every object (corrupt ones are moved to lfs/bad/, never deleted) and check the
    /// pointers at a revision. Exit 1 when something is wrong.
    Fsck {
        /// The revision whose pointers are checked (default HEAD).
        #[arg(default_value = "HEAD")]
        rev: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the objects nothing references: no ref, tag, stash, worktree, index entry or
    /// unpushed commit. Objects written in the last hour are kept.
    Prune {
        /// Say what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Refuse a commit that stages a `filter=lfs` file as raw content instead of a pointer,
    /// or a pointer whose object is stored short of its size; make the staged objects
    /// durable (fsync) before the commit names them (called by exp's pre-commit hook).
    PreCommit,
    /// Upload the LFS objects a push references to a remote on the file system (path or
    /// file:// URL) or through the Git LFS batch API, with Git's pre-push arguments and stdin;
    /// exp's pre-push hook calls it when git-lfs is not in charge. A referenced object missing
    /// locally refuses the push rather than leaving the remote with pointers but no weights.
    PrePush {
        /// The remote's name.
        remote: String,
        /// The remote's URL (default: the remote's configured URL).
        url: Option<String>,
    },
}

/// The filter's messages: Git passes a filter's stderr through to the user.
fn to_stderr(message: std::fmt::Arguments) {
    eprintln!("{message}");
}

pub(super) fn execute(args: LfsArgs) -> Result<(), Error> {
    let repo = exp::git::open_any(&super::cwd()?)?;
    match args.action {
        LfsAction::FilterProcess => {
            let mut filter = Filter::open(&repo, to_stderr);
            filter::widen_pipe(&std::io::stdin());
            filter::filter_process(
                &mut filter,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
            )
            .map_err(|e| UsageError(format!("exp lfs filter-process: {e}")))?;
        }
        LfsAction::Clean { path } => {
            let mut filter = Filter::open(&repo, to_stderr);
            filter::widen_pipe(&std::io::stdin());
            let pointer = match stdin_file() {
                // `exp lfs clean < FILE`: hash first, copy only a new object.
                Some(mut file) => filter.clean_file(&mut file)?,
                None => filter.clean(&mut std::io::stdin().lock(), path.as_deref())?,
            };
            filter.save_cache();
            write_stdout(&pointer)?;
        }
        LfsAction::Smudge { path } => {
            let filter = Filter::open(&repo, to_stderr);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            let outcome = filter.smudge(&mut std::io::stdin().lock(), &mut out)?;
            out.flush().map_err(exp::lfs::LfsError::Stream)?;
            let name = path.map(|p| p.display().to_string()).unwrap_or_default();
            if let Some(warning) = outcome.warning(&name) {
                eprintln!("{warning}");
            }
        }
        LfsAction::Install => {
            let worktree = exp::git::workdir(&repo).to_path_buf();
            config::install_exp(&worktree)?;
            outln!(
                "exp's filter now handles filter=lfs files in {}",
                worktree.display()
            );
        }
        LfsAction::Uninstall => {
            let worktree = exp::git::workdir(&repo).to_path_buf();
            match config::uninstall_exp(&worktree)? {
                InCharge::GitLfs => outln!("git-lfs now handles filter=lfs files"),
                InCharge::Exp => outln!("exp's filter is still configured (globally or system-wide)"),
                InCharge::Nobody => eprintln!(
                    "warning: no LFS filter is configured now: `git add` would commit raw weights (the pre-commit hook refuses them); `exp lfs install` undoes this"
                ),
                InCharge::Other(p) => outln!("filter.lfs.process is now {p}"),
            }
        }
        LfsAction::Ls { rev, json } => {
            let entries = maintain::ls(&repo, &rev)?;
            if json {
                return emit_json(&entries);
            }
            for e in entries {
                let oid = e.oid.as_deref().map(|o| &o[..10]).unwrap_or("-");
                let size = e.size.map(human_size).unwrap_or_default();
                outln!("{oid} {:<13} {:>10}  {}", e.state, size, e.path);
            }
        }
        LfsAction::Fsck { rev, json } => {
            let report = maintain::fsck(&repo, &rev)?;
            if json {
                emit_json(&report)?;
            } else {
                outln!("{} object(s) verified", report.objects_checked);
                for (oid, moved) in &report.corrupt {
                    outln!("corrupt object {oid}: moved to {}", moved.display());
                }
                for e in &report.problems {
                    let what = match e.state {
                        "missing" => "pointer without its object (run `exp pull`)",
                        "size-mismatch" => {
                            "pointer whose size disagrees with its object (the pointer was edited)"
                        }
                        "raw" => "raw content committed in place of a pointer",
                        _ => "malformed pointer",
                    };
                    outln!("{}: {what}", e.path);
                }
            }
            if !report.ok() {
                return Err(exp::lfs::LfsRefusal {
                    message: "exp lfs fsck found problems".into(),
                    hint: "objects moved to lfs/bad/ can be fetched again with `exp pull`; a raw file is fixed by `exp lfs install` and `git add --renormalize PATH`".into(),
                }
                .into());
            }
            if !json {
                outln!("ok");
            }
        }
        LfsAction::Prune { dry_run } => {
            let report = maintain::prune(&repo, dry_run)?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for (oid, size) in &report.deleted {
                outln!("{verb} {oid} ({})", human_size(*size));
            }
            for (name, size) in &report.stale_temp {
                outln!(
                    "{verb} stale temp file lfs/tmp/{name} ({})",
                    human_size(*size)
                );
            }
            let bytes: u64 = report.deleted.iter().map(|d| d.1).sum();
            outln!(
                "{verb} {} object(s), {}; kept {} referenced and {} written in the last hour",
                report.deleted.len(),
                human_size(bytes),
                report.kept,
                report.recent
            );
        }
        LfsAction::PreCommit => {
            let staged = maintain::staged_lfs(&repo)?;
            let raw = staged.raw;
            if !raw.is_empty() {
                let list = raw.join(", ");
                return Err(exp::lfs::LfsRefusal {
                    message: format!(
                        "refusing to commit raw content for LFS-tracked file(s): {list}"
                    ),
                    hint: format!(
                        "no LFS filter cleaned them. Run `exp lfs install` (or install git-lfs and run `git lfs install --local`), then `git add --renormalize {}`",
                        raw.join(" ")
                    ),
                }
                .into());
            }
            let pointers: Vec<_> = staged.pointers.iter().map(|(_, p)| p.clone()).collect();
            let unsynced = LfsStore::for_repo(&repo).sync_objects(&pointers)?;
            let mut incomplete = Vec::new();
            let mut paths = Vec::new();
            for (path, pointer) in &staged.pointers {
                let Some(u) = unsynced.iter().find(|u| u.pointer == *pointer) else {
                    continue;
                };
                match u.stored {
                    None => eprintln!(
                        "warning: {path}: its object {} is not in this repository's LFS store; the commit will name weights only another copy has (`exp push` refuses until they are here)",
                        pointer.oid.as_str()
                    ),
                    Some(stored) => {
                        incomplete.push(format!(
                            "{path} (object {}: {stored} of {} bytes stored)",
                            &pointer.oid.as_str()[..12],
                            pointer.size
                        ));
                        paths.push(path.as_str());
                    }
                }
            }
            if !incomplete.is_empty() {
                return Err(exp::lfs::LfsRefusal {
                    message: format!(
                        "refusing to commit LFS objects stored incomplete (a crash before they reached the disk?): {}",
                        incomplete.join("; ")
                    ),
                    hint: format!(
                        "store them again from the work-tree files: `git add --renormalize {}`",
                        paths.join(" ")
                    ),
                }
                .into());
            }
        }
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
            let report = exp::lfs::push::pre_push(&repo, &remote, &url, stdin.lock())?;
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

/// Standard input as a file, when it is a regular file (redirected from one) rather than a
/// pipe or terminal.
fn stdin_file() -> Option<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let file = std::fs::File::from(fd);
    file.metadata().ok()?.is_file().then_some(file)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(|e| exp::lfs::LfsError::Stream(e).into())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
