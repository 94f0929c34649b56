//! Headless commits (docs/design.md §5): a commit built from a branch tip's tree with one
//! experiment's files replaced, appended to the branch by compare-and-swap — no work tree, no
//! index, no HEAD. Concurrent appenders (sweep trials) each read the tip, build on it and move
//! the branch only if it still points there; the loser rebuilds on the new tip and retries, so
//! no append is lost and none is made twice.

use std::path::Path;

use git2::{Oid, Repository};

use super::{ctx, CommitFile, GitError};

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new commit, now the branch's tip.
    New(Oid),
    /// `already` found the commit on the branch: nothing was appended.
    Existing(Oid),
}

impl Appended {
    /// The commit either way.
    pub fn commit(self) -> Oid {
        match self {
            Appended::New(c) | Appended::Existing(c) => c,
        }
    }
}

/// An in-memory index entry for a regular file (no stat data: the index is only a tree
/// builder here).
pub fn blob_entry(path: &str, id: Oid, size: usize) -> git2::IndexEntry {
    git2::IndexEntry {
        ctime: git2::IndexTime::new(0, 0),
        mtime: git2::IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        file_size: size as u32,
        id,
        flags: (path.len().min(0xfff)) as u16,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
}

/// The work tree that has `branch` checked out, if any (the main one or a linked one): a
/// headless append would leave it stale, its `git status` lying about what it holds.
pub fn checked_out_in(repo: &Repository, branch: &str) -> Option<std::path::PathBuf> {
    let refname = format!("refs/heads/{branch}");
    let holds = |r: &Repository| {
        r.find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().map(|t| t == refname))
            .unwrap_or(false)
    };
    // The main work tree (its HEAD lives in the common dir).
    if let Ok(main) = Repository::open(repo.commondir()) {
        if holds(&main) {
            return Some(main.workdir().unwrap_or(main.path()).to_path_buf());
        }
    }
    for name in repo.worktrees().ok()?.iter().flatten() {
        if let Ok(wt) = repo.find_worktree(name) {
            if let Ok(r) = Repository::open_from_worktree(&wt) {
                if holds(&r) {
                    return Some(wt.path().to_path_buf());
                }
            }
        }
    }
    None
}

/// How many lost races an append tolerates before giving up (each retry rebuilds one tree).
const MAX_ATTEMPTS: usize = 1000;

/// Appends a commit to `branch` (which must exist) holding the tip's tree with everything under
/// `replace_dir` replaced by `files`. Before each attempt `already(tip)` may name a commit on the
/// branch that already holds this change (a retried trial); then nothing is appended.
pub fn append_files(
    repo: &Repository,
    branch: &str,
    replace_dir: &str,
    files: &[CommitFile],
    message: &str,
    signature: &git2::Signature,
    already: &dyn Fn(Oid) -> Result<Option<Oid>, GitError>,
) -> Result<Appended, GitError> {
    let refname = format!("refs/heads/{branch}");
    // Blobs first, once: they do not depend on the tip.
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let id = repo
            .blob(&f.blob)
            .map_err(ctx(format!("storing {}", f.path)))?;
        entries.push(blob_entry(&f.path, id, f.blob.len()));
    }
    for _ in 0..MAX_ATTEMPTS {
        let tip = repo
            .refname_to_id(&refname)
            .map_err(ctx(format!("reading {branch}")))?;
        if let Some(existing) = already(tip)? {
            return Ok(Appended::Existing(existing));
        }
        let parent = repo
            .find_commit(tip)
            .map_err(ctx(format!("reading {branch}'s tip")))?;
        let mut index = git2::Index::new().map_err(ctx("creating an index"))?;
        index
            .read_tree(&parent.tree().map_err(ctx("reading the tip's tree"))?)
            .map_err(ctx("reading the tip's tree"))?;
        index
            .remove_dir(Path::new(replace_dir), 0)
            .map_err(ctx("building the tree"))?;
        for e in &entries {
            index.add(e).map_err(ctx("building the tree"))?;
        }
        let tree_id = index.write_tree_to(repo).map_err(ctx("writing the tree"))?;
        let tree = repo.find_tree(tree_id).map_err(ctx("reading the tree"))?;
        let commit = repo
            .commit(None, signature, signature, message, &tree, &[&parent])
            .map_err(ctx("committing"))?;
        // The compare-and-swap: the branch moves only if it still points at the tip we built on.
        match repo.reference_matching(&refname, commit, true, tip, message) {
            Ok(_) => return Ok(Appended::New(commit)),
            Err(e)
                if matches!(
                    e.code(),
                    git2::ErrorCode::Modified | git2::ErrorCode::Locked
                ) =>
            {
                // Lost the race (or another appender holds the ref's lock): rebuild on the new
                // tip. The orphaned commit object is garbage for `git gc`.
                std::thread::yield_now();
                continue;
            }
            Err(e) => return Err(ctx(format!("moving {branch}"))(e)),
        }
    }
    Err(GitError::Contended {
        branch: branch.to_string(),
        attempts: MAX_ATTEMPTS,
    })
}

/// The run number of `commit` on `branch`: how many run commits of `experiment` recorded for
/// `branch` (message `exp run <experiment>: …`, record's `run.branch`) its first-parent history
/// holds, itself included. Appends are serialised by the compare-and-swap, so this is the
/// commit's place on its branch whatever order concurrent trials tag in; runs of other branches
/// merged or fast-forwarded into the history do not count.
pub fn run_number(
    repo: &Repository,
    branch: &str,
    commit: Oid,
    experiment: &str,
) -> Result<u64, GitError> {
    let prefix = super::run_subject(experiment);
    let record_path =
        crate::record::layout::run_file(experiment, crate::record::layout::RECORD_FILE);
    let mut walk = repo.revwalk().map_err(ctx("walking the branch"))?;
    walk.push(commit).map_err(ctx("walking the branch"))?;
    walk.simplify_first_parent()
        .map_err(ctx("walking the branch"))?;
    let mut n = 0;
    for oid in walk {
        let oid = oid.map_err(ctx("walking the branch"))?;
        let c = repo.find_commit(oid).map_err(ctx("reading a commit"))?;
        if !c.message_bytes().starts_with(prefix.as_bytes()) {
            continue;
        }
        let recorded_branch = c
            .tree()
            .ok()
            .and_then(|t| t.get_path(Path::new(&record_path)).ok())
            .and_then(|e| repo.find_blob(e.id()).ok())
            .and_then(|b| {
                let text = std::str::from_utf8(b.content()).ok()?;
                let table: toml::Table = toml::from_str(text).ok()?;
                Some(table.get("run")?.get("branch")?.as_str()?.to_string())
            });
        if recorded_branch.as_deref() == Some(branch) {
            n += 1;
        }
    }
    Ok(n)
}

/// Puts the run of `experiment` recorded at commit `from` at the tip of `branch`: one commit
/// whose tree is the tip's with `experiments/<experiment>.toml` and `experiments/<experiment>/`
/// taken from `from` (the record, weights pointer, predictions and history of that run). No
/// work tree is touched. Returns `None` when the tip already holds exactly that run.
pub fn apply_run(
    repo: &Repository,
    branch: &str,
    experiment: &str,
    from: Oid,
    message: &str,
    signature: &git2::Signature,
) -> Result<Option<Oid>, GitError> {
    let source = repo
        .find_commit(from)
        .and_then(|c| c.tree())
        .map_err(ctx("reading the run's commit"))?;
    let spec = crate::record::layout::spec_path(experiment);
    let dir = crate::record::layout::run_dir(experiment);
    let mut files = Vec::new();
    if let Ok(entry) = source.get_path(Path::new(&spec)) {
        let blob = repo
            .find_blob(entry.id())
            .map_err(ctx(format!("reading {spec}")))?;
        files.push(CommitFile {
            path: spec.clone(),
            blob: blob.content().to_vec(),
        });
    }
    let run_tree = source
        .get_path(Path::new(&dir))
        .and_then(|e| repo.find_tree(e.id()))
        .map_err(ctx(format!("reading {dir}/ of the run's commit")))?;
    for entry in run_tree.iter() {
        if entry.kind() != Some(git2::ObjectType::Blob) {
            continue;
        }
        let name = entry.name().unwrap_or_default();
        let blob = repo
            .find_blob(entry.id())
            .map_err(ctx(format!("reading {dir}/{name}")))?;
        files.push(CommitFile {
            path: format!("{dir}/{name}"),
            blob: blob.content().to_vec(),
        });
    }
    let same_at = |tip: Oid| -> Result<Option<Oid>, GitError> {
        let tree = repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .map_err(ctx("reading the tip"))?;
        let id = |t: &git2::Tree, p: &str| t.get_path(Path::new(p)).ok().map(|e| e.id());
        Ok(
            (id(&tree, &dir) == id(&source, &dir) && id(&tree, &spec) == id(&source, &spec))
                .then_some(tip),
        )
    };
    let appended = append_files(repo, branch, &dir, &files, message, signature, &same_at)?;
    Ok(match appended {
        Appended::New(c) => Some(c),
        Appended::Existing(_) => None,
    })
}

/// Tags every run commit on `branch`'s recent first-parent history that a crash left without its
/// run tag (two refs cannot move atomically: a kill between the commit and the tag leaves one);
/// returns the tags made. Looks at the last 200 commits.
pub fn tag_untagged_runs(repo: &Repository, branch: &str) -> Result<Vec<String>, GitError> {
    let Ok(tip) = repo.refname_to_id(&format!("refs/heads/{branch}")) else {
        return Ok(Vec::new());
    };
    let mut walk = repo.revwalk().map_err(ctx("walking the branch"))?;
    walk.push(tip).map_err(ctx("walking the branch"))?;
    walk.simplify_first_parent()
        .map_err(ctx("walking the branch"))?;
    let mut untagged = Vec::new();
    for oid in walk.take(200) {
        let oid = oid.map_err(ctx("walking the branch"))?;
        let c = repo.find_commit(oid).map_err(ctx("reading a commit"))?;
        let Some(experiment) = c
            .message()
            .and_then(super::run_subject_experiment)
            .map(str::to_string)
        else {
            continue;
        };
        let prefix = super::run_tag_prefix(branch, &experiment);
        let tagged = repo
            .tag_names(Some(&format!("{prefix}*")))
            .map_err(ctx("listing tags"))?
            .iter()
            .flatten()
            .any(|t| {
                repo.revparse_single(&format!("refs/tags/{t}"))
                    .and_then(|o| o.peel_to_commit())
                    .is_ok_and(|c| c.id() == oid)
            });
        if !tagged && run_number(repo, branch, oid, &experiment)? > 0 {
            untagged.push((oid, experiment));
        }
    }
    let signature = super::signature(repo)?;
    let mut made = Vec::new();
    for (oid, experiment) in untagged.into_iter().rev() {
        let headline = repo
            .find_commit(oid)
            .ok()
            .and_then(|c| c.summary().map(|s| s.to_string()))
            .unwrap_or_default();
        let message = format!(
            "{experiment} on {branch}: {}\n",
            headline.split_once(": ").map_or("", |(_, h)| h)
        );
        made.push(tag_appended(
            repo,
            branch,
            &experiment,
            oid,
            &message,
            &signature,
        )?);
    }
    Ok(made)
}

/// Tags run commit `commit` of `experiment` on `branch` as `run/<branch>/<experiment>/<n>`, n its
/// [`run_number`]; a tag of that name already on `commit` is kept.
pub fn tag_appended(
    repo: &Repository,
    branch: &str,
    experiment: &str,
    commit: Oid,
    message: &str,
    signature: &git2::Signature,
) -> Result<String, GitError> {
    let name = format!(
        "{}{}",
        super::run_tag_prefix(branch, experiment),
        run_number(repo, branch, commit, experiment)?
    );
    let object = repo
        .find_object(commit, None)
        .map_err(ctx("finding the run commit"))?;
    let tagged_here = || {
        repo.revparse_single(&format!("refs/tags/{name}"))
            .and_then(|o| o.peel_to_commit())
            .is_ok_and(|c| c.id() == commit)
    };
    // Two exp processes may tag the same run at the same moment (a sweep trial recording its
    // run while `exp sweep status` tags what it finds untagged): the loser sees the ref locked,
    // or the tag just made. Waiting for the winner costs milliseconds.
    let mut attempts = 0;
    loop {
        if tagged_here() {
            return Ok(name);
        }
        match repo.tag(&name, &object, signature, message, false) {
            Ok(_) => return Ok(name),
            Err(e)
                if attempts < 100
                    && matches!(e.code(), git2::ErrorCode::Locked | git2::ErrorCode::Exists) =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(ctx(format!("creating tag {name}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let sig = git2::Signature::now("T", "t@example.com").unwrap();
        let tree = {
            let mut index = repo.index().unwrap();
            let id = repo.blob(b"keep\n").unwrap();
            let mut e = entry("README", id);
            e.file_size = 5;
            index.add(&e).unwrap();
            index.write_tree().unwrap()
        };
        let tree = repo.find_tree(tree).unwrap();
        let c = repo.commit(None, &sig, &sig, "root", &tree, &[]).unwrap();
        repo.branch("sweep", &repo.find_commit(c).unwrap(), false)
            .unwrap();
        drop(tree);
        (dir, repo)
    }

    fn entry(path: &str, id: Oid) -> git2::IndexEntry {
        git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: 0,
            id,
            flags: path.len() as u16,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        }
    }

    fn file(path: &str, text: &str) -> CommitFile {
        CommitFile {
            path: path.into(),
            blob: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn concurrent_tags_of_one_run_agree() {
        let (dir, repo) = repo();
        let sig = git2::Signature::now("T", "t@example.com").unwrap();
        let files = [file("experiments/e/metrics.toml", "x\n")];
        let subject = super::super::run_subject("e");
        let appended = append_files(
            &repo,
            "sweep",
            "experiments/e",
            &files,
            &subject,
            &sig,
            &|_| Ok(None),
        )
        .unwrap();
        let Appended::New(commit) = appended else {
            panic!("not appended")
        };
        // Twenty times: the run tagged by 4 processes at once, then the tag deleted again.
        for _ in 0..20 {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let path = dir.path().to_path_buf();
                    std::thread::spawn(move || {
                        let repo = Repository::open(&path).unwrap();
                        let sig = git2::Signature::now("T", "t@example.com").unwrap();
                        tag_appended(&repo, "sweep", "e", commit, "m\n", &sig)
                    })
                })
                .collect();
            let names: Vec<String> = threads
                .into_iter()
                .map(|t| t.join().unwrap().unwrap())
                .collect();
            assert!(names.iter().all(|n| n == &names[0]), "{names:?}");
            repo.tag_delete(names[0].trim_start_matches("refs/tags/"))
                .unwrap();
        }
    }

    #[test]
    fn concurrent_appends_all_land_once() {
        let (dir, _) = repo();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let sig = git2::Signature::now("T", "t@example.com").unwrap();
                    let repo = Repository::open(&path).unwrap();
                    let files = [file(&format!("experiments/e/t{i}"), &format!("{i}\n"))];
                    append_files(
                        &repo,
                        "sweep",
                        &format!("experiments/e/t{i}"),
                        &files,
                        &format!("trial {i}"),
                        &sig,
                        &|_| Ok(None),
                    )
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert!(matches!(t.join().unwrap(), Appended::New(_)));
        }
        let repo = Repository::open(dir.path()).unwrap();
        let tip = repo.refname_to_id("refs/heads/sweep").unwrap();
        let tree = repo.find_commit(tip).unwrap().tree().unwrap();
        for i in 0..8 {
            assert!(
                tree.get_path(Path::new(&format!("experiments/e/t{i}")))
                    .is_ok(),
                "t{i} lost"
            );
        }
        assert!(tree.get_path(Path::new("README")).is_ok());
        let mut walk = repo.revwalk().unwrap();
        walk.push(tip).unwrap();
        assert_eq!(walk.count(), 9, "eight appends and the root");
        // A replaced directory holds only the new files; an existing change is not appended.
        let files = [file("experiments/e/only", "x\n")];
        let sig = git2::Signature::now("T", "t@example.com").unwrap();
        append_files(
            &repo,
            "sweep",
            "experiments/e",
            &files,
            "replace",
            &sig,
            &|_| Ok(None),
        )
        .unwrap();
        let tip = repo.refname_to_id("refs/heads/sweep").unwrap();
        let tree = repo.find_commit(tip).unwrap().tree().unwrap();
        let e = tree.get_path(Path::new("experiments/e")).unwrap();
        assert_eq!(repo.find_tree(e.id()).unwrap().len(), 1);
        let again = append_files(
            &repo,
            "sweep",
            "experiments/e",
            &files,
            "again",
            &sig,
            &|t| Ok(Some(t)),
        )
        .unwrap();
        assert_eq!(again, Appended::Existing(tip));
        assert_eq!(repo.refname_to_id("refs/heads/sweep").unwrap(), tip);
    }
}
