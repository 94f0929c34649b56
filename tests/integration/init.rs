//! `exp init`: fresh, twice, and in an existing repository.

use crate::common::*;

#[test]
fn init_fresh_directory() {
    let env = Env::new();
    let dir = env.init_repo("fresh");
    assert_eq!(
        env.git(&dir, &["symbolic-ref", "HEAD"]).trim(),
        "refs/heads/develop"
    );
    let branches = env.git(&dir, &["branch", "--format=%(refname:short)"]);
    assert_eq!(
        branches.lines().collect::<Vec<_>>(),
        vec!["develop", "main"]
    );
    assert_eq!(
        env.git(&dir, &["rev-parse", "main"]),
        env.git(&dir, &["rev-parse", "develop"])
    );
    let attributes = std::fs::read_to_string(dir.join(".gitattributes")).unwrap();
    assert!(attributes.contains("*.safetensors filter=lfs diff=lfs merge=lfs -text"));
    let spec = std::fs::read_to_string(dir.join("experiments/mnist-cnn.toml")).unwrap();
    assert_eq!(spec, include_str!("../../experiments/mnist-cnn.toml"));
    // Committed, not just written.
    let tracked = env.git(&dir, &["ls-files"]);
    assert!(
        tracked.contains("experiments/mnist-cnn.toml") && tracked.contains(".gitattributes"),
        "{tracked}"
    );
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    // git-lfs in charge, as `git config` with the git on PATH sees it.
    assert!(env
        .git(&dir, &["config", "filter.lfs.process"])
        .contains("git-lfs"));
    assert!(env
        .git(
            &dir,
            &["check-attr", "filter", "experiments/x/model.safetensors"]
        )
        .contains("lfs"));
}

#[test]
fn init_twice_changes_nothing() {
    let env = Env::new();
    let dir = env.init_repo("twice");
    let before = repo_state(&env, &dir);
    let log_before = env.git(&dir, &["log", "--all", "--format=%H"]);
    let out = env.exp_ok(&env.tmp.path().join("twice"), &["init"]);
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!(repo_state(&env, &dir), before);
    assert_eq!(env.git(&dir, &["log", "--all", "--format=%H"]), log_before);
}

#[test]
fn init_existing_repository_keeps_history_and_files() {
    let env = Env::new();
    let dir = env.path("existing");
    std::fs::create_dir_all(dir.join("experiments")).unwrap();
    env.git(&dir, &["init", "-q", "-b", "master"]);
    std::fs::write(dir.join("README.md"), "my project\n").unwrap();
    std::fs::write(dir.join(".gitattributes"), "*.png binary").unwrap();
    std::fs::write(dir.join("experiments/mnist-cnn.toml"), "# my own spec\n").unwrap();
    env.git(&dir, &["add", "-A"]);
    env.git(&dir, &["commit", "-q", "-m", "first"]);
    let first = env.git(&dir, &["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(dir.join("work-in-progress.txt"), "not committed\n").unwrap();

    env.exp_ok(&dir, &["init"]);
    // History kept: the old commit is an ancestor, HEAD stays on the user's branch.
    env.git(&dir, &["merge-base", "--is-ancestor", &first, "HEAD"]);
    assert_eq!(
        env.git(&dir, &["symbolic-ref", "--short", "HEAD"]).trim(),
        "master"
    );
    for b in ["main", "develop"] {
        env.git(&dir, &["rev-parse", "--verify", b]);
    }
    // Files kept: the user's spec untouched, attributes extended, untracked file not committed.
    assert_eq!(
        std::fs::read_to_string(dir.join("experiments/mnist-cnn.toml")).unwrap(),
        "# my own spec\n"
    );
    let attributes = std::fs::read_to_string(dir.join(".gitattributes")).unwrap();
    assert_eq!(
        attributes,
        "*.png binary\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    );
    assert!(dir.join("experiments/mnist-mlp.toml").is_file());
    assert_eq!(
        env.git(&dir, &["status", "--porcelain"]),
        "?? work-in-progress.txt\n"
    );
    let changed = env.git(&dir, &["diff", "--name-only", &first, "HEAD"]);
    assert!(
        !changed.contains("mnist-cnn.toml") && !changed.contains("work-in-progress"),
        "{changed}"
    );
}

#[test]
fn init_empty_git_repository_starts_on_main_and_develop() {
    let env = Env::new();
    let dir = env.path("empty");
    std::fs::create_dir_all(&dir).unwrap();
    env.git(&dir, &["init", "-q", "-b", "trunk"]);
    env.exp_ok(&dir, &["init"]);
    assert_eq!(
        env.git(&dir, &["symbolic-ref", "--short", "HEAD"]).trim(),
        "develop"
    );
    assert!(
        env.git_out(&dir, &["rev-parse", "--verify", "trunk"])
            .status
            .code()
            != Some(0)
    );
}
