//! Datasets versioned in Git and the LFS store (`exp data`): real MNIST images written out as
//! PNG class folders in the work tree, added, changed (one file edited, one added, one
//! removed) and added again; status, the run's refusal, the record, diff; checkout of an old
//! version; push, pull and checkout through a `file://` remote and through the giftless server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::{assert_exit_2, describe, record_at, repo_state, sha256_hex, stderr, Env};
use crate::image_folder::{mnist_pngs_into, scratch_data_root};

const SPEC: &str = "[model]\nname = \"seed-cnn\"\n\n[data]\ndataset = \"digits\"\nchannels = 1\nimage_size = [28, 28]\n\n[train]\nepochs = 1\nbatch_size = 32\n";

/// Every file under `folder` (relative path → SHA-256).
fn contents(folder: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.insert(rel, sha256_hex(&std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(folder, folder, &mut out);
    out
}

/// A repository with the digits dataset (200 + 50 real MNIST PNGs) added and an experiment
/// training on it; `without_git_lfs`: made where git-lfs is not installed (exp's filter).
fn repo_with_digits(env: &mut Env, rel: &str, without_git_lfs: bool) -> (PathBuf, PathBuf) {
    if env.data != env.path("data") {
        scratch_data_root(env);
    }
    let root = env.data.clone();
    let dir = env.path(rel);
    if without_git_lfs {
        env.without_git_lfs()
            .ok("exp", env.tmp.path(), &["init", dir.to_str().unwrap()]);
    } else {
        env.exp_ok(env.tmp.path(), &["init", dir.to_str().unwrap()]);
    }
    let folder = mnist_pngs_into(&root, &dir.join("data/digits"), 200, 50);
    std::fs::write(dir.join("experiments/digits.toml"), SPEC).unwrap();
    env.git(&dir, &["add", "experiments/digits.toml"]);
    env.git(&dir, &["commit", "-qm", "digits experiment"]);
    let out = env.exp_ok(&dir, &["data", "add", "data/digits"]);
    assert!(
        out.contains("added digits: 250 files") && out.contains("250 new object(s)"),
        "{out}"
    );
    (dir, folder)
}

#[test]
fn a_dataset_is_added_changed_and_added_again_with_status_refusal_record_and_diff() {
    let mut env = Env::new();
    let (dir, folder) = repo_with_digits(&mut env, "repo", false);
    // Committed: the manifest, the file list and the ignore line; the work tree is clean.
    let files = env.git(&dir, &["show", "HEAD:datasets/digits.files"]);
    assert_eq!(files.lines().count(), 250);
    let first_line = files.lines().next().unwrap();
    let (sha, rest) = first_line.split_once(' ').unwrap();
    let (size, path) = rest.split_once(' ').unwrap();
    let bytes = std::fs::read(folder.join(path)).unwrap();
    assert_eq!(
        (sha, size.parse::<usize>().unwrap()),
        (sha256_hex(&bytes).as_str(), bytes.len())
    );
    assert!(
        path.starts_with("test/0/"),
        "sorted by path bytes: {first_line}"
    );
    let manifest = env.git(&dir, &["show", "HEAD:datasets/digits.toml"]);
    assert!(
        manifest.contains("folder = \"data/digits\"") && manifest.contains("files = 250"),
        "{manifest}"
    );
    assert!(env
        .git(&dir, &["show", "HEAD:.gitignore"])
        .contains("/data/digits/\n"));
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    assert!(dir
        .join(".git/lfs/objects")
        .join(&sha[..2])
        .join(&sha[2..4])
        .join(sha)
        .is_file());
    assert!(env
        .exp_ok(&dir, &["data", "status"])
        .contains("digits: clean (data/digits)"));
    let ls = env.exp_ok(&dir, &["data", "ls"]);
    assert!(
        ls.contains("digits") && ls.contains("data/digits") && ls.contains("250"),
        "{ls}"
    );

    // A run on it records which version it read.
    env.exp_ok(&dir, &["run", "digits", "--quiet"]);
    let first_tag = env.git(&dir, &["describe", "--tags", "--exact-match", "HEAD"]);
    let record = record_at(&env, &dir, "HEAD", "digits");
    let used = record.data.dataset.clone().expect("[data.dataset]");
    assert_eq!(used.name, "digits");
    assert_eq!(
        used.manifest,
        env.git(&dir, &["rev-parse", "HEAD:datasets/digits.files"])
            .trim()
    );
    assert_eq!(record.data.train.examples, 200);
    assert_eq!(record.data.train.files[0].path, "data/digits/train");
    assert!(env.exp_ok(&dir, &["verify"]).contains("verified"));

    // One file edited, one added, one removed.
    let seven = folder.join("train/7");
    let mut sevens: Vec<PathBuf> = std::fs::read_dir(&seven)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sevens.sort();
    let edited = sevens[0].clone();
    let removed = sevens[1].clone();
    let original_edited = std::fs::read(&edited).unwrap();
    std::fs::copy(
        folder
            .join("test/7")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        &edited,
    )
    .unwrap();
    std::fs::remove_file(&removed).unwrap();
    std::fs::copy(&sevens[2], seven.join("new.png")).unwrap();
    let status = env.exp_ok(&dir, &["data", "status", "digits"]);
    let rel = |p: &Path| {
        p.strip_prefix(&folder)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert!(
        status.starts_with("digits: 1 added, 1 modified, 1 deleted (data/digits)\n"),
        "{status}"
    );
    assert!(
        status.contains(&format!("  added    {}", "train/7/new.png")),
        "{status}"
    );
    assert!(
        status.contains(&format!("  modified {}", rel(&edited))),
        "{status}"
    );
    assert!(
        status.contains(&format!("  deleted  {}", rel(&removed))),
        "{status}"
    );

    // A run refuses the changed folder before training, and commits nothing.
    let head = env.git(&dir, &["rev-parse", "HEAD"]);
    let out = env.exp(&dir, &["run", "digits", "--quiet"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(err.contains("the folder data/digits differs from datasets/digits.files: 1 added, 1 modified, 1 deleted"), "{err}");
    assert!(err.contains("exp data status digits"), "{err}");
    assert!(!err.contains("epoch"), "{err}");
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD"]), head);

    // Added again: a new version; a run on it; diff shows the data change per class.
    let out = env.exp_ok(&dir, &["data", "add", "data/digits"]);
    // The edited and the added file are copies of images already stored: deduplicated.
    assert!(
        out.contains("updated digits: 250 files")
            && out.contains("1 added, 1 modified, 1 deleted; 0 new object(s)"),
        "{out}"
    );
    let unchanged = env.exp_ok(&dir, &["data", "add", "data/digits"]);
    assert!(unchanged.starts_with("digits is unchanged"), "{unchanged}");
    env.exp_ok(&dir, &["run", "digits", "--quiet"]);
    let diff = env.exp_ok(&dir, &["diff", first_tag.trim(), "HEAD"]);
    assert!(
        diff.contains("dataset: digits@") && diff.contains(": 1 added, 1 modified, 1 deleted"),
        "{diff}"
    );
    assert!(
        diff.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["7", "1", "1", "1"]),
        "{diff}"
    );
    let md = env.exp_ok(&dir, &["diff", first_tag.trim(), "HEAD", "--md"]);
    assert!(
        md.contains("**Dataset:** `digits@") && md.contains("| 7 | 1 | 1 | 1 |"),
        "{md}"
    );

    // The first version back: byte for byte, the manifest with it; local edits are kept.
    let first_commit = env.git(&dir, &["rev-list", "-n", "1", first_tag.trim()]);
    std::fs::write(seven.join("new.png"), b"my local edit").unwrap();
    assert_exit_2(
        &env,
        &dir,
        &["data", "checkout", "digits", "--rev", first_commit.trim()],
        "have local changes that checking out would overwrite or remove (e.g. train/7/new.png)",
    );
    assert_eq!(
        std::fs::read(seven.join("new.png")).unwrap(),
        b"my local edit"
    );
    let out = env.exp_ok(
        &dir,
        &[
            "data",
            "checkout",
            "digits",
            "--rev",
            first_commit.trim(),
            "--force",
        ],
    );
    assert!(
        out.contains("2 file(s) written") && out.contains("1 removed"),
        "{out}"
    );
    assert_eq!(std::fs::read(&edited).unwrap(), original_edited);
    assert!(removed.is_file() && !seven.join("new.png").exists());
    assert!(env
        .exp_ok(&dir, &["data", "status"])
        .contains("digits: clean"));
    assert!(env
        .git(&dir, &["status", "--porcelain"])
        .contains(" M datasets/digits.files"));
    // A restored file is a copy, not a link into the store: editing it leaves the object alone.
    let object = dir.join(".git/lfs/objects");
    std::fs::write(&edited, b"scribble").unwrap();
    let sha = sha256_hex(&original_edited);
    assert_eq!(
        sha256_hex(&std::fs::read(object.join(&sha[..2]).join(&sha[2..4]).join(&sha)).unwrap()),
        sha
    );

    // Names and folders that cannot be datasets.
    assert_exit_2(
        &env,
        &dir,
        &["data", "add", "data/digits", "--name", "a\nb"],
        "cannot name a dataset",
    );
    assert_exit_2(
        &env,
        &dir,
        &["data", "add", "data/digits", "--name", "a..b"],
        "no '..'",
    );
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    assert_exit_2(
        &env,
        &dir,
        &["data", "add", outside.to_str().unwrap()],
        "is outside the work tree",
    );
    assert_exit_2(
        &env,
        &dir,
        &["data", "checkout", "nope"],
        "there is no dataset \"nope\"",
    );
}

#[test]
fn datasets_travel_through_a_file_remote_and_the_giftless_server() {
    let mut env = Env::new();
    let (dir, folder) = repo_with_digits(&mut env, "repo", true);
    let expected = contents(&folder);
    let branch = env.git(&dir, &["branch", "--show-current"]);
    let branch = branch.trim().to_string();

    // Without git-lfs: exp push and exp pull through a file:// remote.
    let nolfs = env.without_git_lfs();
    let remote = env.path("remote.git");
    nolfs.ok(
        "git",
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    nolfs.ok(
        "git",
        &dir,
        &[
            "remote",
            "add",
            "origin",
            &format!("file://{}", remote.display()),
        ],
    );
    let pushed = nolfs.ok("exp", &dir, &["push"]);
    assert!(pushed.contains("250 uploaded and confirmed"), "{pushed}");
    let clone = env.path("clone");
    nolfs.ok(
        "git",
        env.tmp.path(),
        &[
            "clone",
            "-q",
            "-b",
            &branch,
            remote.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    nolfs.ok("exp", &clone, &["lfs", "install"]);
    assert_exit_2(
        &env,
        &clone,
        &["data", "checkout", "digits"],
        "250 object(s) of digits are not in the LFS store",
    );
    nolfs.ok("exp", &clone, &["pull"]);
    let out = nolfs.ok("exp", &clone, &["data", "checkout", "digits"]);
    assert!(out.contains("250 file(s) written"), "{out}");
    assert_eq!(contents(&clone.join("data/digits")), expected);
    nolfs.ok("exp", &clone, &["lfs", "fsck"]);
    // Prune keeps what a dataset lists.
    let before = crate::common::lfs_objects(&clone).len();
    nolfs.ok("exp", &clone, &["lfs", "prune"]);
    assert_eq!(crate::common::lfs_objects(&clone).len(), before);
    assert!(before >= 250);

    // With git-lfs in charge and the hooks installed: a plain git push uploads the dataset's
    // objects too (git-lfs knows only pointers), and exp pull brings them back.
    let git_lfs = std::process::Command::new("git")
        .args(["lfs", "version"])
        .output();
    if !git_lfs.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: the git-lfs half of this test: git-lfs is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    let server = crate::lfs::LfsServer::start(env.path("lfs-server"));
    let (dir, folder) = repo_with_digits(&mut env, "repo2", false);
    assert_eq!(contents(&folder), expected);
    let branch = env.git(&dir, &["branch", "--show-current"]);
    let branch = branch.trim().to_string();
    let remote2 = env.path("remote2.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote2.to_str().unwrap()],
    );
    env.git(
        &dir,
        &["remote", "add", "second", remote2.to_str().unwrap()],
    );
    env.git(&dir, &["config", "lfs.url", &server.endpoint]);
    assert!(env
        .git(&dir, &["config", "filter.lfs.process"])
        .contains("git-lfs"));
    env.exp_ok(&dir, &["hooks", "install"]);
    env.git(&dir, &["push", "-q", "second", &branch]);
    for sha in expected.values() {
        assert!(
            server.has(sha),
            "the server lacks a dataset object after git push"
        );
    }
    let clone2 = env.path("clone2");
    env.git(
        env.tmp.path(),
        &[
            "clone",
            "-q",
            "-c",
            &format!("lfs.url={}", server.endpoint),
            "-b",
            &branch,
            remote2.to_str().unwrap(),
            clone2.to_str().unwrap(),
        ],
    );
    env.git(&clone2, &["config", "lfs.url", &server.endpoint]);
    env.git(&clone2, &["lfs", "install", "--local"]);
    env.exp_ok(&clone2, &["pull", "origin"]);
    env.exp_ok(&clone2, &["data", "checkout", "digits"]);
    assert_eq!(contents(&clone2.join("data/digits")), expected);
}

/// On develop, an add with Git's index lock held is refused before it stores anything; one
/// whose switch to the new feature branch fails (Git's HEAD lock held) leaves HEAD, the
/// branches and the work tree as they were; the next add makes the branch (no checkout hook
/// runs: the switch moves no file).
#[test]
fn an_add_that_cannot_switch_branch_leaves_the_repository_as_it_was() {
    let mut env = Env::new();
    if env.data != env.path("data") {
        scratch_data_root(&mut env);
    }
    let dir = env.path("repo");
    env.exp_ok(env.tmp.path(), &["init", dir.to_str().unwrap()]);
    std::fs::write(dir.join(".gitignore"), "*.log").unwrap();
    env.git(&dir, &["add", ".gitignore"]);
    env.git(&dir, &["commit", "-qm", "ignore logs"]);
    mnist_pngs_into(&env.data, &dir.join("data/digits"), 20, 5);
    let before = repo_state(&env, &dir);
    // Git's index lock would let the commit land but not the index: refused before any work.
    let index_lock = dir.join(".git/index.lock");
    std::fs::write(&index_lock, "").unwrap();
    assert_exit_2(
        &env,
        &dir,
        &["data", "add", "data/digits"],
        &format!("{} exists", index_lock.display()),
    );
    std::fs::remove_file(&index_lock).unwrap();
    assert_eq!(repo_state(&env, &dir).lfs_objects.len(), 0);
    // Git cannot move HEAD to the new feature branch while another process holds its lock.
    let lock = dir.join(".git/HEAD.lock");
    std::fs::write(&lock, "").unwrap();
    assert_exit_2(
        &env,
        &dir,
        &["data", "add", "data/digits"],
        &format!("{} exists", lock.display()),
    );
    assert_exit_2(
        &env,
        &dir,
        &["data", "add", "data/digits"],
        "if no git process is running, the lock is a leftover: remove",
    );
    std::fs::remove_file(&lock).unwrap();
    let after = repo_state(&env, &dir);
    assert_eq!(
        (&after.head, &after.branches, &after.status),
        (&before.head, &before.branches, &before.status)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(".gitignore")).unwrap(),
        "*.log"
    );
    // The objects it stored are kept (content-addressed), and the next add goes through; a
    // post-checkout hook that fails has no say in it.
    assert_eq!(after.lfs_objects.len(), 25);
    let hook = dir.join(".git/hooks/post-checkout");
    std::fs::write(&hook, "#!/bin/sh\nexit 1\n").unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&hook, executable).unwrap();
    let out = env.exp_ok(&dir, &["data", "add", "data/digits"]);
    assert!(out.contains("0 new object(s)"), "{out}");
    let branch = env.git(&dir, &["branch", "--show-current"]);
    assert!(
        branch.starts_with("feature/data-digits-") && !branch.trim().ends_with("-2"),
        "{branch}"
    );
    assert_eq!(
        env.git(&dir, &["show", "HEAD:.gitignore"]),
        "*.log\n# dataset digits (exp data add): its files are in the LFS store\n/data/digits/\n"
    );
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
}

/// A test set that grew makes the records incomparable; `exp gate --reeval` evaluates both
/// sides' weights on the head's test set and decides.
#[test]
fn a_grown_test_set_is_judged_by_reevaluating_both_sides() {
    let mut env = Env::new();
    let (dir, folder) = repo_with_digits(&mut env, "repo", false);
    env.exp_ok(&dir, &["run", "digits", "--quiet"]);
    let base = env.git(&dir, &["rev-parse", "HEAD"]);
    // 20 more real test images (the first 50 are rewritten byte-identical).
    mnist_pngs_into(&env.data, &folder, 200, 70);
    let out = env.exp_ok(&dir, &["data", "add", "data/digits"]);
    assert!(out.contains("20 added, 0 modified, 0 deleted"), "{out}");
    env.exp_ok(&dir, &["run", "digits", "--quiet"]);
    let args = ["gate", "--base", base.trim(), "--head", "HEAD"];
    let out = env.exp(&dir, &args);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("different eval sets")
            || String::from_utf8_lossy(&out.stdout).contains("different eval sets"),
        "{}",
        describe(&out)
    );
    let out = env.exp(
        &dir,
        &[
            "gate",
            "--base",
            base.trim(),
            "--head",
            "HEAD",
            "--reeval",
            "--json",
        ],
    );
    // The training split did not change, so the weights are the same: a pass, judged on 70.
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &json["experiments"][0];
    assert_eq!(e["outcome"], "pass", "{json}");
    assert_eq!(
        e["reason"],
        "re-evaluated on the head's test set (--reeval)"
    );
    assert!(
        json["warnings"][0]
            .as_str()
            .unwrap()
            .contains("(70 examples;"),
        "{json}"
    );
}
