//! Finding LFS pointers in Git: in one tree (`exp lfs ls`, fsck), in every commit a set of refs
//! reaches (prune, push), in the index (the pre-commit guard).
//!
//! A dataset's file list (`datasets/<name>.files`, docs/design.md §9) references LFS objects
//! as pointers do, one per line: its objects are found wherever pointers are, so push, pull,
//! fsck and prune cover datasets as they cover weights.

use std::collections::{BTreeMap, BTreeSet};

use git2::{ObjectType, Oid as GitOid, Repository, TreeWalkMode, TreeWalkResult};

use super::pointer::MAX_POINTER;
use super::{LfsPointer, Oid};

/// A file in a tree.
#[derive(Debug, Clone)]
pub struct TreeFile {
    /// Its path from the root of the tree.
    pub path: String,
    /// Its blob.
    pub blob: GitOid,
    /// The pointer it holds, if it holds one.
    pub pointer: Option<LfsPointer>,
}

/// Every file of `tree` that is a pointer or that the repository's attributes route through
/// `filter=lfs` (which then should be a pointer).
pub fn lfs_files(repo: &Repository, tree: &git2::Tree) -> Result<Vec<TreeFile>, git2::Error> {
    let mut files = Vec::new();
    let mut failure = None;
    let empty = empty_blob();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() != Some(ObjectType::Blob) {
            return TreeWalkResult::Ok;
        }
        let path = format!("{dir}{}", entry.name().unwrap_or(""));
        // An empty file is the empty blob under git-lfs too: not a pointer, not raw content.
        if entry.id() == empty {
            return TreeWalkResult::Ok;
        }
        if is_dataset_file_list(&path) {
            return match dataset_objects(repo, &path, entry.id()) {
                Ok(objects) => {
                    files.extend(objects.into_iter().map(|(pointer, path)| TreeFile {
                        path,
                        blob: entry.id(),
                        pointer: Some(pointer),
                    }));
                    TreeWalkResult::Ok
                }
                Err(e) => {
                    failure = Some(e);
                    TreeWalkResult::Abort
                }
            };
        }
        match pointer_in_blob(repo, entry.id()) {
            Ok(pointer) => {
                if pointer.is_some() || routed_through_lfs(repo, &path) {
                    files.push(TreeFile {
                        path,
                        blob: entry.id(),
                        pointer,
                    });
                }
                TreeWalkResult::Ok
            }
            Err(e) => {
                failure = Some(e);
                TreeWalkResult::Abort
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(files),
    }
}

/// Whether `path` is a dataset's file list, `datasets/<name>.files`.
pub fn is_dataset_file_list(path: &str) -> bool {
    path.strip_prefix("datasets/")
        .is_some_and(|name| name.ends_with(".files") && !name.contains('/'))
}

/// Whether a reference's place (`Reference::path`, `TreeFile::path`) is a file of a dataset's
/// list (`datasets/<name>.files:<file>`, as [`dataset_objects`] names it) rather than a pointer.
pub fn in_dataset_list(place: &str) -> bool {
    place
        .split_once(':')
        .is_some_and(|(list, _)| is_dataset_file_list(list))
}

/// The objects a dataset file list (blob `id`, at `path`) references, each with the place it
/// names (`datasets/<name>.files:<file>`). A list that does not parse is an error: prune must
/// not delete what an unreadable list might reference.
pub fn dataset_objects(
    repo: &Repository,
    path: &str,
    id: GitOid,
) -> Result<Vec<(LfsPointer, String)>, git2::Error> {
    let blob = repo.find_blob(id)?;
    let text = std::str::from_utf8(blob.content())
        .map_err(|_| git2::Error::from_str(&format!("{path} ({id}) is not UTF-8 text")))?;
    let entries = crate::data::scan::parse_manifest(text)
        .map_err(|e| git2::Error::from_str(&format!("{path} ({id}): {e}")))?;
    entries
        .into_iter()
        .map(|e| {
            let oid = Oid::parse(&e.sha256)
                .map_err(|err| git2::Error::from_str(&format!("{path}: {err}")))?;
            Ok((LfsPointer::new(oid, e.size), format!("{path}:{}", e.path)))
        })
        .collect()
}

/// The id of the empty blob (`git hash-object /dev/null`).
pub fn empty_blob() -> GitOid {
    GitOid::hash_object(ObjectType::Blob, b"").unwrap_or_else(|_| GitOid::zero())
}

/// The pointer held by blob `id`, if it is one (sized first: a large blob is never read).
pub fn pointer_in_blob(repo: &Repository, id: GitOid) -> Result<Option<LfsPointer>, git2::Error> {
    let odb = repo.odb()?;
    let (size, kind) = odb.read_header(id)?;
    if kind != ObjectType::Blob || size > MAX_POINTER {
        return Ok(None);
    }
    let blob = repo.find_blob(id)?;
    Ok(LfsPointer::parse(blob.content()).ok())
}

/// Whether the attributes (index, then work tree) say `filter=lfs` for `path`.
pub fn routed_through_lfs(repo: &Repository, path: &str) -> bool {
    repo.get_attr(
        std::path::Path::new(path),
        "filter",
        git2::AttrCheckFlags::INDEX_THEN_FILE,
    )
    .ok()
    .flatten()
        == Some("lfs")
}

/// One LFS object a history references, with one place it is referenced (for messages).
#[derive(Debug, Clone)]
pub struct Reference {
    /// The pointer as committed.
    pub pointer: LfsPointer,
    /// A path holding it.
    pub path: String,
    /// A commit holding it there.
    pub commit: GitOid,
}

/// Every LFS object referenced by a commit reachable from `tips` and not from `hidden`.
pub fn referenced_objects(
    repo: &Repository,
    tips: &[GitOid],
    hidden: &[GitOid],
) -> Result<BTreeMap<Oid, Reference>, git2::Error> {
    let mut walk = repo.revwalk()?;
    let mut any = false;
    for tip in tips {
        // Tags may point at trees or blobs; only commits have history to walk.
        if let Ok(commit) = repo
            .find_object(*tip, None)
            .and_then(|o| o.peel_to_commit())
        {
            walk.push(commit.id())?;
            any = true;
        }
    }
    let mut found = BTreeMap::new();
    if !any {
        return Ok(found);
    }
    for h in hidden {
        if let Ok(commit) = repo.find_object(*h, None).and_then(|o| o.peel_to_commit()) {
            walk.hide(commit.id())?;
        }
    }
    let mut seen_trees = BTreeSet::new();
    let mut seen_blobs = BTreeSet::new();
    for commit in walk {
        let commit = repo.find_commit(commit?)?;
        collect_tree(
            repo,
            commit.tree_id(),
            "",
            commit.id(),
            &mut seen_trees,
            &mut seen_blobs,
            &mut found,
        )?;
    }
    Ok(found)
}

/// Walks a tree, skipping subtrees already seen (commits share most of their trees).
fn collect_tree(
    repo: &Repository,
    tree: GitOid,
    prefix: &str,
    commit: GitOid,
    seen_trees: &mut BTreeSet<GitOid>,
    seen_blobs: &mut BTreeSet<GitOid>,
    found: &mut BTreeMap<Oid, Reference>,
) -> Result<(), git2::Error> {
    if !seen_trees.insert(tree) {
        return Ok(());
    }
    let tree = repo.find_tree(tree)?;
    for entry in tree.iter() {
        let name = entry.name().unwrap_or("");
        let path = format!("{prefix}{name}");
        match entry.kind() {
            Some(ObjectType::Tree) => collect_tree(
                repo,
                entry.id(),
                &format!("{path}/"),
                commit,
                seen_trees,
                seen_blobs,
                found,
            )?,
            Some(ObjectType::Blob)
                if is_dataset_file_list(&path) && seen_blobs.insert(entry.id()) =>
            {
                for (pointer, place) in dataset_objects(repo, &path, entry.id())? {
                    found.entry(pointer.oid.clone()).or_insert(Reference {
                        pointer,
                        path: place,
                        commit,
                    });
                }
            }
            Some(ObjectType::Blob) if seen_blobs.insert(entry.id()) => {
                if let Some(pointer) = pointer_in_blob(repo, entry.id())? {
                    found.entry(pointer.oid.clone()).or_insert(Reference {
                        pointer,
                        path,
                        commit,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The pointers staged in the index.
pub fn index_pointers(repo: &Repository) -> Result<Vec<LfsPointer>, git2::Error> {
    let index = repo.index()?;
    let mut found = Vec::new();
    for entry in index.iter() {
        if let Some(p) = pointer_in_blob(repo, entry.id)? {
            found.push(p);
        }
    }
    Ok(found)
}
