//! The regression gate end to end: real runs (small subsets of real MNIST), `exp hooks
//! install`, and real `git merge` / `git push` into develop, locally and to a bare remote.

use std::path::Path;

use crate::common::*;

/// Spec edit on the current branch, committed.
fn set_gate(env: &Env, dir: &Path, gate: &str) {
    let path = dir.join("experiments/mnist-cnn.toml");
    let spec = std::fs::read_to_string(&path).unwrap();
    let spec = match spec.find("\n[gate]") {
        Some(i) => spec[..i].to_string(),
        None => spec,
    };
    std::fs::write(&path, format!("{spec}\n[gate]\n{gate}\n")).unwrap();
    env.git(dir, &["commit", "-q", "-am", "gate policy"]);
}

/// A run on a new feature branch from develop; returns the branch.
fn feature_run(env: &Env, dir: &Path, branch: &str, extra: &[&str]) -> String {
    env.git(dir, &["switch", "-q", "-c", branch, "develop"]);
    let out = quick_run(env, dir, "mnist-cnn", extra);
    assert!(out.status.success(), "{}", describe(&out));
    branch.to_string()
}

fn accuracy(env: &Env, dir: &Path, rev: &str) -> f64 {
    record_at(env, dir, rev, "mnist-cnn").metrics.values["accuracy"]
}

#[test]
fn merges_and_pushes_into_develop_are_gated() {
    let env = Env::new();
    let dir = env.init_repo("gate");
    // develop holds a good model and a policy: at most 2 points of accuracy may be lost.
    env.git(&dir, &["switch", "-q", "develop"]);
    set_gate(&env, &dir, "max_drop = 0.02");
    let good = feature_run(&env, &dir, "feature/good", &[]);
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(&dir, &["merge", "-q", "--no-ff", &good, "-m", "merge good"]);
    let base_accuracy = accuracy(&env, &dir, "develop");
    let installed = env.exp_ok(&dir, &["hooks", "install"]);
    assert!(
        installed.contains("installed pre-merge-commit")
            && installed.contains("mergeOptions = --no-ff"),
        "{installed}"
    );

    // A worse model (a learning rate far too small).
    let bad = feature_run(&env, &dir, "feature/bad", &["--set", "train.lr=1e-6"]);
    let bad_accuracy = accuracy(&env, &dir, &bad);
    assert!(
        bad_accuracy < base_accuracy - 0.02,
        "{bad_accuracy} vs {base_accuracy}"
    );
    // `exp gate` itself: exit 1, the metric, base and head named, develop's policy applied.
    let out = env.exp(&dir, &["gate", "--base", "develop"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("regression in mnist-cnn: accuracy fell from")
            && err.contains(&format!("{base_accuracy:.4}"))
            && err.contains(&format!("{bad_accuracy:.4}"))
            && err.contains("more than the tolerance 0.0200"),
        "{err}"
    );
    // No merge in progress: no `git merge --abort` in the hint.
    assert!(!err.contains("merge --abort"), "{err}");
    // git merge --no-ff into develop: refused by pre-merge-commit.
    env.git(&dir, &["switch", "-q", "develop"]);
    let develop_before = env.git(&dir, &["rev-parse", "develop"]);
    let out = env.git_out(&dir, &["merge", "--no-ff", &bad, "-m", "merge bad"]);
    assert!(
        !out.status.success(),
        "the regression was merged: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("regression in mnist-cnn: accuracy fell from")
            && stderr(&out)
                .contains("The refused merge is still in progress: `git merge --abort` undoes it"),
        "{}",
        describe(&out)
    );
    env.git(&dir, &["merge", "--abort"]);
    // A plain `git merge` does not fast-forward past the gate.
    let out = env.git_out(&dir, &["merge", &bad, "-m", "merge bad"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("regression in mnist-cnn: accuracy fell from"),
        "refused for another reason: {}",
        describe(&out)
    );
    env.git(&dir, &["merge", "--abort"]);
    assert_eq!(env.git(&dir, &["rev-parse", "develop"]), develop_before);

    // A better model merges.
    let better = feature_run(
        &env,
        &dir,
        "feature/better",
        &["--set", "data.train_limit=3000"],
    );
    assert!(accuracy(&env, &dir, &better) >= base_accuracy - 0.02);
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", &better, "-m", "merge better"],
    );

    // The team's bare remote with the server-side hook; develop pushed there (new branch: passes).
    let remote = env.path("remote.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    let server = env.exp_ok(&remote, &["hooks", "install"]);
    assert!(server.contains("installed pre-receive"), "{server}");
    env.git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
    env.git(&dir, &["push", "-q", "origin", "develop"]);
    // An explicit fast-forward merge of a bad run creates no commit and runs no local hook...
    let sneaky = feature_run(&env, &dir, "feature/sneaky", &["--set", "train.lr=1e-6"]);
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(&dir, &["merge", "-q", "--ff", &sneaky]);
    // ...but the push is refused by pre-push,
    let out = env.git_out(&dir, &["push", "origin", "develop"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("regression in mnist-cnn"),
        "{}",
        describe(&out)
    );
    // and, past pre-push with --no-verify, by the remote's pre-receive.
    let out = env.git_out(&dir, &["push", "--no-verify", "origin", "develop"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("regression in mnist-cnn") && err.contains("pre-receive hook declined"),
        "{err}"
    );

    // Uninstall undoes exactly what install did.
    let removed = env.exp_ok(&dir, &["hooks", "uninstall"]);
    assert!(removed.contains("removed pre-push"), "{removed}");
    let out = env.git_out(&dir, &["config", "branch.develop.mergeOptions"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "mergeOptions left behind: {}",
        describe(&out)
    );
    // git-lfs's own pre-push (exp init ran `git lfs install --local`), kept as pre-push.local
    // during the install, is back.
    let hook = std::fs::read_to_string(dir.join(".git/hooks/pre-push"))
        .expect("git-lfs's pre-push hook is back after uninstall");
    assert!(
        !hook.contains("# exp hook") && hook.contains("git lfs pre-push"),
        "{hook}"
    );
}

#[test]
fn the_gate_fails_closed() {
    let env = Env::new();
    let dir = env.init_repo("closed");
    env.git(&dir, &["switch", "-q", "develop"]);
    let first = feature_run(&env, &dir, "feature/first", &[]);
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(&dir, &["merge", "-q", "--no-ff", &first, "-m", "merge"]);
    // The first run of an experiment passes (nothing to regress from).
    let out = env.exp_ok(&dir, &["gate", "--base", "develop~1", "--head", "develop"]);
    assert!(
        out.contains("new")
            && out.contains(
                "exp gate: pass (records audited against their artifacts, weights not re-evaluated"
            ),
        "{out}"
    );
    // A record deleted on the head cannot be decided.
    env.git(&dir, &["switch", "-q", "-c", "feature/delete", "develop"]);
    env.git(&dir, &["rm", "-q", "-r", "experiments/mnist-cnn"]);
    env.git(&dir, &["commit", "-q", "-m", "delete the run"]);
    let out = env.exp(&dir, &["gate", "--base", "develop"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("the head deletes experiments/mnist-cnn/metrics.toml")
            && stderr(&out).contains("hint:"),
        "{}",
        describe(&out)
    );
    // Weights replaced without a new run: the record is unchanged, the pointer is not.
    env.git(&dir, &["switch", "-q", "-c", "feature/swap", "develop"]);
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 12\n",
        "ab".repeat(32)
    );
    std::fs::write(env.path("pointer"), &pointer).unwrap();
    let blob = env.git(
        &dir,
        &["hash-object", "-w", env.path("pointer").to_str().unwrap()],
    );
    env.git(
        &dir,
        &[
            "update-index",
            "--cacheinfo",
            &format!(
                "100644,{},experiments/mnist-cnn/model.safetensors",
                blob.trim()
            ),
        ],
    );
    env.git(&dir, &["commit", "-q", "-m", "swap the weights"]);
    let out = env.exp(&dir, &["gate", "--base", "develop"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("points to LFS object abababababab, but the record names"),
        "{}",
        describe(&out)
    );
    // (The work tree still holds the real weights under the swapped pointer: leave it.)
    env.git(&dir, &["checkout", "-q", "-f", "develop"]);
    // A run evaluated on another eval set is refused.
    let other = feature_run(
        &env,
        &dir,
        "feature/other-eval",
        &["--set", "data.test_limit=400"],
    );
    let out = env.exp(&dir, &["gate", "--base", "develop", "--head", &other]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("different eval sets"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_conflicted_merge_concluded_by_commit_is_gated() {
    let env = Env::new();
    let dir = env.init_repo("conflict");
    env.git(&dir, &["switch", "-q", "develop"]);
    // Two branches from the same develop record the same experiment: their merge conflicts.
    let good = feature_run(&env, &dir, "feature/good", &[]);
    let bad = feature_run(&env, &dir, "feature/bad", &["--set", "train.lr=1e-6"]);
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(&dir, &["merge", "-q", "--no-ff", &good, "-m", "merge good"]);
    env.exp_ok(&dir, &["hooks", "install"]);
    let out = env.git_out(&dir, &["merge", "--no-ff", &bad, "-m", "merge bad"]);
    assert!(
        !out.status.success(),
        "expected a conflict: {}",
        describe(&out)
    );
    assert!(dir.join(".git/MERGE_HEAD").exists());
    // Resolved by taking the bad branch's run, then concluded with `git commit`: pre-commit gates it.
    env.git(
        &dir,
        &["checkout", "--theirs", "--", "experiments/mnist-cnn"],
    );
    env.git(&dir, &["add", "-A"]);
    let out = env.git_out(&dir, &["commit", "--no-edit"]);
    assert!(
        !out.status.success(),
        "the conflicted regression was committed: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("regression in mnist-cnn: accuracy fell from"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_small_drop_passes_and_missing_exp_or_records_fail_closed() {
    let env = Env::new();
    let dir = env.init_repo("tolerance");
    env.git(&dir, &["switch", "-q", "develop"]);
    set_gate(&env, &dir, "max_drop = 0.02");
    let good = feature_run(&env, &dir, "feature/seed1", &[]);
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", &good, "-m", "merge seed 1"],
    );
    env.exp_ok(&dir, &["hooks", "install"]);
    // Another seed: a little worse on these 500 test images, within the tolerance and not
    // significant (here seed 2: 1.4 points, McNemar p = 0.49). Which seed does that depends on
    // the floating-point path of the machine, so the first of a few that does is used.
    let mut other = None;
    for seed in 2..=6 {
        let branch = feature_run(
            &env,
            &dir,
            &format!("feature/seed{seed}"),
            &["--set", &format!("train.seed={seed}")],
        );
        let out = env.exp(&dir, &["gate", "--base", "develop", "--head", &branch]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("within the tolerance 0.0200 and not significant") {
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
            assert!(text.contains("exp gate: pass ("), "{text}");
            other = Some(branch);
            break;
        }
    }
    let other = other.expect("no seed gave a small, non-significant drop");
    // Without exp on PATH the hook refuses, and says why (a PATH of every system tool but
    // exp, so an exp installed on this machine cannot answer).
    env.git(&dir, &["switch", "-q", "develop"]);
    let no_exp = env.bin_without("no-exp-bin", |name| name == "exp");
    let out = std::process::Command::new("git")
        .current_dir(&dir)
        .args(["merge", "--no-ff", &other, "-m", "merge seed 2"])
        .env("HOME", &env.home)
        .env("GIT_CONFIG_GLOBAL", env.home.join(".gitconfig"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH", &no_exp)
        .env_remove("GIT_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("`exp` is not on PATH"),
        "{}",
        describe(&out)
    );
    env.git(&dir, &["merge", "--abort"]);
    // With exp, the same merge passes.
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", &other, "-m", "merge seed 2"],
    );

    // An unreadable record on the head cannot be decided.
    env.git(&dir, &["switch", "-q", "-c", "feature/broken", "develop"]);
    std::fs::write(
        dir.join("experiments/mnist-cnn/metrics.toml"),
        "this is [not a record",
    )
    .unwrap();
    env.git(&dir, &["commit", "-q", "-am", "break the record"]);
    let out = env.exp(&dir, &["gate", "--base", "develop"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot decide mnist-cnn") && stderr(&out).contains("hint:"),
        "{}",
        describe(&out)
    );
}

/// With git-lfs absent (docs/design.md §6: no system config, an identity-only global config, a PATH
/// without git-lfs), exp's pre-push hook uploads the pushed run's weights to a file remote.
#[test]
fn pre_push_uploads_lfs_objects_without_git_lfs() {
    let env = Env::new();
    let nolfs = env.without_git_lfs();
    let run = |program: &str, dir: &Path, args: &[&str]| nolfs.ok(program, dir, args);
    let exp = "exp";
    let dir = env.path("nolfs");
    run(exp, env.tmp.path(), &["init", dir.to_str().unwrap()]);
    let mut args = vec!["run", "mnist-cnn"];
    args.extend_from_slice(QUICK);
    run(exp, &dir, &args);
    let record = record_at(&env, &dir, "HEAD", "mnist-cnn");
    run(exp, &dir, &["hooks", "install"]);
    let remote = env.path("nolfs-remote.git");
    run(
        "git",
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    run(
        "git",
        &dir,
        &["remote", "add", "origin", remote.to_str().unwrap()],
    );
    let branch = run("git", &dir, &["branch", "--show-current"]);
    run("git", &dir, &["push", "-q", "origin", branch.trim()]);
    let oid = &record.model.oid;
    let object = remote
        .join("lfs/objects")
        .join(&oid[0..2])
        .join(&oid[2..4])
        .join(oid);
    let bytes =
        std::fs::read(&object).unwrap_or_else(|e| panic!("{} not uploaded: {e}", object.display()));
    assert_eq!(sha256_hex(&bytes), *oid);
}

/// `exp hooks install` keeps a hook it finds and says whose it is (git-lfs installs pre-push,
/// post-checkout, post-commit and post-merge hooks).
#[test]
fn hooks_install_names_the_hooks_it_keeps() {
    let env = Env::new();
    let dir = env.init_repo("kept");
    env.git(&dir, &["lfs", "install", "--local", "--force"]);
    let out = env.exp_ok(&dir, &["hooks", "install"]);
    assert!(
        out.contains(
            "kept git-lfs's pre-push hook as pre-push.local; exp's pre-push runs it first"
        ),
        "{out}"
    );
    let local = std::fs::read_to_string(dir.join(".git/hooks/pre-push.local")).unwrap();
    assert!(local.contains("git lfs pre-push"), "{local}");
}
