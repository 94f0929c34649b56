//! `exp data checkout NAME [--rev REV] [--force]`: makes a dataset's folder hold a committed
//! version. Each file is a copy-on-write clone of its stored object where the file system
//! offers one (btrfs, XFS), else a copy — never a link into the store, so an edit in the
//! folder can never change an object. Files with local changes (not what the work tree's
//! manifest lists) are kept unless `--force`; nothing is touched when an object is missing.

use std::path::Path;

use super::{files_path, manifest_path, read_tree, read_worktree, Committed, DatasetError};
use crate::data::scan::{self, FileEntry};
use crate::git;
use crate::lfs::{LfsPointer, LfsStore, Oid};

/// What a checkout did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckedOut {
    /// The dataset.
    pub name: String,
    /// Its folder.
    pub folder: String,
    /// Files written (new or replaced).
    pub written: usize,
    /// Files removed (not in the version).
    pub removed: usize,
    /// Files already as the version has them.
    pub unchanged: usize,
    /// Whether the files were cloned (copy-on-write) rather than copied, when any was written.
    pub cloned: Option<bool>,
}

/// Checks out dataset `name` at `rev` (a commit, branch or tag; none: the work tree's
/// manifest). With `rev`, its manifest files are written into the work tree too, so status
/// compares the folder with the version it now holds.
pub fn checkout(
    repo: &git2::Repository,
    name: &str,
    rev: Option<&str>,
    force: bool,
) -> Result<CheckedOut, DatasetError> {
    let worktree = git::workdir(repo).to_path_buf();
    let _lock = git::lock::lock_worktree(repo, "exp data checkout")?;
    let baseline = match read_worktree(&worktree, name) {
        Ok(c) => Some(c),
        Err(DatasetError::Unknown { .. }) if rev.is_some() => None,
        Err(e) => return Err(e),
    };
    let target = match rev {
        None => baseline.clone().ok_or_else(|| {
            DatasetError::Invalid(format!("there is no dataset {name:?} in the work tree"))
        })?,
        Some(rev) => {
            let tree = repo
                .revparse_single(rev)
                .and_then(|o| o.peel_to_tree())
                .map_err(|e| {
                    DatasetError::Invalid(format!(
                        "cannot resolve revision {rev:?}: {}",
                        e.message()
                    ))
                })?;
            read_tree(repo, &tree, name)?
        }
    };
    if let Some(b) = &baseline {
        if b.manifest.folder != target.manifest.folder {
            return Err(DatasetError::Invalid(format!(
                "{name} is the folder {} in the work tree but {} at {}; check out the manifest with git first",
                b.manifest.folder,
                target.manifest.folder,
                rev.unwrap_or("HEAD")
            )));
        }
    }
    if rev.is_some() && !force {
        git::check_clean(&worktree, &[manifest_path(name), files_path(name)])?;
    }
    let folder_rel = target.manifest.folder.clone();
    let folder = worktree.join(&folder_rel);
    let current = if folder.is_dir() {
        scan::scan(&folder, Some(&git::cache_dir(repo)))?
    } else {
        Vec::new()
    };
    let plan = plan(&current, baseline.as_ref(), &target);
    if !force {
        if let Some(first) = plan.local_changes.first() {
            return Err(DatasetError::LocalChanges {
                folder: folder_rel,
                count: plan.local_changes.len(),
                example: first.clone(),
            });
        }
    }
    let store = LfsStore::for_repo(repo);
    let mut missing = Vec::new();
    for e in &plan.write {
        let pointer = LfsPointer::new(Oid::parse(&e.sha256)?, e.size);
        if !store.holds(&pointer) {
            missing.push(e.path.clone());
        }
    }
    if let Some(first) = missing.first() {
        return Err(DatasetError::MissingObjects {
            name: name.to_string(),
            count: missing.len(),
            example: first.clone(),
        });
    }

    let mut out = CheckedOut {
        name: name.to_string(),
        folder: folder_rel.clone(),
        unchanged: plan.unchanged,
        ..CheckedOut::default()
    };
    for path in &plan.remove {
        let abs = folder.join(path);
        std::fs::remove_file(&abs).map_err(|source| DatasetError::Io {
            context: "removing",
            path: abs.clone(),
            source,
        })?;
        out.removed += 1;
        remove_empty_parents(&folder, &abs);
    }
    for e in &plan.write {
        let object = store.object_path(&Oid::parse(&e.sha256)?);
        let cloned = materialise(&object, &folder.join(&e.path))?;
        out.cloned = Some(out.cloned.unwrap_or(true) && cloned);
        out.written += 1;
    }
    if rev.is_some() {
        for (path, text) in [
            (manifest_path(name), target.manifest.to_text()),
            (files_path(name), scan::manifest_text(&target.entries)),
        ] {
            let abs = worktree.join(&path);
            crate::files::write_whole(&abs, text.as_bytes(), false).map_err(|source| {
                DatasetError::Io {
                    context: "writing",
                    path: abs.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(out)
}

struct Plan {
    write: Vec<FileEntry>,
    remove: Vec<String>,
    unchanged: usize,
    /// Paths whose local content is not the baseline's and would be overwritten or removed.
    local_changes: Vec<String>,
}

/// What to write and remove so the folder (`current`) holds `target`; a file counts as a
/// local change when it differs from `baseline` (the work tree's manifest) — a file the user
/// edited or added and has not recorded with `exp data add`.
fn plan(current: &[FileEntry], baseline: Option<&Committed>, target: &Committed) -> Plan {
    use std::collections::HashMap;
    let in_baseline: HashMap<&str, &str> = baseline
        .map(|b| {
            b.entries
                .iter()
                .map(|e| (e.path.as_str(), e.sha256.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let in_target: HashMap<&str, &FileEntry> = target
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    let now: HashMap<&str, &FileEntry> = current.iter().map(|e| (e.path.as_str(), e)).collect();
    let clean = |e: &FileEntry| in_baseline.get(e.path.as_str()) == Some(&e.sha256.as_str());
    let mut plan = Plan {
        write: Vec::new(),
        remove: Vec::new(),
        unchanged: 0,
        local_changes: Vec::new(),
    };
    for t in &target.entries {
        match now.get(t.path.as_str()) {
            Some(c) if c.sha256 == t.sha256 => plan.unchanged += 1,
            Some(c) => {
                if !clean(c) {
                    plan.local_changes.push(c.path.clone());
                }
                plan.write.push(t.clone());
            }
            None => plan.write.push(t.clone()),
        }
    }
    for c in current {
        if !in_target.contains_key(c.path.as_str()) {
            if !clean(c) {
                plan.local_changes.push(c.path.clone());
            }
            plan.remove.push(c.path.clone());
        }
    }
    plan
}

/// Writes object `object` to `target` (a temp file beside it, renamed): a reflink clone when
/// the file system can, else a copy. Returns whether it was cloned. The file gets the mode a
/// new file gets (the store's objects are read-only).
fn materialise(object: &Path, target: &Path) -> Result<bool, DatasetError> {
    let io = |context, source| DatasetError::Io {
        context,
        path: target.to_path_buf(),
        source,
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of", e))?;
    let tmp = dir.join(format!(
        "{}{}",
        crate::files::TEMP_PREFIX,
        target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let cloned = match reflink_copy::reflink(object, &tmp) {
        Ok(()) => true,
        Err(_) => {
            std::fs::copy(object, &tmp).map_err(|e| io("copying the stored object to", e))?;
            false
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io("setting the mode of", e))?;
    }
    std::fs::rename(&tmp, target).map_err(|e| io("writing", e))?;
    Ok(cloned)
}

#[cfg(unix)]
fn umask() -> u32 {
    // SAFETY: umask only swaps the process's mask; it is put back at once.
    unsafe {
        let mask = libc::umask(0o022);
        libc::umask(mask);
        mask as u32
    }
}

/// Removes the folders a removal left empty, up to (not including) `root`.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
