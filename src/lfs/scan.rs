//! Finding LFS pointers in Git: in one tree (`exp lfs ls`, fsck), in every commit a set of refs
//! reaches (prune, push), in the index (the pre-commit guard).

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
