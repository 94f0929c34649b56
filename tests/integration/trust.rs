//! Records the gate can trust (docs/design.md §7): the gate and `exp diff` judge what the
//! committed artifacts show, never what a record claims; `exp verify` re-evaluates the committed
//! weights. Real runs on real MNIST subsets, records forged the ways a user could forge them.

use std::path::Path;

use exp::record::RunRecord;

use crate::common::*;

const RECORD: &str = "experiments/mnist-cnn/metrics.toml";
const PREDICTIONS: &str = "experiments/mnist-cnn/predictions.bin";

/// A repository whose develop holds a first run of mnist-cnn, and a feature branch
/// `feature/next` with a second, genuine run on top (another seed).
fn two_runs(env: &Env) -> std::path::PathBuf {
    let dir = env.init_repo("trust");
    // A policy that lets any genuine second run pass: these tests are about forgeries.
    env.git(&dir, &["switch", "-q", "develop"]);
    let spec = dir.join("experiments/mnist-cnn.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let text = text.split("\n[gate]").next().unwrap();
    std::fs::write(
        &spec,
        format!("{text}\n[gate]\nmax_drop = 1.0\nalpha = 1e-9\n"),
    )
    .unwrap();
    env.git(&dir, &["commit", "-q", "-am", "a lenient gate"]);
    env.git(&dir, &["switch", "-q", "-c", "feature/first", "develop"]);
    let out = quick_run(env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", "feature/first", "-m", "merge"],
    );
    env.git(&dir, &["switch", "-q", "-c", "feature/next", "develop"]);
    let out = quick_run(env, &dir, "mnist-cnn", &["--set", "train.seed=2"]);
    assert!(out.status.success(), "{}", describe(&out));
    dir
}

fn read_record(dir: &Path) -> RunRecord {
    RunRecord::from_toml(&std::fs::read_to_string(dir.join(RECORD)).unwrap()).unwrap()
}

/// Commits the record as `edit` leaves it, on a new branch from `feature/next`.
fn forge(env: &Env, dir: &Path, branch: &str, edit: impl FnOnce(&mut RunRecord)) {
    env.git(dir, &["switch", "-q", "-c", branch, "feature/next"]);
    let mut record = read_record(dir);
    edit(&mut record);
    std::fs::write(dir.join(RECORD), record.to_toml().unwrap()).unwrap();
    env.git(dir, &["commit", "-q", "-am", "forged"]);
}

/// `exp ARGS` must exit `code` with `expected` in its stderr.
fn refused(env: &Env, dir: &Path, args: &[&str], code: i32, expected: &str) {
    let out = env.exp(dir, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exp {args:?}: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains(expected),
        "exp {args:?} does not say {expected:?}: {}",
        describe(&out)
    );
}

/// Predictions all right, and a record made to agree with them (metrics recomputed by exp's own
/// code, bindings updated): consistent, but not what the committed weights produce.
fn forge_consistent(dir: &Path, record: &mut RunRecord) {
    let bytes = std::fs::read(dir.join(PREDICTIONS)).unwrap();
    let (labels, _, classes) = exp::eval::decode_predictions(&bytes).unwrap();
    let evaluation = exp::eval::Evaluation {
        labels: labels.clone(),
        predictions: labels.clone(),
        loss: f64::NAN,
    };
    let forged = exp::eval::encode_predictions(&labels, &labels, classes);
    std::fs::write(dir.join(PREDICTIONS), &forged).unwrap();
    let metrics = exp::eval::Metrics::new(&evaluation, classes);
    record
        .metrics
        .values
        .insert("accuracy".into(), metrics.accuracy);
    record
        .metrics
        .values
        .insert("macro_f1".into(), metrics.macro_f1);
    record.eval.per_class_accuracy = metrics.per_class_accuracy;
    record.eval.confusion = metrics.confusion;
    record.artifacts.insert(
        "predictions.bin".into(),
        exp::record::artifact_hash(&forged),
    );
}

#[test]
fn forged_records_cannot_pass_the_gate_or_diff() {
    let env = Env::new();
    let dir = two_runs(&env);
    let genuine = read_record(&dir);
    let accuracy = genuine.metrics.values["accuracy"];

    // The run binds its artifacts: BLAKE3 of the committed predictions.bin and history.csv.
    for file in ["predictions.bin", "history.csv"] {
        let bytes = std::fs::read(dir.join("experiments/mnist-cnn").join(file)).unwrap();
        assert_eq!(
            genuine.artifacts[file],
            blake3::hash(&bytes).to_hex().to_string(),
            "{file}"
        );
    }
    env.exp_ok(&dir, &["gate", "--base", "develop"]);

    // A NaN (or an infinity) where a metric should be.
    forge(&env, &dir, "forge/nan", |r| {
        r.metrics.values.insert("accuracy".into(), f64::NAN);
    });
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "cannot decide mnist-cnn: the head's record cannot be trusted: metrics.accuracy is NaN, not a finite number",
    );
    forge(&env, &dir, "forge/inf", |r| {
        r.metrics.values.insert("loss".into(), f64::NEG_INFINITY);
    });
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "metrics.loss is -inf, not a finite number",
    );

    // A better accuracy typed in by hand: recomputed from predictions.bin and refused, naming
    // the field, the recorded and the recomputed value.
    forge(&env, &dir, "forge/typed", |r| {
        r.metrics.values.insert("accuracy".into(), 0.9912);
    });
    let expected =
        format!("metrics.accuracy is recorded as 0.9912, but {PREDICTIONS} gives {accuracy}");
    refused(&env, &dir, &["gate", "--base", "develop"], 2, &expected);
    refused(
        &env,
        &dir,
        &["diff", "develop", "HEAD"],
        2,
        &format!("cannot trust {RECORD} at HEAD: {expected}"),
    );

    // Bindings stripped from a record of a version that writes them.
    forge(&env, &dir, "forge/stripped", |r| r.artifacts.clear());
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "which binds its artifacts, yet it has no [artifacts]",
    );

    // A direction flipped so that a drop reads as a gain: the direction comes from exp's table.
    forge(&env, &dir, "forge/direction", |r| {
        r.metrics.meta.get_mut("accuracy").unwrap().direction = exp::metric::Direction::Min;
    });
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "metrics.meta.accuracy.direction is recorded as \"min\", but accuracy is a \"max\" metric",
    );

    // Per-class results and the eval set's size are checked too.
    forge(&env, &dir, "forge/per-class", |r| {
        r.eval.per_class_accuracy[3] = 0.123456;
    });
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "eval.per_class_accuracy[3] is recorded as 0.123456, but",
    );
    forge(&env, &dir, "forge/samples", |r| {
        r.data.test.examples = 10_000;
    });
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        &format!("data.test.examples is recorded as 10000, but {PREDICTIONS} has 500 examples"),
    );

    // predictions.bin swapped under an unchanged record: the binding no longer holds.
    env.git(&dir, &["switch", "-q", "-c", "forge/swap", "feature/next"]);
    let mut scratch = read_record(&dir);
    forge_consistent(&dir, &mut scratch);
    env.git(&dir, &["commit", "-q", "-am", "better predictions"]);
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        &format!(
            "{PREDICTIONS} is not the file the record binds: [artifacts] \"predictions.bin\" is {}",
            genuine.artifacts["predictions.bin"]
        ),
    );
    // ... and under a record the gate has already seen (same record blob as on the base).
    env.git(&dir, &["switch", "-q", "-c", "forge/swap-base", "develop"]);
    std::fs::write(
        dir.join(PREDICTIONS),
        exp::eval::encode_predictions(&[0; 500], &[0; 500], 10),
    )
    .unwrap();
    env.git(&dir, &["commit", "-q", "-am", "predictions replaced"]);
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        &format!("{PREDICTIONS} is not the file the record binds"),
    );

    // A record and predictions forged to agree, bindings and all: the audit cannot tell, but the
    // committed weights do not produce them, and --verify says so.
    forge(&env, &dir, "forge/consistent", |r| {
        forge_consistent(&dir, r)
    });
    let out = env.exp_ok(&dir, &["gate", "--base", "develop"]);
    assert!(
        out.contains(
            "exp gate: pass (records audited against their artifacts, weights not re-evaluated"
        ),
        "{out}"
    );
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop", "--verify"],
        2,
        "cannot decide mnist-cnn: exp verify on the head: the committed weights do not produce the record:",
    );
    refused(
        &env,
        &dir,
        &["verify"],
        1,
        "mnist-cnn: the committed weights do not produce the record:",
    );
    // The hooks and flow take --verify from git config.
    env.git(&dir, &["config", "exp.gate.verify", "true"]);
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "exp verify on the head: the committed weights do not produce the record",
    );
    env.git(&dir, &["config", "exp.gate.verify", "sometimes"]);
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "git config exp.gate.verify is not a boolean",
    );
    env.git(&dir, &["config", "--unset", "exp.gate.verify"]);

    // Same eval set, other true labels: one side's predictions were not written for it.
    forge(&env, &dir, "forge/labels", |r| {
        let bytes = std::fs::read(dir.join(PREDICTIONS)).unwrap();
        let (mut labels, predictions, classes) = exp::eval::decode_predictions(&bytes).unwrap();
        let other = labels.iter().position(|&l| l != labels[0]).unwrap();
        labels.swap(0, other);
        let forged = exp::eval::encode_predictions(&labels, &predictions, classes);
        let m = exp::eval::Metrics::new(
            &exp::eval::Evaluation {
                labels,
                predictions,
                loss: f64::NAN,
            },
            classes,
        );
        r.metrics.values.insert("accuracy".into(), m.accuracy);
        r.metrics.values.insert("macro_f1".into(), m.macro_f1);
        r.eval.per_class_accuracy = m.per_class_accuracy;
        r.eval.confusion = m.confusion;
        r.artifacts.insert(
            "predictions.bin".into(),
            exp::record::artifact_hash(&forged),
        );
        std::fs::write(dir.join(PREDICTIONS), forged).unwrap();
    });
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        &format!("cannot decide mnist-cnn: the head's {PREDICTIONS}: its true labels differ from those of {PREDICTIONS} at develop, yet both records name the eval set {}", genuine.data.test.blake3),
    );
}

#[test]
fn records_without_bindings_are_read_with_a_warning() {
    let env = Env::new();
    let dir = two_runs(&env);
    // As exp wrote records before artifact bindings: no [artifacts] table.
    forge(&env, &dir, "feature/old-style", |r| {
        r.artifacts.clear();
        r.run.exp_version = "0.1.0".into();
    });
    let out = env.exp(&dir, &["gate", "--base", "develop"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "warning: {RECORD} at HEAD was written before records bound their artifacts: its predictions.bin and history.csv are taken as committed"
        )),
        "{}",
        describe(&out)
    );
    let out = env.exp(&dir, &["diff", "develop", "HEAD"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("written before records bound"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_gated_metric_exp_does_not_know_is_an_error_in_the_base_spec() {
    let env = Env::new();
    let dir = two_runs(&env);
    env.git(&dir, &["switch", "-q", "develop"]);
    let spec = dir.join("experiments/mnist-cnn.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("[gate]\n", "[gate]\nmetrics = [\"f1\"]\n"),
    )
    .unwrap();
    env.git(&dir, &["commit", "-q", "-am", "gate on f1"]);
    env.git(&dir, &["switch", "-q", "feature/next"]);
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "the base's experiments/mnist-cnn.toml has an invalid [gate]: gate.metrics names \"f1\", which exp does not know; the known metrics are accuracy, loss, macro_f1",
    );
    // The same spec on the command line of a run is refused before training.
    env.git(&dir, &["switch", "-q", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("gate.metrics") && stderr(&out).contains("accuracy, loss, macro_f1"),
        "{}",
        describe(&out)
    );
}

/// A branch that loosens its own policy is not judged by the loosened rule, and the loosening
/// itself cannot pass the gate it loosens (else the next merge would be judged by it).
#[test]
fn a_policy_change_is_not_decided_by_the_rule_it_changes() {
    let env = Env::new();
    let dir = two_runs(&env);
    env.git(&dir, &["switch", "-q", "-c", "policy/loosen", "develop"]);
    let spec = dir.join("experiments/mnist-cnn.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("alpha = 1e-9", "alpha = 1e-300")).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "loosen"]);
    refused(
        &env,
        &dir,
        &["gate", "--base", "develop"],
        2,
        "cannot decide mnist-cnn: the head changes the [gate] policy in experiments/mnist-cnn.toml",
    );
    // A branch that leaves the policy alone passes.
    env.git(&dir, &["switch", "-q", "feature/next"]);
    env.exp_ok(&dir, &["gate", "--base", "develop"]);
    // Reviewed, it is let through where the gate runs.
    env.git(&dir, &["switch", "-q", "policy/loosen"]);
    env.git(&dir, &["config", "exp.gate.allowPolicyChanges", "true"]);
    let out = env.exp_ok(&dir, &["gate", "--base", "develop"]);
    assert!(out.contains("pass"), "{out}");
}

#[test]
fn verify_reevaluates_the_committed_weights() {
    let env = Env::new();
    let dir = two_runs(&env);
    let out = env.exp_ok(&dir, &["verify"]);
    assert!(
        out.contains("mnist-cnn at HEAD: verified")
            && out.contains("predictions: 0 of 500 differ from predictions.bin")
            && out.contains(
                "on the CPU path it was evaluated on: predictions byte for byte, loss within 1e-6"
            ),
        "{out}"
    );
    let json = env.exp_ok(&dir, &["verify", "develop", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let e = &report["experiments"][0];
    assert_eq!(e["outcome"], "verified", "{json}");
    assert_eq!(e["differing_predictions"], 0, "{json}");
    assert_eq!(e["tolerance"]["kind"], "exact", "{json}");
    let delta = (e["loss"].as_f64().unwrap() - e["recorded_loss"].as_f64().unwrap()).abs();
    assert!(delta <= 1e-6, "{json}");

    // No such experiment: exit 2 naming the recorded ones.
    refused(
        &env,
        &dir,
        &["verify", "--experiment", "nope"],
        2,
        "no run record of \"nope\" at HEAD (it records mnist-cnn)",
    );
    // The data is not there: cannot verify (2), never "does not match".
    let empty = env.path("no-data");
    std::fs::create_dir_all(&empty).unwrap();
    let out = env
        .exp_cmd(&dir, &["verify"])
        .env("EXP_DATA", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("exp verify: cannot verify at HEAD:")
            && stderr(&out).contains("the run's eval set cannot be rebuilt from its [params.data]"),
        "{}",
        describe(&out)
    );
    // The weights' LFS object is gone (and no remote has it): cannot verify.
    let record = read_record(&dir);
    let object = dir
        .join(".git/lfs/objects")
        .join(&record.model.oid[..2])
        .join(&record.model.oid[2..4])
        .join(&record.model.oid);
    std::fs::remove_file(&object).unwrap();
    refused(&env, &dir, &["verify"], 2, "are not in the local store");
}

/// The server's pre-receive hook cannot be skipped by deleting a protected branch and pushing it
/// again, and receives only `v*` tags that are releases made through the gate; `exp models` and
/// `exp model get` tell such tags apart locally too.
#[test]
fn the_server_cannot_be_skipped_and_receives_only_releases() {
    let env = Env::new();
    let dir = env.init_repo("server");
    env.git(&dir, &["switch", "-q", "-c", "feature/good", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", "feature/good", "-m", "merge good"],
    );
    env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    let good_develop = env.git(&dir, &["rev-parse", "develop"]).trim().to_string();
    // A much worse run, merged locally (no hooks here).
    env.git(&dir, &["switch", "-q", "-c", "feature/bad", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &["--set", "train.lr=1e-6"]);
    assert!(out.status.success(), "{}", describe(&out));
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", "feature/bad", "-m", "merge bad"],
    );

    let remote = env.path("remote.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    env.exp_ok(&remote, &["hooks", "install"]);
    env.git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
    let push = |args: &[&str]| {
        let mut all = vec!["push", "--no-verify", "origin"];
        all.extend_from_slice(args);
        env.git_out(&dir, &all)
    };
    let refused_push = |args: &[&str], expected: &str| {
        let out = push(args);
        assert!(
            !out.status.success(),
            "git push {args:?} was received: {}",
            describe(&out)
        );
        assert!(
            stderr(&out).contains(expected) && stderr(&out).contains("pre-receive hook declined"),
            "git push {args:?} does not say {expected:?}: {}",
            describe(&out)
        );
    };
    // main and its release: main is the first protected branch there, the tag a release.
    let out = push(&["main", "v1.0.0"]);
    assert!(out.status.success(), "{}", describe(&out));
    // develop is new there: gated against main, so the regression is refused.
    refused_push(&["develop"], "regression in mnist-cnn: accuracy fell from");
    assert!(
        stderr(&push(&["develop"])).contains("develop is new here: gating it against main"),
        "the creation was not gated against main"
    );
    let out = push(&[&format!("{good_develop}:refs/heads/develop")]);
    assert!(out.status.success(), "{}", describe(&out));
    // Deleting a protected branch (to push it again ungated) is refused.
    refused_push(
        &[":develop"],
        "deleting develop is refused: pushing it again would skip the gate",
    );
    refused_push(&[":main"], "deleting main is refused");

    // Tags named like releases that did not come through the gate.
    env.git(&dir, &["tag", "v2.0.0", "main"]);
    refused_push(
        &["v2.0.0"],
        "v2.0.0 is not a release made through the gate: v2.0.0 is a lightweight tag",
    );
    env.git(
        &dir,
        &[
            "tag",
            "-a",
            "v2.0.1",
            "-m",
            "Release v2.0.1",
            "feature/good",
        ],
    );
    refused_push(&["v2.0.1"], "v2.0.1 tags ");
    refused_push(&["v2.0.1"], "not main's tip");
    // A release is for good: never deleted or moved.
    refused_push(
        &[":refs/tags/v1.0.0"],
        "deleting the release v1.0.0 is refused",
    );
    env.git(
        &dir,
        &["tag", "-f", "-a", "v1.0.0", "-m", "moved", "develop"],
    );
    refused_push(&["-f", "v1.0.0"], "moving the release v1.0.0 is refused");
    env.git(
        &dir,
        &[
            "fetch",
            "-q",
            "-f",
            "origin",
            "refs/tags/v1.0.0:refs/tags/v1.0.0",
        ],
    );
    // Tags that merely start with a v are not releases and pass untouched.
    env.git(&dir, &["tag", "vendor-drop", "main"]);
    assert!(push(&["vendor-drop"]).status.success());
    env.git(
        &dir,
        &[
            "tag",
            "-a",
            "v2.0.2",
            "-m",
            "Release v2.0.2\n\nhand made",
            "main",
        ],
    );
    refused_push(
        &["v2.0.2"],
        "v2.0.2's message is not the one exp flow release writes for that commit's records",
    );
    env.git(&dir, &["tag", "-a", "vnext", "-m", "Release vnext", "main"]);
    refused(
        &env,
        &dir,
        &["model", "check-release", "vnext"],
        1,
        "\"next\" is not a semantic version MAJOR.MINOR.PATCH",
    );

    // Locally: listed with a warning, refused by model get unless --force.
    let out = env.exp(&dir, &["models"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mnist-cnn@1.0.0")
            && stderr(&out).contains(
                "warning: mnist-cnn@2.0.2: v2.0.2 is not a release made through the gate"
            )
            && !stderr(&out).contains("mnist-cnn@1.0.0:"),
        "{}",
        describe(&out)
    );
    refused(
        &env,
        &dir,
        &["model", "get", "mnist-cnn@2.0.2"],
        2,
        "v2.0.2 is not a release made through the gate: v2.0.2's message is not the one",
    );
    let out = env.exp_ok(&dir, &["model", "get", "mnist-cnn@2.0.2", "--force"]);
    assert!(
        out.contains("exp-out/mnist-cnn-2.0.2.safetensors (mnist-cnn@2.0.2)"),
        "{out}"
    );
    env.exp_ok(&dir, &["model", "get", "mnist-cnn@1.0.0"]);
    env.exp_ok(&dir, &["model", "check-release", "v1.0.0"]);
    refused(
        &env,
        &dir,
        &["model", "check-release", "v2.0.0"],
        1,
        "v2.0.0 is a lightweight tag",
    );
}
