//! Comparing runs straight from Git objects (no checkout, no `git` process): the records at a
//! revision, the differences between two revisions, the history of records, and the paired
//! significance test on per-example predictions.

pub mod audit;
pub mod cache;
pub mod diff;
pub mod log;
pub mod output_cache;
pub mod stats;

use std::collections::BTreeMap;

use git2::{ObjectType, Oid, Repository, Tree};

use crate::record::layout::{self, PREDICTIONS_FILE, RECORD_FILE};
use crate::record::RunRecord;

/// A comparison that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The revision does not name a commit, tag or tree.
    #[error("unknown revision {rev:?}: {message}")]
    UnknownRevision {
        /// As given.
        rev: String,
        /// What Git said.
        message: String,
    },
    /// A record exists but cannot be parsed.
    #[error("corrupt run record {path} at {rev}: {message}")]
    CorruptRecord {
        /// The revision.
        rev: String,
        /// Path of the record.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A record disagrees with the artifacts committed beside it (compare/audit.rs).
    #[error("cannot trust {path} at {rev}: {reason}")]
    Untrusted {
        /// The revision.
        rev: String,
        /// Path of the record.
        path: String,
        /// What disagrees: the field, the recorded and the recomputed value.
        reason: String,
    },
    /// The revision holds no run record at all.
    #[error("no run record at {0}")]
    NoRecords(String),
    /// A Git read failed.
    #[error("reading {context}: {source}")]
    Git {
        /// What was being read.
        context: String,
        /// The cause.
        source: git2::Error,
    },
}

impl CompareError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            CompareError::UnknownRevision { .. } => {
                "give a branch, commit, tag or run tag (`git tag -l 'run/*'` lists the run tags)".into()
            }
            CompareError::NoRecords(rev) => format!(
                "no experiments/*/metrics.toml at {rev}; run `exp run NAME` on a feature branch first"
            ),
            CompareError::CorruptRecord { .. } => {
                "the record was edited or damaged; `git log -p -- <path>` shows who changed it".into()
            }
            CompareError::Untrusted { path, .. } => format!(
                "the record and the files committed beside it do not belong together (edited by hand?); `git log -p -- {path}` shows who changed it, `exp verify` re-evaluates the weights"
            ),
            CompareError::Git { .. } => return None,
        })
    }
}

fn git_err(context: impl Into<String>) -> impl FnOnce(git2::Error) -> CompareError {
    let context = context.into();
    move |source| CompareError::Git { context, source }
}

/// A revision resolved to a tree (and the commit, when it names one).
pub struct Snapshot<'r> {
    /// As given by the user.
    pub name: String,
    /// The commit, unless a bare tree id was given.
    pub commit: Option<git2::Commit<'r>>,
    /// The tree.
    pub tree: Tree<'r>,
}

/// Turns off libgit2's re-hashing of every object it reads, for read-only commands: `git`
/// itself does not verify on read, and the SHA-1 of every tree and blob is a measurable share
/// of `exp log` over long histories. Objects are still verified by `git fsck`.
pub fn fast_reads() {
    // A process-wide libgit2 option, set before any repository is opened.
    git2::opts::strict_hash_verification(false);
}

/// Resolves a revision, run tag or tree id.
pub fn resolve<'r>(repo: &'r Repository, rev: &str) -> Result<Snapshot<'r>, CompareError> {
    let object = repo
        .revparse_single(rev)
        .map_err(|e| CompareError::UnknownRevision {
            rev: rev.to_string(),
            message: e.message().to_string(),
        })?;
    let commit = object
        .peel(ObjectType::Commit)
        .ok()
        .and_then(|o| o.into_commit().ok());
    let tree = object
        .peel_to_tree()
        .map_err(|e| CompareError::UnknownRevision {
            rev: rev.to_string(),
            message: format!("does not name a commit or tree ({})", e.message()),
        })?;
    Ok(Snapshot {
        name: rev.to_string(),
        commit,
        tree,
    })
}

/// One experiment's record in a tree, with the blob ids that identify it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The parsed record.
    pub record: RunRecord,
    /// Blob id of `metrics.toml`.
    pub record_blob: Oid,
    /// Blob id of `predictions.bin`, if present.
    pub predictions_blob: Option<Oid>,
    /// The revision it was read at, as given (for messages).
    pub rev: String,
}

/// Blob ids of every `experiments/<name>/metrics.toml` in `tree`, by experiment name.
pub fn record_blobs(repo: &Repository, tree: &Tree) -> Result<BTreeMap<String, Oid>, CompareError> {
    let mut out = BTreeMap::new();
    let Ok(entry) = tree.get_path(std::path::Path::new(layout::EXPERIMENTS_DIR)) else {
        return Ok(out);
    };
    if entry.kind() != Some(ObjectType::Tree) {
        return Ok(out);
    }
    let experiments = repo
        .find_tree(entry.id())
        .map_err(git_err(format!("{}/", layout::EXPERIMENTS_DIR)))?;
    for e in experiments.iter() {
        if e.kind() != Some(ObjectType::Tree) {
            continue;
        }
        let Some(name) = e.name() else { continue };
        let dir = repo
            .find_tree(e.id())
            .map_err(git_err(format!("{}/", layout::run_dir(name))))?;
        let record = dir.get_name(RECORD_FILE).map(|entry| entry.id());
        if let Some(id) = record {
            out.insert(name.to_string(), id);
        }
    }
    Ok(out)
}

/// Parses the record blob `blob` of experiment `name` (at `rev`, for messages).
pub fn parse_record(
    repo: &Repository,
    blob: Oid,
    rev: &str,
    name: &str,
) -> Result<RunRecord, CompareError> {
    let path = layout::run_file(name, RECORD_FILE);
    let blob = repo.find_blob(blob).map_err(git_err(path))?;
    parse_record_bytes(blob.content(), rev, name)
}

/// Parses record bytes already read (experiment `name` at `rev`, for messages).
pub fn parse_record_bytes(bytes: &[u8], rev: &str, name: &str) -> Result<RunRecord, CompareError> {
    let corrupt = |message: String| CompareError::CorruptRecord {
        rev: rev.to_string(),
        path: layout::run_file(name, RECORD_FILE),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))?;
    RunRecord::from_toml(text).map_err(|e| corrupt(e.to_string()))
}

/// Every experiment's record in a snapshot.
pub fn records_at(
    repo: &Repository,
    snapshot: &Snapshot,
) -> Result<BTreeMap<String, StoredRecord>, CompareError> {
    let mut out = BTreeMap::new();
    for (name, blob) in record_blobs(repo, &snapshot.tree)? {
        let stored = stored_record(repo, snapshot, &name, blob)?;
        out.insert(name, stored);
    }
    Ok(out)
}

/// Experiment `name`'s record (blob `blob`) in a snapshot, with its predictions' blob id.
pub fn stored_record(
    repo: &Repository,
    snapshot: &Snapshot,
    name: &str,
    blob: Oid,
) -> Result<StoredRecord, CompareError> {
    let record = parse_record(repo, blob, &snapshot.name, name)?;
    let predictions_blob = snapshot
        .tree
        .get_path(std::path::Path::new(&layout::run_file(
            name,
            PREDICTIONS_FILE,
        )))
        .ok()
        .map(|e| e.id());
    Ok(StoredRecord {
        record,
        record_blob: blob,
        predictions_blob,
        rev: snapshot.name.clone(),
    })
}

/// The default base of a comparison: the merge-base of HEAD and `develop` (or `main` when there
/// is no develop), as a commit id string.
pub fn default_base(repo: &Repository) -> Result<String, CompareError> {
    let head = repo.head().and_then(|h| h.peel_to_commit()).map_err(|e| {
        CompareError::UnknownRevision {
            rev: "HEAD".into(),
            message: e.message().to_string(),
        }
    })?;
    for base in ["develop", "main"] {
        if let Ok(branch) = repo.revparse_single(base).and_then(|o| o.peel_to_commit()) {
            let mb = repo
                .merge_base(head.id(), branch.id())
                .map_err(git_err(format!("merge-base HEAD {base}")))?;
            return Ok(mb.to_string());
        }
    }
    Err(CompareError::UnknownRevision {
        rev: "develop".into(),
        message: "neither develop nor main exists; name the base revision".into(),
    })
}

/// Which experiment's run the revision `rev` means: the one its run tag or run commit names,
/// else the only one recorded there, else `preferred` when it is recorded there; None when the
/// revision holds several runs and none of these tells them apart.
pub fn run_experiment(
    rev: &str,
    commit_message: &str,
    blobs: &BTreeMap<String, Oid>,
    preferred: &str,
) -> Option<String> {
    let tag = rev.strip_prefix("refs/tags/").unwrap_or(rev);
    let parts: Vec<&str> = tag.split('/').collect();
    let from_tag = (parts.len() == 4 && parts[0] == "run").then(|| parts[2].to_string());
    let from_commit = crate::git::run_subject_experiment(commit_message).map(str::to_string);
    let only = (blobs.len() == 1)
        .then(|| blobs.keys().next().cloned())
        .flatten();
    let own = blobs.contains_key(preferred).then(|| preferred.to_string());
    [from_tag, from_commit, only, own]
        .into_iter()
        .flatten()
        .find(|name| blobs.contains_key(name))
}

/// The run tag of experiment `name` on `commit`, if there is one (the last by name when
/// there are several).
pub fn run_tag_of(repo: &Repository, commit: Oid, name: &str) -> Option<String> {
    let tags = repo.tag_names(Some("run/*")).ok()?;
    let mut matching: Vec<String> = tags
        .iter()
        .flatten()
        .filter(|t| t.split('/').nth(2) == Some(name))
        .filter(|t| {
            repo.revparse_single(t)
                .and_then(|o| o.peel_to_commit())
                .is_ok_and(|c| c.id() == commit)
        })
        .map(str::to_string)
        .collect();
    matching.sort();
    matching.pop()
}
