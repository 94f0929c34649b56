//! `exp data add | status | checkout | ls`: datasets versioned in Git and the LFS store
//! (docs/datasets.md).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use exp::dataset;
use exp::report;
use exp::Error;

use super::size;

/// The long help of `exp data`.
pub const DATA_LONG_ABOUT: &str = "Datasets versioned in Git and the LFS store.

A dataset is a folder in the work tree, ignored by Git, whose files are objects of the LFS store
(the store the weights are in: `exp push`, `exp pull`, `exp lfs fsck` and `exp lfs prune` cover
them), plus a committed manifest: datasets/NAME.toml and datasets/NAME.files (one
`<sha256> <size> <path>` line per file). A spec trains on one with `data.dataset = \"NAME\"`;
the run refuses a folder that differs from the manifest and records which version it read.";

/// Arguments of `exp data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DataAction,
}

/// `exp data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Store a folder's files in the LFS store and commit its manifest (on develop or main: on
    /// a new feature branch). Adding it again records a new version when it changed.
    Add {
        /// The folder, inside the work tree.
        path: PathBuf,
        /// The dataset's name (default: the folder's name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare datasets' folders with their manifests: added, modified, deleted files.
    Status {
        /// One dataset (default: all).
        name: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a dataset's folder hold a committed version (copy-on-write clones of the stored
    /// objects where the file system offers them, else copies).
    Checkout {
        /// The dataset.
        name: String,
        /// The version: a commit, branch or tag (default: the work tree's manifest). Its
        /// manifest is written into the work tree too.
        #[arg(long, value_name = "REV")]
        rev: Option<String>,
        /// Overwrite or remove files with local changes.
        #[arg(long)]
        force: bool,
    },
    /// List the datasets of the work tree.
    Ls {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn execute(args: DataArgs) -> Result<(), Error> {
    let cwd = super::cwd()?;
    let repo = exp::git::open(&cwd)?;
    let worktree = exp::git::workdir(&repo).to_path_buf();
    match args.action {
        DataAction::Add { path, name, json } => {
            let added = dataset::add::add(&repo, &cwd, &path, name.as_deref())?;
            if json {
                return super::emit_json(&added);
            }
            match &added.commit {
                None => super::outln!(
                    "{} is unchanged: {} files, {} ({} new object(s) stored)",
                    added.name,
                    added.files,
                    size(added.bytes),
                    added.new_objects
                ),
                Some(commit) => {
                    if let Some(from) = &added.switched_from {
                        super::outln!("on {from}: committing on the new branch {}", added.branch);
                    }
                    super::outln!(
                        "{} {}: {} files, {} ({}; {} new object(s) in the LFS store)",
                        if added.changes.added.len() == added.files {
                            "added"
                        } else {
                            "updated"
                        },
                        added.name,
                        added.files,
                        size(added.bytes),
                        added.changes.summary(),
                        added.new_objects
                    );
                    super::outln!(
                        "committed {} on {}: datasets/{}.toml, datasets/{}.files",
                        &commit[..10],
                        added.branch,
                        added.name,
                        added.name
                    );
                }
            }
        }
        DataAction::Status { name, json } => {
            let names = match name {
                Some(n) => vec![n],
                None => dataset::names(&worktree)?,
            };
            let mut all = Vec::new();
            for n in &names {
                all.push(dataset::status_of(&repo, n)?);
            }
            if json {
                return super::emit_json(&all);
            }
            if all.is_empty() {
                super::outln!("no datasets (exp data add PATH)");
            }
            for s in &all {
                if !s.present {
                    super::outln!(
                        "{}: the folder {} is missing (exp data checkout {})",
                        s.name,
                        s.folder,
                        s.name
                    );
                    continue;
                }
                if s.changes.is_empty() {
                    super::outln!("{}: clean ({})", s.name, s.folder);
                    continue;
                }
                super::outln!("{}: {} ({})", s.name, s.changes.summary(), s.folder);
                for (what, paths) in [
                    ("added", &s.changes.added),
                    ("modified", &s.changes.modified),
                    ("deleted", &s.changes.deleted),
                ] {
                    for p in paths {
                        super::outln!("  {what:<9}{p}");
                    }
                }
            }
        }
        DataAction::Checkout { name, rev, force } => {
            let done = dataset::checkout::checkout(&repo, &name, rev.as_deref(), force)?;
            super::outln!(
                "{}: {} file(s) written{}, {} removed, {} unchanged ({})",
                done.name,
                done.written,
                match done.cloned {
                    Some(true) => " (copy-on-write clones)",
                    Some(false) => " (copied)",
                    None => "",
                },
                done.removed,
                done.unchanged,
                done.folder
            );
        }
        DataAction::Ls { json } => {
            let mut manifests = Vec::new();
            for n in dataset::names(&worktree)? {
                manifests.push(dataset::read_worktree(&worktree, &n)?.manifest);
            }
            if json {
                return super::emit_json(&manifests);
            }
            let header = ["name", "folder", "files", "size", "fingerprint"];
            let mut table = report::table(header.iter().map(|s| s.to_string()).collect());
            for m in &manifests {
                table.add_row(vec![
                    m.name.clone(),
                    m.folder.clone(),
                    m.files.to_string(),
                    size(m.bytes),
                    m.fingerprint[..12.min(m.fingerprint.len())].to_string(),
                ]);
            }
            super::outln!("{table}");
        }
    }
    Ok(())
}
