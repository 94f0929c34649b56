//! Git Flow with the gate: `exp flow finish`, `exp flow release`, `exp models`, `exp model get`.

use std::path::Path;

use crate::common::*;

fn feature_run(env: &Env, dir: &Path, branch: &str, extra: &[&str]) {
    env.git(dir, &["switch", "-q", "-c", branch, "develop"]);
    let out = quick_run(env, dir, "mnist-cnn", extra);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn finish_release_and_get_a_released_model() {
    let env = Env::new();
    let dir = env.init_repo("flow");
    env.git(&dir, &["switch", "-q", "develop"]);
    // Two features from the same develop record the same experiment.
    feature_run(&env, &dir, "feature/a", &[]);
    feature_run(&env, &dir, "feature/b", &["--set", "data.train_limit=3000"]);
    let b_record = record_at(&env, &dir, "feature/b", "mnist-cnn");
    env.git(&dir, &["switch", "-q", "feature/a"]);
    let out = env.exp_ok(&dir, &["flow", "finish"]);
    assert!(
        out.contains("merged feature/a into develop") && out.contains("deleted feature/a"),
        "{out}"
    );
    assert_eq!(
        env.git(&dir, &["branch", "--show-current"]).trim(),
        "develop"
    );
    assert!(
        env.git_out(&dir, &["rev-parse", "--verify", "feature/a"])
            .status
            .code()
            != Some(0)
    );
    let parents = env.git(&dir, &["log", "-1", "--format=%P", "develop"]);
    assert_eq!(parents.split_whitespace().count(), 2, "not a --no-ff merge");
    // feature/b's run directory conflicts with a's, now on develop: finish takes b's whole.
    let out = env.exp_ok(&dir, &["flow", "finish", "feature/b"]);
    assert!(out.contains("merged feature/b into develop"), "{out}");
    assert_eq!(record_at(&env, &dir, "develop", "mnist-cnn"), b_record);

    // A worse feature is refused; nothing is merged and the branch stays.
    feature_run(&env, &dir, "feature/worse", &["--set", "train.lr=1e-6"]);
    let develop = env.git(&dir, &["rev-parse", "develop"]);
    let out = env.exp(&dir, &["flow", "finish"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("regression in mnist-cnn: accuracy fell from"),
        "{}",
        describe(&out)
    );
    assert_eq!(env.git(&dir, &["rev-parse", "develop"]), develop);
    assert_eq!(
        env.git(&dir, &["branch", "--show-current"]).trim(),
        "feature/worse"
    );
    assert!(env
        .git(&dir, &["status", "--porcelain", "--untracked-files=no"])
        .is_empty());

    // Release 1.0.0: release/1.0.0 → main, tagged v1.0.0, merged back into develop.
    env.git(&dir, &["switch", "-q", "develop"]);
    let out = env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    assert!(
        out.contains("tagged main v1.0.0") && out.contains("merged v1.0.0 back into develop"),
        "{out}"
    );
    assert_eq!(
        env.git(&dir, &["rev-parse", "v1.0.0^{commit}"]),
        env.git(&dir, &["rev-parse", "main"])
    );
    let message = env.git(&dir, &["tag", "-l", "--format=%(contents)", "v1.0.0"]);
    assert!(
        message.contains("mnist-cnn@1.0.0: accuracy=") && message.contains(&b_record.model.oid),
        "{message}"
    );
    assert!(env
        .git(&dir, &["merge-base", "--is-ancestor", "main", "develop"])
        .is_empty());
    assert!(
        env.git_out(&dir, &["rev-parse", "--verify", "release/1.0.0"])
            .status
            .code()
            != Some(0)
    );

    // The released model: listed, and its weights byte for byte.
    let models = env.exp_ok(&dir, &["models"]);
    assert!(
        models.contains("mnist-cnn@1.0.0") && models.contains(&b_record.model.oid[..12]),
        "{models}"
    );
    let out_path = env.path("released.safetensors");
    env.exp_ok(
        &dir,
        &[
            "model",
            "get",
            "mnist-cnn@1.0.0",
            "--out",
            out_path.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&out_path).unwrap();
    assert_eq!(sha256_hex(&bytes), b_record.model.oid);
    assert_eq!(
        bytes,
        std::fs::read(dir.join("experiments/mnist-cnn/model.safetensors")).unwrap()
    );
    let out = env.exp(&dir, &["model", "get", "mnist-cnn@9.9.9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("there is no release v9.9.9"),
        "{}",
        describe(&out)
    );
}

/// Flow steps and sync commands that cannot do anything useful refuse before they change
/// anything, with a message and hint for the command that failed.
#[test]
fn flow_and_sync_refusals_say_what_to_do() {
    let env = Env::new();
    let dir = env.init_repo("refusals");
    let refs_before = env.git(&dir, &["for-each-ref", "--format=%(refname) %(objectname)"]);
    let refused = |args: &[&str], message: &str, hint: Option<&str>| {
        let out = env.exp(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("error: {message}")),
            "{args:?}: {err}"
        );
        match hint {
            Some(hint) => assert!(err.contains(&format!("hint: {hint}")), "{args:?}: {err}"),
            None => assert!(!err.contains("hint:"), "{args:?}: {err}"),
        }
    };
    refused(
        &["flow", "release", "1.0.0"],
        "develop has no run record (experiments/*/metrics.toml): a release versions models; record one (exp run on a feature branch, exp flow finish) first",
        None,
    );
    refused(
        &["flow", "hotfix", "a b"],
        "\"hotfix/a b\" is not a valid branch name (Git's rules: git check-ref-format --branch)",
        None,
    );
    refused(
        &["push"],
        "no remote given and none to default to (no upstream, no origin)",
        Some("add one (`git remote add origin URL`) or name it: `exp push REMOTE` / `exp pull REMOTE`"),
    );
    refused(
        &["pull"],
        "no remote given and none to default to (no upstream, no origin)",
        Some("add one (`git remote add origin URL`) or name it: `exp push REMOTE` / `exp pull REMOTE`"),
    );
    let remote = env.path("refusals-remote.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    env.git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
    refused(
        &["push", "origin", "nosuch"],
        "no local branch named \"nosuch\"",
        Some("nothing was pushed; `git branch` lists the local branches"),
    );
    assert_eq!(
        env.git(&dir, &["for-each-ref", "--format=%(refname) %(objectname)"]),
        refs_before,
        "a refusal changed a ref"
    );
    assert_eq!(
        env.git(&dir, &["branch", "--show-current"]).trim(),
        "develop"
    );

    // With a release made, releasing again with nothing new on develop is refused too.
    feature_run(&env, &dir, "feature/r", &[]);
    env.exp_ok(&dir, &["flow", "finish"]);
    env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    let tags_before = env.git(&dir, &["tag", "-l", "v*"]);
    refused(
        &["flow", "release", "1.0.1"],
        "main already has everything develop has: nothing to release",
        None,
    );
    assert_eq!(env.git(&dir, &["tag", "-l", "v*"]), tags_before);
    assert_eq!(env.git(&dir, &["branch", "--list", "release/*"]), "");
}

/// A release made where Git signs every tag (`tag.gpgSign`, an SSH key here) is the same
/// release: the signature Git appends to the message is not part of it.
#[test]
fn a_signed_release_is_a_release() {
    let env = Env::new();
    let dir = env.init_repo("signed");
    let key = env.path("signing-key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        made,
        "ssh-keygen is needed to sign a tag (Debian: openssh-client); scripts/test.sh installs it"
    );
    for (k, v) in [
        ("gpg.format", "ssh"),
        ("tag.gpgSign", "true"),
        ("user.signingkey", key.to_str().unwrap()),
    ] {
        env.git(&dir, &["config", k, v]);
    }
    feature_run(&env, &dir, "feature/s", &[]);
    env.exp_ok(&dir, &["flow", "finish"]);
    env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    let raw = env.git(&dir, &["cat-file", "-p", "v1.0.0"]);
    assert!(
        raw.contains("-----BEGIN SSH SIGNATURE-----"),
        "not signed:\n{raw}"
    );
    let out = env.exp(&dir, &["models"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mnist-cnn@1.0.0"),
        "{}",
        describe(&out)
    );
    assert!(!stderr(&out).contains("warning"), "{}", describe(&out));
    let main = env.git(&dir, &["rev-parse", "main"]);
    env.exp_ok(
        &dir,
        &["model", "check-release", "v1.0.0", "--main", main.trim()],
    );

    // What exp writes for the user lands in exp-out/, which git never picks up.
    let out = env.exp_ok(&dir, &["model", "get", "mnist-cnn@1.0.0"]);
    let weights = dir.join("exp-out/mnist-cnn-1.0.0.safetensors");
    assert!(
        out.contains(&format!("wrote {}", weights.display())),
        "{out}"
    );
    let plot = env.exp_ok(&dir, &["plot"]);
    let report = dir.join("exp-out/exp-report.html");
    assert!(plot.contains(&report.display().to_string()), "{plot}");
    assert!(weights.is_file() && report.is_file());
    env.git(&dir, &["add", "-A"]);
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    let exclude = std::fs::read_to_string(dir.join(".git/info/exclude")).unwrap();
    assert_eq!(exclude.matches("/exp-out/").count(), 1, "{exclude}");
}

/// Versions sort as semantic versions (1.10.0 after 1.9.0), and `exp model get NAME` takes the
/// latest release.
#[test]
fn the_latest_release_is_the_highest_version() {
    let env = Env::new();
    let dir = env.init_repo("versions");
    // The second release trains on more data: a better model, which the gate lets through.
    for (branch, version, limit) in [
        ("feature/a", "1.9.0", "1000"),
        ("feature/b", "1.10.0", "3000"),
    ] {
        feature_run(
            &env,
            &dir,
            branch,
            &["--set", &format!("data.train_limit={limit}")],
        );
        env.exp_ok(&dir, &["flow", "finish"]);
        env.exp_ok(&dir, &["flow", "release", version]);
    }
    let models = env.exp_ok(&dir, &["models", "--json"]);
    let versions: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&models)
        .unwrap()
        .iter()
        .map(|m| m["version"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(versions, ["1.9.0", "1.10.0"]);
    let out = env.exp_ok(&dir, &["model", "get", "mnist-cnn"]);
    assert!(
        out.contains("mnist-cnn-1.10.0.safetensors (mnist-cnn@1.10.0)"),
        "{out}"
    );
    let out = env.exp(&dir, &["model", "get", "fashion-cnn"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("error: no release holds a model \"fashion-cnn\""),
        "{}",
        describe(&out)
    );
}
