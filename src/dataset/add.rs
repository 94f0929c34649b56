//! `exp data add PATH [--name NAME]`: every file of a work-tree folder into the LFS store
//! (hashed in parallel, each new file read once and stored from those bytes, each object
//! stored once; files the stat cache knows are not read), then the manifest and the folder's
//! `.gitignore` line committed — on the current branch, or on a new `feature/data-<name>-…`
//! branch started at HEAD when that is develop or main, as a run commits.

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{files_path, manifest_path, read_worktree, DatasetError, Manifest};
use crate::data::scan::{self, Changes, FileEntry, Sink};
use crate::data::DataError;
use crate::git::{self, CommitFile};
use crate::lfs::{Durability, LfsPointer, LfsStore, Oid};

/// What `exp data add` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    /// The dataset.
    pub name: String,
    /// Its folder, relative to the work tree.
    pub folder: String,
    /// Files in the folder.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Objects the store did not hold before.
    pub new_objects: usize,
    /// Changes from the previous version (all files added for a new dataset).
    pub changes: Changes,
    /// The commit, when the folder changed.
    pub commit: Option<String>,
    /// The branch committed on.
    pub branch: String,
    /// The branch this started on, when the commit went to a new feature branch.
    pub switched_from: Option<String>,
}

/// Adds (or updates) the dataset of folder `path` (relative to `cwd` or absolute).
pub fn add(
    repo: &git2::Repository,
    cwd: &Path,
    path: &Path,
    name: Option<&str>,
) -> Result<Added, DatasetError> {
    let worktree = git::workdir(repo).to_path_buf();
    let _lock = git::lock::lock_worktree(repo, "exp data add")?;
    let (folder_abs, folder) = folder_in_worktree(repo, &worktree, &cwd.join(path))?;
    let name = match name {
        Some(n) => n.to_string(),
        None => folder.rsplit('/').next().unwrap_or(&folder).to_string(),
    };
    crate::spec::check_dataset_name(&name).map_err(DatasetError::Invalid)?;
    let previous = match read_worktree(&worktree, &name) {
        Ok(c) => Some(c),
        Err(DatasetError::Unknown { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(p) = &previous {
        if p.manifest.folder != folder {
            return Err(DatasetError::Invalid(format!(
                "the dataset {name:?} is the folder {}, not {folder}; give another --name",
                p.manifest.folder
            )));
        }
    }
    // exp's own files must hold what was committed: an edit there would be committed unseen.
    git::check_clean(
        &worktree,
        &[manifest_path(&name), files_path(&name), ".gitignore".into()],
    )?;

    // Held, Git's index lock would let the commit land but not the index's update (the
    // commit would look undone in `git status`): refused before any work.
    git::check_no_lock(&repo.path().join("index.lock"))?;

    let store = LfsStore::for_repo(repo).with_durability(Durability::AtCommit);
    let sink = StoreSink {
        store: &store,
        batch: store.batch()?,
        new: AtomicUsize::new(0),
    };
    let entries = sink
        .batch
        .flushing(|| scan::scan_into(&folder_abs, Some(&git::cache_dir(repo)), Some(&sink)))?;
    if entries.is_empty() {
        return Err(DatasetError::Invalid(format!(
            "{folder} holds no files (names starting with '.' are not data)"
        )));
    }
    let new_objects = sink.new.load(Ordering::Relaxed);
    let changes = scan::changes(
        previous.as_ref().map_or(&[][..], |p| &p.entries[..]),
        &entries,
    );
    let (current, _) = git::current_branch(repo)?;
    let mut added = Added {
        name: name.clone(),
        folder: folder.clone(),
        files: entries.len(),
        bytes: entries.iter().map(|e| e.size).sum(),
        new_objects,
        changes,
        commit: None,
        branch: current.clone(),
        switched_from: None,
    };
    let unchanged = previous.is_some() && added.changes.is_empty();
    // The objects are on disk before a commit names them, or before exp says that objects the
    // store had lost are stored again.
    if new_objects > 0 || !unchanged {
        sink.batch.sync()?;
    }
    if unchanged {
        return Ok(added);
    }
    let manifest = Manifest::of(&name, &folder, &entries);
    let mut files = vec![
        CommitFile {
            path: manifest_path(&name),
            blob: manifest.to_text().into_bytes(),
        },
        CommitFile {
            path: files_path(&name),
            blob: scan::manifest_text(&entries).into_bytes(),
        },
    ];
    if !ignored(&worktree, &folder)? {
        files.push(gitignore_with(&worktree, &name, &folder)?);
    }
    if git::is_integration_branch(&current) {
        let branch = start_feature_branch(repo, &name, &manifest.fingerprint)?;
        added.switched_from = Some(current);
        added.branch = branch;
    }
    for file in &files {
        write(&worktree, file)?;
    }
    let message = if previous.is_none() {
        format!(
            "data: add {name} ({} files, {})\n\nfolder {folder}\nfingerprint {}\n",
            manifest.files,
            human(manifest.bytes),
            manifest.fingerprint
        )
    } else {
        format!(
            "data: update {name} ({})\n\nfolder {folder}\nfingerprint {}\n",
            added.changes.summary(),
            manifest.fingerprint
        )
    };
    let commit = git::commit_files(repo, None, &files, &message)?;
    added.commit = Some(commit.to_string());
    Ok(added)
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

/// Creates `feature/data-<name>-<fingerprint[..7]>` (numbered when taken) at HEAD's commit
/// and points HEAD at it; returns its name. Nothing in the index or the work tree changes, so
/// this is done with git2 rather than `git switch -c`: no checkout hook runs (git-lfs's lists
/// every untracked file, the dataset's folder among them: 0.18 s for 70k files), and no hook
/// that fails after Git moved HEAD can leave the add half done. A name taken meanwhile by
/// another process is passed over; the branch is deleted again if HEAD cannot be moved.
fn start_feature_branch(
    repo: &git2::Repository,
    name: &str,
    fingerprint: &str,
) -> Result<String, git::GitError> {
    let base = format!(
        "feature/data-{name}-{}",
        &fingerprint[..7.min(fingerprint.len())]
    );
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(git::ctx("reading HEAD's commit"))?;
    let mut n = 1;
    loop {
        let branch = match n {
            1 => base.clone(),
            n => format!("{base}-{n}"),
        };
        n += 1;
        let mut made = match repo.branch(&branch, &head, false) {
            Ok(made) => made,
            Err(e) if e.code() == git2::ErrorCode::Exists => continue,
            Err(e) => return Err(git::ctx(format!("creating the branch {branch}"))(e)),
        };
        if let Err(e) = repo.set_head(&format!("refs/heads/{branch}")) {
            let _ = made.delete();
            return Err(match e.code() {
                git2::ErrorCode::Locked => git::GitError::Locked(repo.path().join("HEAD.lock")),
                _ => git::ctx(format!("switching to the new branch {branch}"))(e),
            });
        }
        return Ok(branch);
    }
}

/// Writes a file to commit into the work tree, whole.
fn write(worktree: &Path, file: &CommitFile) -> Result<(), DatasetError> {
    let abs = worktree.join(&file.path);
    crate::files::write_whole(&abs, &file.blob, false).map_err(|source| DatasetError::Io {
        context: "writing",
        path: abs,
        source,
    })
}

/// The work tree's `.gitignore` (read as bytes: any encoding is kept) with the line that
/// ignores the dataset's folder appended, as a file to commit.
fn gitignore_with(worktree: &Path, name: &str, folder: &str) -> Result<CommitFile, DatasetError> {
    let path = worktree.join(".gitignore");
    let mut text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(DatasetError::Io {
                context: "reading",
                path,
                source,
            })
        }
    };
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(
        format!("# dataset {name} (exp data add): its files are in the LFS store\n/{folder}/\n")
            .as_bytes(),
    );
    Ok(CommitFile {
        path: ".gitignore".into(),
        blob: text,
    })
}

/// Whether Git already ignores the folder.
fn ignored(worktree: &Path, folder: &str) -> Result<bool, DatasetError> {
    let out = std::process::Command::new("git")
        .current_dir(worktree)
        .args(["check-ignore", "-q", "--no-index", &format!("{folder}/")])
        .status()
        .map_err(|source| DatasetError::Io {
            context: "running git check-ignore in",
            path: worktree.to_path_buf(),
            source,
        })?;
    Ok(out.success())
}

/// The folder as an absolute path and relative to the work tree, checked: a folder inside the
/// work tree (not its root, not inside `.git`), whose files Git does not track.
fn folder_in_worktree(
    repo: &git2::Repository,
    worktree: &Path,
    given: &Path,
) -> Result<(PathBuf, String), DatasetError> {
    let abs = std::fs::canonicalize(given).map_err(|source| DatasetError::Io {
        context: "reading the folder",
        path: given.to_path_buf(),
        source,
    })?;
    if !abs.is_dir() {
        return Err(DatasetError::Invalid(format!(
            "{} is not a folder: exp data add takes a folder of files",
            given.display()
        )));
    }
    let root = std::fs::canonicalize(worktree).unwrap_or_else(|_| worktree.to_path_buf());
    let relative = abs.strip_prefix(&root).map_err(|_| {
        DatasetError::Invalid(format!(
            "{} is outside the work tree {}: move or copy it into the repository's folder (Git ignores it; its files go to the LFS store)",
            abs.display(),
            root.display()
        ))
    })?;
    let Some(relative) = relative.to_str().filter(|r| !r.is_empty()) else {
        return Err(DatasetError::Invalid(
            "the dataset must be a folder inside the work tree, not the work tree itself (or a path that is not UTF-8)".into(),
        ));
    };
    let relative = relative.replace(std::path::MAIN_SEPARATOR, "/");
    if git::inside_git_dir(repo, &abs).is_some() || relative.split('/').any(|c| c == ".git") {
        return Err(DatasetError::Invalid(format!(
            "{relative} is inside the Git directory"
        )));
    }
    if relative == super::MANIFEST_DIR || relative.starts_with("datasets/") {
        return Err(DatasetError::Invalid(format!(
            "{relative}: datasets/ holds exp's manifests; keep the data elsewhere (e.g. data/{})",
            relative.rsplit('/').next().unwrap_or("NAME")
        )));
    }
    let tracked = git::git(worktree, &["ls-files", "--", &format!("{relative}/")])?;
    if let Some(first) = tracked.lines().next() {
        return Err(DatasetError::Invalid(format!(
            "{relative} holds files Git tracks (e.g. {first}); a dataset's files live in the LFS store — `git rm -r --cached {relative}` first"
        )));
    }
    Ok((abs, relative))
}

/// The scan's [`Sink`]: each new file goes into the LFS store from the bytes the scan hashed
/// (read once); a file whose hash came from the stat cache has its object checked, and stored
/// again if the store lost it.
struct StoreSink<'a> {
    store: &'a LfsStore,
    batch: crate::lfs::BatchWriter<'a>,
    new: AtomicUsize,
}

impl StoreSink<'_> {
    fn pointer(entry: &FileEntry) -> Result<LfsPointer, DataError> {
        Oid::parse(&entry.sha256)
            .map(|oid| LfsPointer::new(oid, entry.size))
            .map_err(|e| DataError::Inconsistent(e.to_string()))
    }

    fn stored(path: &Path) -> impl Fn(crate::lfs::LfsError) -> DataError + '_ {
        move |e| {
            DataError::Inconsistent(format!("storing {} in the LFS store: {e}", path.display()))
        }
    }

    /// Streams `path` into the store; it must still be `pointer`'s content.
    fn stream(&self, pointer: &LfsPointer, path: &Path) -> Result<(), DataError> {
        let file = std::fs::File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut writer = self.store.writer().map_err(Self::stored(path))?;
        writer.copy_from(file).map_err(Self::stored(path))?;
        let stored = writer.finish().map_err(Self::stored(path))?;
        if stored != *pointer {
            return Err(DataError::Inconsistent(format!(
                "{} changed while it was being added (its bytes are now {}, {} bytes); run exp data add again",
                path.display(),
                stored.oid.as_str(),
                stored.size
            )));
        }
        Ok(())
    }
}

impl Sink for StoreSink<'_> {
    fn fresh(&self, entry: &FileEntry, bytes: Option<&[u8]>, path: &Path) -> Result<(), DataError> {
        let pointer = Self::pointer(entry)?;
        let new = match bytes {
            Some(bytes) => self
                .batch
                .put(&pointer, bytes)
                .map_err(Self::stored(path))?,
            None if self.store.refresh(&pointer) => false,
            None => {
                self.stream(&pointer, path)?;
                true
            }
        };
        if new {
            self.new.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn cached(&self, entry: &FileEntry, path: &Path) -> Result<(), DataError> {
        let pointer = Self::pointer(entry)?;
        if self.store.refresh(&pointer) {
            return Ok(());
        }
        self.stream(&pointer, path)?;
        self.new.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
