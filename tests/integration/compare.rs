//! `exp diff`, `exp log`, `exp show`: golden tests on a repository built with real `git`, fixed
//! dates and identities (so commit ids are stable), and records written by exp's own record
//! writer. `EXP_BLESS=1` rewrites the expected files in tests/golden/.

use std::path::{Path, PathBuf};

use exp::eval::encode_predictions;
use exp::record::RunRecord;

use crate::common::*;

const N: u32 = 100;

fn labels() -> Vec<u32> {
    (0..N).map(|i| i % 10).collect()
}

/// Predictions that are right exactly on `right`.
fn predictions(right: impl Fn(u32) -> bool) -> Vec<u32> {
    labels()
        .iter()
        .enumerate()
        .map(|(i, &l)| if right(i as u32) { l } else { (l + 1) % 10 })
        .collect()
}

struct Builder<'a> {
    env: &'a Env,
    dir: PathBuf,
    clock: u64,
    /// Commit the LFS pointer the record names beside each record (the gate checks it).
    weights: bool,
}

impl Builder<'_> {
    fn git(&mut self, args: &[&str]) -> String {
        self.clock += 60;
        let date = format!("{} +0000", 1_700_000_000 + self.clock);
        let out = std::process::Command::new("git")
            .current_dir(&self.dir)
            .args(args)
            .env("HOME", &self.env.home)
            .env("GIT_CONFIG_GLOBAL", self.env.home.join(".gitconfig"))
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commits a record for `name` built from the fixture by `edit`, with `preds`.
    fn run(
        &mut self,
        name: &str,
        branch: &str,
        n: u32,
        preds: &[u32],
        edit: impl Fn(&mut RunRecord),
    ) {
        let mut record = RunRecord::from_toml(include_str!("../fixtures/record.toml")).unwrap();
        record.run.experiment = name.into();
        record.run.branch = branch.into();
        record.data.test.examples = N as usize;
        // The record says what its predictions show, computed by exp's own metrics code: the
        // gate and diff recompute them and refuse a record that disagrees.
        let evaluation = exp::eval::Evaluation {
            labels: labels(),
            predictions: preds.to_vec(),
            loss: f64::NAN,
        };
        let metrics = exp::eval::Metrics::new(&evaluation, 10);
        for name in ["accuracy", "macro_f1"] {
            record
                .metrics
                .values
                .insert(name.into(), metrics.get(name).unwrap());
        }
        for meta in record.metrics.meta.values_mut() {
            meta.samples = N as usize;
        }
        record.eval.classes = 10;
        record.eval.per_class_accuracy = metrics.per_class_accuracy.clone();
        record.eval.confusion = metrics.confusion.clone();
        edit(&mut record);
        let dir = self.dir.join("experiments").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let predictions = encode_predictions(&labels(), preds, 10);
        std::fs::write(dir.join("predictions.bin"), &predictions).unwrap();
        if self.weights {
            let pointer = format!(
                "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
                record.model.oid, record.model.size
            );
            std::fs::write(dir.join(&record.model.weights), pointer).unwrap();
        }
        let accuracy = record.metrics.values["accuracy"];
        let history: String = (1..=3)
            .map(|e| {
                format!(
                    "{e},0.001,{},,,{},{},1.0\n",
                    1.0 / e as f64,
                    0.5 / e as f64,
                    accuracy - 0.1 / e as f64
                )
            })
            .collect();
        let header = "epoch,lr,train_loss,val_loss,val_accuracy,eval_loss,eval_accuracy,seconds\n";
        let history = format!("{header}{history}");
        std::fs::write(dir.join("history.csv"), &history).unwrap();
        record.artifacts = [
            ("predictions.bin", &predictions[..]),
            ("history.csv", history.as_bytes()),
        ]
        .into_iter()
        .map(|(file, bytes)| (file.to_string(), exp::record::artifact_hash(bytes)))
        .collect();
        std::fs::write(dir.join("metrics.toml"), record.to_toml().unwrap()).unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", &format!("exp run {name}")]);
        let tag = format!("run/{}/{name}/{n}", branch.replace('/', "-"));
        self.git(&["tag", "-a", &tag, "-m", "run"]);
    }
}

fn build(env: &Env) -> PathBuf {
    build_fixture(env, false)
}

/// The fixture with the weights' LFS pointers committed, as `exp run` commits them.
fn build_with_weights(env: &Env) -> PathBuf {
    build_fixture(env, true)
}

fn build_fixture(env: &Env, weights: bool) -> PathBuf {
    let dir = env.path("history");
    std::fs::create_dir_all(&dir).unwrap();
    let mut b = Builder {
        env,
        dir: dir.clone(),
        clock: 0,
        weights,
    };
    b.git(&["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README.md"), "golden\n").unwrap();
    b.git(&["add", "-A"]);
    b.git(&["commit", "-q", "-m", "start"]);
    b.git(&["branch", "develop"]);
    b.git(&["switch", "-q", "-c", "feature/golden"]);
    // 1: 90 right. 2: lr halved, fixes 90..95, breaks 0..2 (93 right). 3: mnist-mlp added.
    // 4: same predictions as 2, another seed: zero discordant pairs.
    // 5: evaluated on a different eval set: not comparable.
    b.run(
        "mnist-cnn",
        "feature/golden",
        1,
        &predictions(|i| i < 90),
        |_| {},
    );
    b.run(
        "mnist-cnn",
        "feature/golden",
        2,
        &predictions(|i| (2..95).contains(&i)),
        |r| {
            r.params.train.lr = 0.0005;
            r.metrics.values.insert("loss".into(), 0.30);
        },
    );
    b.run(
        "mnist-mlp",
        "feature/golden",
        1,
        &predictions(|i| i % 4 != 0),
        |r| {
            r.params.model.name = exp::spec::ModelName::Mlp;
            r.params.model.hidden = Some(vec![128]);
            r.params.model.dropout = Some(0.0);
        },
    );
    b.run(
        "mnist-cnn",
        "feature/golden",
        3,
        &predictions(|i| (2..95).contains(&i)),
        |r| {
            r.params.train.lr = 0.0005;
            r.params.train.seed = 2;
            r.metrics.values.insert("loss".into(), 0.29);
        },
    );
    b.run(
        "mnist-cnn",
        "feature/golden",
        4,
        &predictions(|i| i < 97),
        |r| {
            r.params.train.lr = 0.0005;
            r.params.data.test_limit = 100;
            r.data.test.blake3 = "0".repeat(64);
            for meta in r.metrics.meta.values_mut() {
                meta.eval_set = "0".repeat(64);
            }
        },
    );
    dir
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("EXP_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with EXP_BLESS=1", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

/// The fixture's run tag `n` of mnist-cnn.
fn tag(n: u32) -> String {
    format!("run/feature-golden/mnist-cnn/{n}")
}

/// `exp ARGS` on a fresh fixture, compared with tests/golden/NAME with the exit code expected.
/// One test per golden, so one mismatch does not hide the others.
fn golden_of(name: &str, args: &[&str], code: i32) {
    let env = Env::new();
    // The gate checks the committed weights against the record; diff, log and show do not.
    let dir = if args[0] == "gate" {
        build_with_weights(&env)
    } else {
        build(&env)
    };
    let out = env.exp(&dir, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exp {args:?}: {}",
        describe(&out)
    );
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.stderr.is_empty() {
        text.push_str("--- stderr\n");
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    golden(name, &text);
}

macro_rules! golden_tests {
    ($($test:ident: $file:literal, $code:literal, [$($arg:expr),* $(,)?];)*) => {$(
        #[test]
        fn $test() {
            golden_of($file, &[$(&$arg),*], $code);
        }
    )*};
}

golden_tests! {
    golden_log: "log.txt", 0, ["log"];
    golden_log_filtered: "log-filtered.txt", 0,
        ["log", "--where", "accuracy>=0.93", "--sort", "accuracy", "--experiment", "mnist-cnn"];
    golden_log_json: "log.json", 0, ["log", "develop..HEAD", "--experiment", "mnist-mlp", "--json"];
    golden_show: "show.txt", 0, ["show"];
    golden_show_all: "show-all.txt", 0, ["show", "--all-branches"];
    golden_diff_1_2: "diff-1-2.txt", 0, ["diff", tag(1), tag(2)];
    golden_diff_1_2_md: "diff-1-2.md", 0, ["diff", tag(1), tag(2), "--md"];
    golden_diff_1_2_json: "diff-1-2.json", 0, ["diff", tag(1), tag(2), "--json"];
    golden_diff_2_3: "diff-2-3.txt", 0, ["diff", tag(2), tag(3)];
    golden_diff_3_4: "diff-3-4.txt", 0, ["diff", tag(3), tag(4)];
    golden_diff_default: "diff-default.txt", 0, ["diff"];
    // The gate's table: an improvement passes; the reverse, 3 points worse with no tolerance,
    // is a regression (exit 1); another eval set cannot be decided (exit 2).
    golden_gate_pass: "gate-1-2.txt", 0, ["gate", "--base", tag(1), "--head", tag(2)];
    golden_gate_regression: "gate-2-1.txt", 1, ["gate", "--base", tag(2), "--head", tag(1)];
    golden_gate_other_eval_set: "gate-3-4.txt", 2, ["gate", "--base", tag(3), "--head", tag(4)];
}

#[test]
fn diff_counts_and_p_values_are_exact() {
    let env = Env::new();
    let dir = build(&env);
    let json = |a: &str, b: &str| -> serde_json::Value {
        serde_json::from_str(&env.exp_ok(&dir, &["diff", a, b, "--json"])).unwrap()
    };
    // Independent exact binomial sum: p = min(1, 2·Σ_{i≤min(b,c)} C(b+c, i) / 2^(b+c)).
    fn exact(b: u64, c: u64) -> f64 {
        let n = b + c;
        let mut sum = 0f64;
        let mut choose = 1f64;
        for i in 0..=b.min(c) {
            if i > 0 {
                choose = choose * (n - i + 1) as f64 / i as f64;
            }
            sum += choose;
        }
        if n == 0 {
            1.0
        } else {
            (2.0 * sum / 2f64.powi(n as i32)).min(1.0)
        }
    }
    let t = |n: u32| format!("run/feature-golden/mnist-cnn/{n}");
    let d = json(&t(1), &t(2));
    let ex = &d["experiments"][0]["examples"];
    assert_eq!(
        (ex["fixed"].as_u64(), ex["broken"].as_u64()),
        (Some(5), Some(2))
    );
    assert!((ex["p_value"].as_f64().unwrap() - exact(5, 2)).abs() < 1e-12);
    assert!((exact(5, 2) - 0.453125).abs() < 1e-12);
    // Reverse direction: fixed and broken swap, p the same (ties in the test's symmetry).
    let d = json(&t(2), &t(1));
    let ex = &d["experiments"][0]["examples"];
    assert_eq!(
        (ex["fixed"].as_u64(), ex["broken"].as_u64()),
        (Some(2), Some(5))
    );
    // Zero discordant pairs: p = 1.
    let d = json(&t(2), &t(3));
    let ex = &d["experiments"][0]["examples"];
    assert_eq!(
        (
            ex["fixed"].as_u64(),
            ex["broken"].as_u64(),
            ex["p_value"].as_f64()
        ),
        (Some(0), Some(0), Some(1.0))
    );
    // A different eval set: no verdict, a reason.
    let d = json(&t(3), &t(4));
    let e = &d["experiments"][0];
    assert_eq!(e["examples"]["status"], "not-comparable");
    assert!(e["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["verdict"] == "not-comparable"));
}

#[test]
fn compare_errors_exit_2_with_hints() {
    let env = Env::new();
    let dir = build(&env);
    for (args, needle) in [
        (vec!["diff", "no-such-rev", "HEAD"], "unknown revision"),
        (vec!["show", "main"], "no run record at main"),
        (vec!["log", "--where", "accuracy"], "KEY OP VALUE"),
    ] {
        let out = env.exp(&dir, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // A corrupt record is never skipped: diff refuses it; show lists it as unreadable with a
    // warning (an_unreadable_record_does_not_hide_the_others).
    std::fs::write(
        dir.join("experiments/mnist-mlp/metrics.toml"),
        "[run\nbroken",
    )
    .unwrap();
    env.git(&dir, &["commit", "-qam", "damage"]);
    let out = env.exp(&dir, &["diff", "HEAD~1", "HEAD"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("corrupt run record experiments/mnist-mlp/metrics.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn plot_writes_a_self_contained_report() {
    let env = Env::new();
    let dir = build(&env);
    env.git(
        &dir,
        &[
            "switch",
            "-q",
            "-c",
            "feature/other",
            "run/feature-golden/mnist-cnn/2",
        ],
    );
    let out = env.exp_ok(
        &dir,
        &["plot", "--out", "report.html", "--experiment", "mnist-cnn"],
    );
    assert!(out.contains("Wrote report.html"), "{out}");
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.contains("src=\"http"),
        "self-contained: no external script"
    );
    for needle in [
        "mnist-cnn: accuracy across runs",
        "feature/golden",
        "feature/other",
        "confusion matrix at HEAD",
        "eval accuracy per epoch",
    ] {
        assert!(html.contains(needle), "report lacks {needle:?}");
    }
    // In a real browser: every chart drawn as SVG, a runs table row per run, no script error.
    let dom = rendered_dom(&env, &dir.join("report.html"));
    // Metric across runs, two training-curve charts, the confusion matrix.
    assert_report_drawn(&dom, 4);
    assert_eq!(dom.matches("class=\"marks\"").count(), 4, "four SVG charts");
    let runs = env
        .git(&dir, &["tag", "-l", "run/*/mnist-cnn/*"])
        .lines()
        .count();
    let table = dom
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("</tbody>")
        .next()
        .unwrap();
    assert_eq!(table.matches("<tr>").count(), runs, "{table}");
    assert!(table.contains("run/feature-golden/mnist-cnn/1"), "{table}");
    // Training curves overlay the chosen runs.
    env.exp_ok(
        &dir,
        &[
            "plot",
            "--out",
            "runs.html",
            "--run",
            "run/feature-golden/mnist-cnn/1",
            "--run",
            "run/feature-golden/mnist-cnn/4",
        ],
    );
    let html = std::fs::read_to_string(dir.join("runs.html")).unwrap();
    assert!(
        html.contains("run/feature-golden/mnist-cnn/1")
            && html.contains("run/feature-golden/mnist-cnn/4")
    );
    // Nothing to plot is an error, not an empty report.
    let out = env.exp(&dir, &["plot", "--experiment", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn log_cache_answers_the_same_and_never_stale() {
    let env = Env::new();
    let dir = build(&env);
    let cold = env.exp_ok(&dir, &["log", "--json"]);
    let cache = dir.join(".git/exp/cache/log-v5.json");
    assert!(cache.is_file(), "exp log left no cache");
    assert_eq!(
        env.exp_ok(&dir, &["log", "--json"]),
        cold,
        "a warm log differs from the cold one"
    );
    // Rewrite the last run's record: new blob, new commit; the cache must not answer for it.
    let path = dir.join("experiments/mnist-cnn/metrics.toml");
    let mut record = RunRecord::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record.metrics.values.insert("accuracy".into(), 0.12345);
    std::fs::write(&path, record.to_toml().unwrap()).unwrap();
    env.git(&dir, &["commit", "-q", "--amend", "-am", "rewritten"]);
    let rewritten = env.exp_ok(&dir, &["log", "--json"]);
    assert!(rewritten.contains("0.12345") && rewritten != cold);
    // A damaged cache is ignored, not trusted (the finished-output cache, which would answer
    // first, removed).
    std::fs::write(&cache, b"{ not json").unwrap();
    std::fs::remove_dir_all(dir.join(".git/exp/cache/output-v2")).unwrap();
    assert_eq!(env.exp_ok(&dir, &["log", "--json"]), rewritten);
}

/// The finished-output cache answers byte for byte what a full run prints, and every input of
/// that output changes its key: a new commit, a deleted or moved tag, another HEAD, other options.
#[test]
fn log_output_cache_is_exact_and_never_stale() {
    let env = Env::new();
    let dir = build(&env);
    let outputs = dir.join(".git/exp/cache/output-v2");
    let fresh = |args: &[&str]| {
        std::fs::remove_dir_all(dir.join(".git/exp")).ok();
        env.exp_ok(&dir, args)
    };
    for args in [
        &["log"][..],
        &["log", "--json"],
        &["log", "--where", "accuracy>0.91"],
    ] {
        let cold = fresh(args);
        assert!(outputs.is_dir(), "exp log stored no output");
        assert_eq!(env.exp_ok(&dir, args), cold, "cached {args:?} differs");
    }
    let before = env.exp_ok(&dir, &["log"]);
    // A tag deleted, then recreated on another commit.
    let tag = "run/feature-golden/mnist-cnn/1";
    env.git(&dir, &["tag", "-d", tag]);
    let untagged = env.exp_ok(&dir, &["log"]);
    assert!(!untagged.contains(tag) && untagged == fresh(&["log"]));
    env.git(&dir, &["tag", "-a", tag, "-m", "moved", "HEAD~1"]);
    let moved = env.exp_ok(&dir, &["log"]);
    assert!(moved.contains(tag) && moved != before && moved == fresh(&["log"]));
    // Another HEAD: the history ends elsewhere.
    env.git(&dir, &["switch", "-q", "--detach", "HEAD~2"]);
    let earlier = env.exp_ok(&dir, &["log"]);
    assert!(earlier != moved && earlier == fresh(&["log"]));
    env.git(&dir, &["switch", "-q", "feature/golden"]);
    // A new run commit.
    let path = dir.join("experiments/mnist-cnn/metrics.toml");
    let mut record = RunRecord::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record.metrics.values.insert("accuracy".into(), 0.54321);
    std::fs::write(&path, record.to_toml().unwrap()).unwrap();
    env.git(&dir, &["commit", "-q", "-am", "another run"]);
    let newer = env.exp_ok(&dir, &["log"]);
    assert!(newer.contains("0.5432") && newer == fresh(&["log"]));
    // An edited entry is not printed.
    env.exp_ok(&dir, &["log"]);
    for entry in std::fs::read_dir(&outputs).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("0.5432", "0.9999")).unwrap();
    }
    assert_eq!(env.exp_ok(&dir, &["log"]), newer);
}

#[test]
fn closed_stdout_is_not_an_error() {
    let env = Env::new();
    let dir = build(&env);
    let mut child = env
        .exp_cmd(&dir, &["log"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once, like `| head -0`
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

/// `exp flow finish` and `exp flow release` on the fixture: their messages, with fixed commit
/// dates so that the merge commits' ids are stable.
#[test]
fn golden_flow_finish_and_release() {
    let env = Env::new();
    let dir = build_with_weights(&env);
    let flow = |args: &[&str]| {
        let out = env
            .exp_cmd(&dir, args)
            .env("GIT_AUTHOR_DATE", "1700009000 +0000")
            .env("GIT_COMMITTER_DATE", "1700009000 +0000")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "exp {args:?}: {}",
            describe(&out)
        );
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.stderr.is_empty() {
            text.push_str("--- stderr\n");
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        text
    };
    let finish = flow(&["flow", "finish"]);
    let release = flow(&["flow", "release", "1.0.0"]);
    golden("flow-finish.txt", &finish);
    golden("flow-release.txt", &release);
}

/// `exp log | head`: a reader that closes the pipe early ends exp quietly with success, as
/// with `git log | head` (the write fails with EPIPE; exp does not report it).
#[test]
fn a_closed_stdout_pipe_ends_quietly_with_success() {
    let env = Env::new();
    let dir = build(&env);
    for args in [
        &["log"][..],
        &["show", "--all-branches"],
        &["diff", "--json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // closed before exp writes a byte
        let out = env
            .exp_cmd(&dir, args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "exp {args:?}: {}",
            describe(&out)
        );
        assert_eq!(stderr(&out), "", "exp {args:?}");
    }
}

/// `--sort`/`--where` naming a metric exp does not know, or a malformed expression, exit 2
/// listing the known metrics.
#[test]
fn unknown_metrics_in_sort_and_where_are_usage_errors() {
    let env = Env::new();
    let dir = build(&env);
    for (args, says) in [
        (&["log", "--sort", "f1"][..], "--sort \"f1\": not a metric exp knows (accuracy, loss, macro_f1)"),
        (&["log", "--where", "f1>0.5"], "--where \"f1>0.5\": \"f1\" is neither a metric exp knows (accuracy, loss, macro_f1) nor a spec key"),
        (&["log", "--where", "accuracy>"], "\"accuracy>\" is not KEY OP VALUE"),
    ] {
        let out = env.exp(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", describe(&out));
    }
    // A spec key filters, and a known metric sorts.
    let out = env.exp_ok(&dir, &["log", "--where", "train.seed==2", "--sort", "loss"]);
    assert!(
        out.contains("mnist-cnn/3") && !out.contains("mnist-cnn/1 "),
        "{out}"
    );
}

/// One unreadable record in the history does not break `exp log`: its row says why, the rest
/// prints, exit 0 with a warning; nothing readable at all is exit 2.
#[test]
fn an_unreadable_record_does_not_hide_the_others() {
    let env = Env::new();
    let dir = build(&env);
    std::fs::write(
        dir.join("experiments/mnist-cnn/metrics.toml"),
        "not toml [[[\n",
    )
    .unwrap();
    env.git(&dir, &["commit", "-q", "-am", "damaged"]);
    let out = env.exp(&dir, &["log"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("unreadable record: invalid run record: TOML parse error")
            && text.contains("run/feature-golden/mnist-cnn/1")
            && text.contains("run/feature-golden/mnist-mlp/1"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("warning: experiments/mnist-cnn/metrics.toml at ")
            && stderr(&out).contains("cannot be read (invalid run record: TOML parse error"),
        "{}",
        describe(&out)
    );
    // Again (the output cache must not swallow the warning).
    let again = env.exp(&dir, &["log"]);
    assert!(
        stderr(&again).contains("cannot be read"),
        "{}",
        describe(&again)
    );
    // exp show: the readable experiment, and a row that says why for the other.
    let out = env.exp(&dir, &["show"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mnist-mlp") && text.contains("unreadable record: invalid run record"),
        "{}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("cannot be read"),
        "{}",
        describe(&out)
    );
    // exp plot: the report is written, the section says why.
    let report = env.path("report.html");
    let out = env.exp(&dir, &["plot", "--out", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("warning: corrupt run record"),
        "{}",
        describe(&out)
    );
    assert!(std::fs::read_to_string(&report)
        .unwrap()
        .contains("corrupt run record"));
    // Only unreadable records: exit 2.
    let out = env.exp(&dir, &["log", "HEAD~1..HEAD"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no record in that history can be read"),
        "{}",
        describe(&out)
    );
}
