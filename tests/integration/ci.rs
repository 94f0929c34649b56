//! `exp ci init github` and the script its workflow runs (issue 19, DESIGN §10): the workflow is
//! valid for GitHub Actions' schema, and the script, run against real repositories, gates a pull
//! request (pass and regression, with and without evaluation data) and checks a release on main.

use std::path::Path;

use crate::common::*;

/// A feature branch with one run of mnist-cnn on `limit` training examples (other flags too).
fn feature(env: &Env, dir: &Path, branch: &str, extra: &[&str]) {
    env.git(dir, &["switch", "-q", "-c", branch, "develop"]);
    let out = quick_run(env, dir, "mnist-cnn", extra);
    assert!(out.status.success(), "{}", describe(&out));
}

/// `exp-ci.sh ARGS` in `dir` with the job summary in `summary` and EXP_DATA = `data`.
fn ci_script(env: &Env, dir: &Path, args: &[&str], data: &Path) -> (Option<i32>, String, String) {
    let summary = env.path("summary.md");
    let _ = std::fs::remove_file(&summary);
    let out = env
        .command("bash", dir)
        // The script as `exp ci init github` wrote it (main has it only once a release
        // brought develop's files there).
        .arg(env.path("exp-ci.sh"))
        .args(args)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("EXP_DATA", data)
        .output()
        .unwrap();
    (
        out.status.code(),
        std::fs::read_to_string(&summary).unwrap_or_default(),
        describe(&out),
    )
}

/// check-jsonschema from PyPI, in the venv scripts/ci-tools.sh makes.
fn check_jsonschema() -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/exp/ci-venv/bin/check-jsonschema");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "check-jsonschema (PyPI) is not installed at {}: run the tests with scripts/test.sh, which installs it (scripts/ci-tools.sh)",
        venv.display()
    );
}

#[test]
fn ci_workflow_is_valid_and_its_script_gates_pull_requests() {
    let env = Env::new();
    let dir = env.init_repo("ci");
    let out = env.exp_ok(&dir, &["ci", "init", "github"]);
    assert!(
        out.contains("wrote .github/workflows/exp.yml")
            && out.contains("wrote .github/exp/exp-ci.sh"),
        "{out}"
    );
    // Valid for GitHub Actions (the schema from schemastore, bundled with check-jsonschema).
    let check = std::process::Command::new(check_jsonschema())
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(dir.join(".github/workflows/exp.yml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", describe(&check));
    std::fs::copy(dir.join(".github/exp/exp-ci.sh"), env.path("exp-ci.sh")).unwrap();
    env.git(&dir, &["add", ".github"]);
    env.git(&dir, &["commit", "-q", "-m", "exp ci init github"]);
    // Edits are kept unless --force.
    std::fs::write(dir.join(".github/workflows/exp.yml"), "name: mine\n").unwrap();
    let out = env.exp(&dir, &["ci", "init", "github"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("hint: `exp ci init github --force` rewrites it"),
        "{}",
        describe(&out)
    );
    env.git(&dir, &["checkout", "--", ".github"]);

    // develop holds a first model.
    feature(&env, &dir, "feature/first", &[]);
    env.exp_ok(&dir, &["flow", "finish"]);
    let empty = env.path("no-data");
    std::fs::create_dir_all(&empty).unwrap();

    // A better model (more data): pass, without data (said so) and with it (verified).
    feature(
        &env,
        &dir,
        "feature/good",
        &["--set", "data.train_limit=3000"],
    );
    let (code, summary, out) = ci_script(&env, &dir, &["pr", "develop"], &empty);
    assert_eq!(code, Some(0), "{out}\n{summary}");
    assert!(
        summary.starts_with("## exp gate: pass (not verified)")
            && summary.contains("No evaluation data on this runner")
            && summary.contains("### mnist-cnn (changed): `")
            && summary.contains("| accuracy |"),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("exp-out/pr-comment.md")).unwrap(),
        summary
    );
    let (code, summary, out) = ci_script(&env, &dir, &["pr", "develop"], &env.data);
    assert_eq!(code, Some(0), "{out}\n{summary}");
    assert!(
        summary.starts_with("## exp gate: pass (verified: the committed weights were re-evaluated")
            && !summary.contains("No evaluation data"),
        "{summary}"
    );

    // A worse model (a learning rate far too small): the gate's exit 1, and the summary says so.
    feature(&env, &dir, "feature/bad", &["--set", "train.lr=1e-6"]);
    let (code, summary, out) = ci_script(&env, &dir, &["pr", "develop"], &env.data);
    assert_eq!(code, Some(1), "{out}\n{summary}");
    assert!(
        summary.starts_with("## exp gate: REGRESSION")
            && summary.contains("regression in mnist-cnn"),
        "{summary}"
    );

    // On main: no release yet, then the release checked and verified.
    env.git(&dir, &["switch", "-q", "main"]);
    let (code, summary, out) = ci_script(&env, &dir, &["main"], &env.data);
    assert_eq!(code, Some(0), "{out}");
    assert!(summary.contains("no release on main yet"), "{summary}");
    env.git(&dir, &["switch", "-q", "develop"]);
    env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    env.git(&dir, &["switch", "-q", "main"]);
    let (code, summary, out) = ci_script(&env, &dir, &["main"], &env.data);
    assert_eq!(code, Some(0), "{out}\n{summary}");
    assert!(
        summary.starts_with("## exp verify v1.0.0: verified"),
        "{summary}"
    );
    let (code, summary, _) = ci_script(&env, &dir, &["main"], &empty);
    assert_eq!(code, Some(0));
    assert!(
        summary.contains("v1.0.0 is a release made through the gate")
            && summary.contains("exp verify did not run"),
        "{summary}"
    );
    let (code, _, _) = ci_script(&env, &dir, &["nonsense"], &empty);
    assert_eq!(code, Some(2));
}
