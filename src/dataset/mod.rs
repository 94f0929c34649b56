//! Datasets versioned in Git and the LFS store (docs/design.md §9, docs/datasets.md).
//!
//! A dataset is a folder in the work tree, ignored by Git, plus a committed manifest:
//! `datasets/<name>.toml` (name, format, folder, file count, bytes, fingerprint) and
//! `datasets/<name>.files` (`<sha256> <size> <path>` per file, sorted by path bytes; the
//! fingerprint is BLAKE3 over these lines). Every file's bytes are an object of the LFS store,
//! so push, pull, fsck and prune cover them (`lfs::scan` reads the file lists), and identical
//! files are stored once. One manifest costs Git one blob, where 70k pointer files would make
//! every `git status` pay per file.
//!
//! `add.rs` stores a folder and commits its manifest; `checkout.rs` materialises a version.
//! This file reads manifests, compares a folder with one (status, and the check a run makes
//! before training on a dataset) and resolves a spec's `data.dataset`.

pub mod add;
pub mod checkout;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::scan::{self, Changes, FileEntry};
use crate::git::GitError;

/// Where manifests live in the repository.
pub const MANIFEST_DIR: &str = "datasets";

/// A dataset that cannot be added, read, checked out or trained on.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// No manifest of that name.
    #[error("there is no dataset {name:?} (no {path})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The manifest looked for.
        path: String,
        /// The datasets there are.
        known: Vec<String>,
    },
    /// A manifest that does not parse.
    #[error("{path}: {message}")]
    BadManifest {
        /// The manifest file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The folder is not what the manifest lists.
    #[error("the folder {folder} differs from {manifest}: {summary}{examples}")]
    Differs {
        /// The dataset.
        name: String,
        /// The folder.
        folder: String,
        /// Its file list.
        manifest: String,
        /// `1 added, 1 modified, 1 deleted`.
        summary: String,
        /// A few of the paths.
        examples: String,
    },
    /// The user's input cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Objects a checkout needs are not in the LFS store.
    #[error("{count} object(s) of {name} are not in the LFS store (e.g. {example})")]
    MissingObjects {
        /// The dataset.
        name: String,
        /// How many.
        count: usize,
        /// One of the files.
        example: String,
    },
    /// Files with local changes a checkout would overwrite or remove.
    #[error("{count} file(s) of {folder} have local changes that checking out would overwrite or remove (e.g. {example})")]
    LocalChanges {
        /// The folder.
        folder: String,
        /// How many.
        count: usize,
        /// One of them.
        example: String,
    },
    /// A file or folder could not be read or written.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or hashing the folder failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The LFS store failed.
    #[error(transparent)]
    Lfs(#[from] crate::lfs::LfsError),
    /// Git failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// The work-tree lock.
    #[error(transparent)]
    Lock(#[from] crate::git::lock::LockError),
}

impl DatasetError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            DatasetError::Unknown { known, .. } if known.is_empty() => {
                Some("add a folder with `exp data add PATH` (docs/datasets.md)".into())
            }
            DatasetError::Unknown { known, .. } => Some(format!(
                "the datasets here: {} (`exp data ls`)",
                known.join(", ")
            )),
            DatasetError::BadManifest { .. } => Some(
                "manifests are written by `exp data add`; restore it with `git checkout -- datasets/`".into(),
            ),
            DatasetError::Differs { name, .. } => Some(format!(
                "`exp data status {name}` lists the changes; `exp data add` records them as a new version, `exp data checkout {name}` puts the committed version back"
            )),
            DatasetError::MissingObjects { .. } => Some(
                "fetch them with `exp pull` (from a remote that has them), or add the folder again where it exists".into(),
            ),
            DatasetError::LocalChanges { .. } => Some(
                "record them first with `exp data add`, or pass --force to discard them".into(),
            ),
            // Git's own hint for a lock speaks of a run ("nothing was trained").
            DatasetError::Git(crate::git::GitError::Locked(path)) => Some(format!(
                "if no git process is running, the lock is a leftover: remove {}, then add again (files already stored are not stored twice)",
                path.display()
            )),
            DatasetError::Git(e) => e.hint(),
            DatasetError::Lock(e) => e.hint(),
            DatasetError::Lfs(e) => e.hint(),
            DatasetError::Data(e) => e.hint(),
            DatasetError::Invalid(_) | DatasetError::Io { .. } => None,
        }
    }
}

/// `datasets/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The dataset's name.
    pub name: String,
    /// How the folder is read (`image-folder`).
    pub format: String,
    /// The folder, relative to the work tree's root, `/`-separated.
    pub folder: String,
    /// Files listed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// BLAKE3 over the file list's text.
    pub fingerprint: String,
}

impl Manifest {
    /// The manifest of `entries` in `folder`.
    pub fn of(name: &str, folder: &str, entries: &[FileEntry]) -> Manifest {
        Manifest {
            name: name.to_string(),
            format: "image-folder".into(),
            folder: folder.to_string(),
            files: entries.len(),
            bytes: entries.iter().map(|e| e.size).sum(),
            fingerprint: scan::fingerprint(entries),
        }
    }

    /// The TOML text, with a comment saying what it is.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# exp dataset (docs/datasets.md): the files of {} are listed in {}.files\n{body}",
            self.folder, self.name
        )
    }
}

/// `datasets/<name>.toml`.
pub fn manifest_path(name: &str) -> String {
    format!("{MANIFEST_DIR}/{name}.toml")
}

/// `datasets/<name>.files`.
pub fn files_path(name: &str) -> String {
    format!("{MANIFEST_DIR}/{name}.files")
}

/// A dataset as committed: its manifest, its file list and the list's text.
#[derive(Clone)]
pub struct Committed {
    /// `datasets/<name>.toml`.
    pub manifest: Manifest,
    /// `datasets/<name>.files`, parsed.
    pub entries: Vec<FileEntry>,
    /// `datasets/<name>.files` as read.
    files_bytes: Vec<u8>,
}

impl std::fmt::Debug for Committed {
    /// Without the list's bytes (megabytes for a large dataset).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed")
            .field("manifest", &self.manifest)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Committed {
    /// The Git blob id of `datasets/<name>.files` (what a run records; hashed when asked, since
    /// `exp data status` has no use for it).
    pub fn files_blob(&self) -> String {
        git2::Oid::hash_object(git2::ObjectType::Blob, &self.files_bytes)
            .map(|o| o.to_string())
            .unwrap_or_default()
    }
}

/// Reads dataset `name` from the work tree's manifest files.
pub fn read_worktree(worktree: &Path, name: &str) -> Result<Committed, DatasetError> {
    let manifest = read_worktree_toml(worktree, name)?;
    read_worktree_files(worktree, name, manifest)
}

/// Dataset `name`'s `datasets/<name>.toml` in the work tree.
fn read_worktree_toml(worktree: &Path, name: &str) -> Result<Manifest, DatasetError> {
    crate::spec::check_dataset_name(name).map_err(DatasetError::Invalid)?;
    let toml_path = worktree.join(manifest_path(name));
    match std::fs::read_to_string(&toml_path) {
        Ok(text) => parse_toml(name, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::Unknown {
            name: name.to_string(),
            path: manifest_path(name),
            known: names(worktree).unwrap_or_default(),
        }),
        Err(source) => Err(DatasetError::Io {
            context: "reading",
            path: toml_path,
            source,
        }),
    }
}

/// Dataset `name`'s `datasets/<name>.files` in the work tree, checked against `manifest`.
fn read_worktree_files(
    worktree: &Path,
    name: &str,
    manifest: Manifest,
) -> Result<Committed, DatasetError> {
    let files_path_abs = worktree.join(files_path(name));
    let files_bytes = std::fs::read(&files_path_abs).map_err(|source| DatasetError::Io {
        context: "reading",
        path: files_path_abs.clone(),
        source,
    })?;
    parse_files(name, manifest, files_bytes)
}

/// Reads dataset `name` from `tree` (a commit's).
pub fn read_tree(
    repo: &git2::Repository,
    tree: &git2::Tree,
    name: &str,
) -> Result<Committed, DatasetError> {
    let blob_at = |path: &str| -> Result<Option<git2::Blob>, DatasetError> {
        match tree.get_path(Path::new(path)) {
            Ok(entry) => Ok(Some(repo.find_blob(entry.id()).map_err(|e| {
                GitError::Git2 {
                    context: format!("reading {path}"),
                    source: e,
                }
            })?)),
            Err(_) => Ok(None),
        }
    };
    let (Some(toml_blob), Some(files_blob)) =
        (blob_at(&manifest_path(name))?, blob_at(&files_path(name))?)
    else {
        return Err(DatasetError::Unknown {
            name: name.to_string(),
            path: manifest_path(name),
            known: Vec::new(),
        });
    };
    let manifest = parse_toml(name, &String::from_utf8_lossy(toml_blob.content()))?;
    parse_files(name, manifest, files_blob.content().to_vec())
}

fn parse_toml(name: &str, toml_text: &str) -> Result<Manifest, DatasetError> {
    let bad = |message: String| DatasetError::BadManifest {
        path: manifest_path(name),
        message,
    };
    let manifest: Manifest = toml::from_str(toml_text).map_err(|e| bad(e.to_string()))?;
    // Checked before anything reads or scans the folder it names.
    let folder = &manifest.folder;
    if folder.is_empty()
        || folder.starts_with('/')
        || folder
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c == ".git")
    {
        return Err(bad(format!(
            "folder {folder:?} is not a relative path inside the work tree"
        )));
    }
    Ok(manifest)
}

fn parse_files(
    name: &str,
    manifest: Manifest,
    files_bytes: Vec<u8>,
) -> Result<Committed, DatasetError> {
    let bad = |path: String, message: String| DatasetError::BadManifest { path, message };
    let text = std::str::from_utf8(&files_bytes)
        .map_err(|_| bad(files_path(name), "not UTF-8 text".into()))?;
    let entries = scan::parse_manifest(text).map_err(|m| bad(files_path(name), m))?;
    let fingerprint = scan::fingerprint_of_text(text, &entries);
    if fingerprint != manifest.fingerprint || manifest.files != entries.len() {
        return Err(bad(
            manifest_path(name),
            format!(
                "its fingerprint and file count ({}, {}) are not those of {} ({fingerprint}, {})",
                manifest.fingerprint,
                manifest.files,
                files_path(name),
                entries.len()
            ),
        ));
    }
    Ok(Committed {
        manifest,
        entries,
        files_bytes,
    })
}

/// The names of the datasets whose manifests are in the work tree, sorted.
pub fn names(worktree: &Path) -> Result<Vec<String>, DatasetError> {
    let dir = worktree.join(MANIFEST_DIR);
    let listing = match std::fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DatasetError::Io {
                context: "reading",
                path: dir,
                source,
            })
        }
    };
    let mut names: Vec<String> = listing
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// What a dataset's folder holds compared with its committed list.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The dataset.
    pub name: String,
    /// Its folder.
    pub folder: String,
    /// Whether the folder exists.
    pub present: bool,
    /// Changes from the list to the folder.
    pub changes: Changes,
}

/// The folder of `committed` scanned (with its stat cache) and compared with its list.
pub fn status(repo: &git2::Repository, committed: &Committed) -> Result<Status, DatasetError> {
    let scanned = scan_folder(
        crate::git::workdir(repo),
        &crate::git::cache_dir(repo),
        &committed.manifest.folder,
    )?;
    Ok(compared(committed, scanned))
}

/// [`status`] of the work tree's dataset `name`: its list is read and checked while its folder
/// is scanned (`exp data status`; on an unchanged 70,000-file folder the two take about as long).
pub fn status_of(repo: &git2::Repository, name: &str) -> Result<Status, DatasetError> {
    let worktree = crate::git::workdir(repo);
    let manifest = read_worktree_toml(worktree, name)?;
    let folder = manifest.folder.clone();
    let cache_dir = crate::git::cache_dir(repo);
    let (committed, scanned) = rayon::join(
        || read_worktree_files(worktree, name, manifest),
        || scan_folder(worktree, &cache_dir, &folder),
    );
    Ok(compared(&committed?, scanned?))
}

/// `committed` against its folder's files (`None`: the folder is missing).
fn compared(committed: &Committed, scanned: Option<Vec<FileEntry>>) -> Status {
    Status {
        name: committed.manifest.name.clone(),
        folder: committed.manifest.folder.clone(),
        present: scanned.is_some(),
        changes: scan::changes(&committed.entries, scanned.as_deref().unwrap_or_default()),
    }
}

/// The files of `folder` of `worktree` (`None` when it is not there), with the stat caches in
/// `cache_dir`.
fn scan_folder(
    worktree: &Path,
    cache_dir: &Path,
    folder: &str,
) -> Result<Option<Vec<FileEntry>>, DatasetError> {
    let folder = worktree.join(folder);
    if !folder.is_dir() {
        return Ok(None);
    }
    Ok(Some(scan::scan(&folder, Some(cache_dir))?))
}

/// For a spec naming `data.dataset`: checks that the folder is exactly the committed list
/// (refusing, before any training, a folder that differs or a list with uncommitted edits) and
/// returns the data spec to load (the folder as `data.path`, read from the work tree's root)
/// and what the record keeps.
pub fn resolve(
    repo: &git2::Repository,
    spec: &crate::spec::DataSpec,
) -> Result<(crate::spec::DataSpec, PathBuf, crate::record::DatasetRecord), DatasetError> {
    let worktree = crate::git::workdir(repo).to_path_buf();
    let committed = read_worktree(&worktree, &spec.dataset)?;
    crate::git::check_clean(
        &worktree,
        &[manifest_path(&spec.dataset), files_path(&spec.dataset)],
    )?;
    let state = status(repo, &committed)?;
    check_matches(&state, &committed)?;
    let mut load = spec.clone();
    load.path = committed.manifest.folder.clone();
    Ok((
        load,
        worktree,
        crate::record::DatasetRecord {
            name: committed.manifest.name.clone(),
            manifest: committed.files_blob(),
            fingerprint: committed.manifest.fingerprint.clone(),
            folder: committed.manifest.folder.clone(),
        },
    ))
}

/// Fails with [`DatasetError::Differs`] when the folder is not exactly the list.
pub fn check_matches(state: &Status, committed: &Committed) -> Result<(), DatasetError> {
    if state.changes.is_empty() && state.present {
        return Ok(());
    }
    let c = &state.changes;
    let examples: Vec<String> = c
        .added
        .iter()
        .map(|p| format!("added {p}"))
        .chain(c.modified.iter().map(|p| format!("modified {p}")))
        .chain(c.deleted.iter().map(|p| format!("deleted {p}")))
        .take(3)
        .collect();
    Err(DatasetError::Differs {
        name: committed.manifest.name.clone(),
        folder: committed.manifest.folder.clone(),
        manifest: files_path(&committed.manifest.name),
        summary: if state.present {
            c.summary()
        } else {
            "the folder does not exist".into()
        },
        examples: if examples.is_empty() || !state.present {
            String::new()
        } else {
            format!(" ({})", examples.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest naming a folder outside the work tree (a hand edit, a hostile commit) is
    /// refused before anything reads or scans that folder.
    #[test]
    fn a_manifest_folder_must_lie_inside_the_work_tree() {
        let toml = |folder: &str| {
            format!(
                "name = \"d\"\nformat = \"image-folder\"\nfolder = {folder:?}\nfiles = 0\nbytes = 0\nfingerprint = \"f\"\n"
            )
        };
        assert_eq!(parse_toml("d", &toml("data/d")).unwrap().folder, "data/d");
        for folder in [
            "",
            "/etc",
            "../up",
            "data/../..",
            "data//d",
            "./d",
            ".git/lfs",
        ] {
            let e = parse_toml("d", &toml(folder)).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "folder {folder:?} is not a relative path inside the work tree"
                )),
                "{folder}: {e}"
            );
        }
    }
}
