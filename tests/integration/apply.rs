//! `exp apply`: the run you want at the branch tip, and what `exp log` and `exp flow finish`
//! say about it (issue 21).

use std::path::Path;

use crate::common::*;

fn log_json(env: &Env, dir: &Path, rev: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.exp_ok(dir, &["log", rev, "--json"])).unwrap()
}

fn refused(env: &Env, dir: &Path, args: &[&str], message: &str) {
    assert_exit_2(env, dir, args, message)
}

#[test]
fn apply_keeps_the_run_you_want_and_finish_warns_about_a_better_one() {
    let env = Env::new();
    // Run 1 trains on 30 times more examples than run 2: clearly the better model.
    let dir = runs_on_a_feature_branch(&env, "apply", "feature/k", &["3000", "100"]);
    let tag = |n: u32| format!("run/feature-k/mnist-cnn/{n}");
    let (one, two) = (
        record_at(&env, &dir, &tag(1), "mnist-cnn"),
        record_at(&env, &dir, &tag(2), "mnist-cnn"),
    );
    assert!(
        one.metrics.values["accuracy"] > two.metrics.values["accuracy"],
        "run 1 should be the better: {} vs {}",
        one.metrics.values["accuracy"],
        two.metrics.values["accuracy"]
    );

    // `exp diff` with no arguments: develop has no record, so run 2 is compared with run 1.
    let out = env.exp_ok(&dir, &["diff"]);
    assert!(
        out.starts_with(&format!(
            "mnist-cnn (changed): {} → HEAD (its previous run on this branch: ",
            tag(1)
        )) && out
            .lines()
            .next()
            .unwrap()
            .ends_with(" has no record of it)")
            && out.contains("accuracy")
            && out.contains("worse"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.exp_ok(&dir, &["diff", "--json"])).unwrap();
    assert_eq!(json["experiments"][0]["compared_with"], tag(1));
    // Named revisions are compared as given.
    let out = env.exp_ok(&dir, &["diff", "develop", "HEAD"]);
    assert!(out.starts_with("mnist-cnn (new): develop → HEAD"), "{out}");

    // Bad requests: nothing changes.
    let tip = env.git(&dir, &["rev-parse", "HEAD"]);
    refused(
        &env,
        &dir,
        &["apply", "nosuch"],
        "error: unknown revision \"nosuch\"",
    );
    refused(
        &env,
        &dir,
        &["apply", "--best", "top5"],
        "error: --best \"top5\": not a metric exp knows (accuracy, loss, macro_f1)",
    );
    refused(&env, &dir, &["apply", "develop"], "records no run");
    refused(
        &env,
        &dir,
        &["apply", "-e", "mnist-mlp", &tag(1)],
        &format!(
            "error: {} is not a run of mnist-mlp (it records a run of mnist-cnn)",
            tag(1)
        ),
    );
    // Not on develop or main: runs reach them through the gate.
    env.git(&dir, &["switch", "-q", "develop"]);
    refused(
        &env,
        &dir,
        &["apply", &tag(1)],
        "error: develop is an integration branch: a run reaches it only through a gated merge",
    );
    env.git(&dir, &["switch", "-q", "feature/k"]);
    // Weights missing from the store: refused before any commit.
    let object = dir
        .join(".git/lfs/objects")
        .join(&one.model.oid[..2])
        .join(&one.model.oid[2..4])
        .join(&one.model.oid);
    let aside = env.path("aside");
    std::fs::rename(&object, &aside).unwrap();
    refused(
        &env,
        &dir,
        &["apply", &tag(1)],
        &format!(
            "the weights of {} (LFS object {}) are not in the local LFS store; nothing was applied",
            tag(1),
            one.model.oid
        ),
    );
    std::fs::rename(&aside, &object).unwrap();
    let spec = dir.join("experiments/mnist-cnn.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}# my edit\n")).unwrap();
    refused(
        &env,
        &dir,
        &["apply", &tag(1)],
        "uncommitted changes in experiments/mnist-cnn.toml experiments/mnist-cnn/, which exp would overwrite",
    );
    std::fs::write(&spec, &text).unwrap();
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD"]), tip);

    // --best takes run 1: one commit, the run's files, the real weights in the work tree.
    let out = env.exp_ok(&dir, &["apply", "--best", "accuracy"]);
    assert!(
        out.contains(&format!(
            "{} is the best of 2 comparable run(s) of mnist-cnn on feature/k",
            tag(1)
        )) && out.contains(&format!("Applied {} (mnist-cnn: ", tag(1))),
        "{out}"
    );
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD^"]), tip);
    let subject = env.git(&dir, &["log", "-1", "--format=%s"]);
    assert!(
        subject.starts_with(&format!("exp apply {}: mnist-cnn accuracy=", tag(1))),
        "{subject}"
    );
    for path in ["experiments/mnist-cnn", "experiments/mnist-cnn.toml"] {
        assert_eq!(
            env.git(&dir, &["rev-parse", &format!("HEAD:{path}")]),
            env.git(&dir, &["rev-parse", &format!("{}:{path}", tag(1))]),
            "{path}"
        );
    }
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    let weights = std::fs::read(dir.join("experiments/mnist-cnn/model.safetensors")).unwrap();
    assert_eq!(sha256_hex(&weights), one.model.oid);
    assert!(
        env.git(&dir, &["tag", "--points-at", "HEAD"]).is_empty(),
        "an apply makes no run tag"
    );
    // Again: nothing to apply.
    let out = env.exp_ok(&dir, &["apply", "--best", "accuracy"]);
    assert!(out.contains("feature/k's tip already holds"), "{out}");
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD^"]), tip);

    // exp show: each branch's run by its tag, and the parameters that differ between rows.
    env.git(&dir, &["branch", "feature/other", &tag(2)]);
    let show = env.exp_ok(&dir, &["show", "--all-branches"]);
    let header = show.lines().next().unwrap();
    assert!(header.contains("data.train_limit"), "{show}");
    assert!(
        show.lines()
            .any(|l| l.starts_with("feature/k ") && l.contains(&tag(1)) && l.contains(" 3000 "))
            && show.lines().any(|l| l.starts_with("feature/other ")
                && l.contains(&tag(2))
                && l.contains(" 100 ")),
        "{show}"
    );
    env.git(&dir, &["branch", "-D", "feature/other"]);

    // exp ls: every experiment, and each branch's run of it.
    let ls = env.exp_ok(&dir, &["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("fashion-cnn ") && l.contains("no run yet"))
            && ls.lines().any(|l| l.starts_with("mnist-cnn ")
                && l.contains("feature/k")
                && l.contains(&tag(1))),
        "{ls}"
    );
    // A typo in the name: the closest experiment and the list.
    let out = quick_run(&env, &dir, "mnist_cnn", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("hint: did you mean mnist-cnn? The experiments here: fashion-cnn, mnist-cnn, mnist-mlp (`exp ls` lists them with their latest runs)"),
        "{}",
        describe(&out)
    );

    // exp log: the apply is a copy of run 1, not a run.
    let rows = log_json(&env, &dir, "HEAD");
    let last = rows.last().unwrap();
    assert_eq!(last["copy_of"], format!("apply of {}", tag(1)));
    assert_eq!(last["tags"], serde_json::json!([]));
    assert!(rows[..rows.len() - 1]
        .iter()
        .all(|r| r.get("copy_of").is_none()));

    // The worse run applied by name: finish says what it merges and warns about run 1.
    env.exp_ok(&dir, &["apply", &tag(2)]);
    let out = env.exp(&dir, &["flow", "finish"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("merging mnist-cnn {} (accuracy=", tag(2))),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains(&format!(
            "warning: an earlier run of mnist-cnn on feature/k scored better on accuracy: {} has {:.4}, the run being merged {:.4}; to merge that one instead, `exp apply {}`",
            tag(1),
            one.metrics.values["accuracy"],
            two.metrics.values["accuracy"],
            tag(1)
        )),
        "{}",
        describe(&out)
    );
    // On develop, the merge is a copy of run 2.
    let rows = log_json(&env, &dir, "develop");
    assert_eq!(
        rows.last().unwrap()["copy_of"],
        format!("merge of {}", tag(2))
    );
    let runs: Vec<_> = rows.iter().filter(|r| r.get("copy_of").is_none()).collect();
    assert_eq!(runs.len(), 2, "two runs, the rest copies: {rows:#?}");
}

/// `--best` never applies a forged record: one that scores best but does not hold together with
/// its committed files is passed over, and the output says so.
#[test]
fn best_passes_over_a_forged_record() {
    let env = Env::new();
    let dir = runs_on_a_feature_branch(&env, "forged", "feature/f", &["1000", "300"]);
    let path = dir.join("experiments/mnist-cnn/metrics.toml");
    let mut record =
        exp::record::RunRecord::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record.metrics.values.insert("accuracy".into(), 0.999);
    std::fs::write(&path, record.to_toml().unwrap()).unwrap();
    env.git(
        &dir,
        &[
            "commit",
            "-q",
            "-am",
            "exp run mnist-cnn: accuracy=0.9990 (forged)",
        ],
    );
    let forged = env.git(&dir, &["rev-parse", "--short=10", "HEAD"]);
    let out = env.exp(&dir, &["apply", "--best", "accuracy"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "warning: passed over {}: its record does not hold together (",
            forged.trim()
        )),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Applied run/feature-f/mnist-cnn/1 "),
        "{}",
        describe(&out)
    );
    // Every man page, one per subcommand.
    let pages = env.path("man");
    env.exp_ok(&dir, &["man", "--dir", pages.to_str().unwrap()]);
    for page in ["exp.1", "exp-apply.1", "exp-run.1", "exp-ci.1"] {
        assert!(pages.join(page).is_file(), "no {page}");
    }
}
