//! `exp sweep` end to end (docs/design.md §5): trials trained headless on real MNIST subsets,
//! appended concurrently to the sweep's branch, with the user's work tree untouched; status,
//! resume after Ctrl-C and kill -9, idempotent trials, concurrent sweeps.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Tiny trials: seconds each.
const TINY: &[&str] = &[
    "--set",
    "data.train_limit=300",
    "--set",
    "data.test_limit=100",
];

fn sweep_ids(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir.join(".git/exp/sweeps"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn status_json(env: &Env, dir: &Path, id: &str) -> serde_json::Value {
    serde_json::from_str(&env.exp_ok(dir, &["sweep", "status", id, "--json"])).unwrap()
}

fn states(status: &serde_json::Value) -> Vec<String> {
    status
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect()
}

/// Run commits on `branch` (first parent, down to develop).
fn run_commits(env: &Env, dir: &Path, branch: &str) -> Vec<String> {
    env.git(
        dir,
        &[
            "log",
            "--first-parent",
            "--format=%H",
            &format!("develop..{branch}"),
        ],
    )
    .lines()
    .map(String::from)
    .collect()
}

#[test]
fn a_local_sweep_records_every_trial_and_leaves_the_work_tree_alone() {
    let env = Env::new();
    let dir = env.init_repo("sweep");
    // Work in progress: a modified tracked file, a staged one, an untracked one.
    std::fs::write(
        dir.join("experiments/mnist-mlp.toml"),
        "# edited, not saved\n",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "untracked\n").unwrap();
    std::fs::write(dir.join("staged.txt"), "staged\n").unwrap();
    env.git(&dir, &["add", "staged.txt"]);
    let before = (
        env.git(&dir, &["status", "--porcelain=v2", "--branch"]),
        env.git(&dir, &["rev-parse", "HEAD"]),
        std::fs::read(dir.join(".git/index")).unwrap(),
    );

    // The plan: 2 learning rates × 4 seeds, checked before anything starts.
    let mut args = vec![
        "sweep",
        "mnist-cnn",
        "--grid",
        "train.lr=[0.001, 0.003]",
        "--seeds",
        "[1, 2, 3, 4]",
    ];
    args.extend_from_slice(TINY);
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = env.exp_ok(&dir, &dry);
    assert!(
        out.starts_with("exp sweep mnist-cnn: 8 trials (dry run: nothing started)")
            && out.contains("0       train.lr=0.001 train.seed=1")
            && out.contains("7       train.lr=0.003 train.seed=4"),
        "{out}"
    );
    assert!(sweep_ids(&dir).is_empty(), "a dry run left a sweep");

    args.extend_from_slice(&["--jobs", "2"]);
    let out = env.exp(&dir, &args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let ids = sweep_ids(&dir);
    assert_eq!(ids.len(), 1);
    let id = &ids[0];
    let branch = format!("feature/sweep-mnist-cnn-{id}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(local): 8 completed"),
        "{}",
        describe(&out)
    );

    // The user's work tree, index and HEAD are as they were.
    let after = (
        env.git(&dir, &["status", "--porcelain=v2", "--branch"]),
        env.git(&dir, &["rev-parse", "HEAD"]),
        std::fs::read(dir.join(".git/index")).unwrap(),
    );
    assert_eq!(after, before);
    assert_eq!(
        std::fs::read_to_string(dir.join("experiments/mnist-mlp.toml")).unwrap(),
        "# edited, not saved\n"
    );

    // Eight commits, eight tags numbered by the branch's history, eight trials, their objects.
    let commits = run_commits(&env, &dir, &branch);
    assert_eq!(commits.len(), 8, "{commits:?}");
    let mut trial_ids = std::collections::BTreeSet::new();
    for (i, commit) in commits.iter().rev().enumerate() {
        let record = record_at(&env, &dir, commit, "mnist-cnn");
        let sweep = record.sweep.expect("a [sweep] table");
        assert_eq!(&sweep.id, id);
        trial_ids.insert(sweep.trial_id);
        let tag = format!("run/feature-sweep-mnist-cnn-{id}/mnist-cnn/{}", i + 1);
        assert_eq!(
            env.git(&dir, &["rev-parse", &format!("{tag}^{{commit}}")])
                .trim(),
            commit
        );
        let oid = &record.model.oid;
        assert!(
            dir.join(".git/lfs/objects")
                .join(&oid[..2])
                .join(&oid[2..4])
                .join(oid)
                .is_file(),
            "the weights of {commit} are not in the store"
        );
        // The committed spec carries the trial's values.
        let spec = env.git(
            &dir,
            &["show", &format!("{commit}:experiments/mnist-cnn.toml")],
        );
        assert!(
            spec.contains(&format!("seed = {}", record.params.train.seed))
                && spec.contains("train_limit = 300"),
            "{spec}"
        );
    }
    assert_eq!(trial_ids.len(), 8);

    // A trial run again (a retry, a requeue) records nothing new.
    let out = env.exp_ok(&dir, &["sweep", "trial", id, "5"]);
    assert!(out.contains("trial 5 is already recorded"), "{out}");
    assert_eq!(run_commits(&env, &dir, &branch).len(), 8);
    let out = env.exp_ok(&dir, &["sweep", "resume", id]);
    assert!(out.contains("nothing to do"), "{out}");

    // show: every trial and the mean ± std over seeds per learning rate.
    let show = env.exp_ok(&dir, &["sweep", "show", id, "--sort", "accuracy"]);
    assert!(
        show.contains("train.lr=0.001          4")
            && show.contains("train.lr=0.003          4")
            && show.contains(" ± "),
        "{show}"
    );
    // plot: the metric against the learning rate, trials as points, the mean over seeds a line.
    let report = env.path("sweep.html");
    let out = env.exp_ok(
        &dir,
        &["plot", "--sweep", id, "--out", report.to_str().unwrap()],
    );
    assert!(out.contains("8 recorded trials, 1 chart(s)"), "{out}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("accuracy against train.lr") && html.contains("the line is the mean"),
        "the sweep view's title or note is missing"
    );
    // In a real browser: the chart is drawn (8 trial points, the mean line), no script error.
    let dom = rendered_dom(&env, &report);
    assert_report_drawn(&dom, 1);
    assert_eq!(
        dom.matches("role=\"graphics-symbol\" aria-roledescription=\"point\"")
            .count(),
        8
    );
    let out = env.exp(&dir, &["sweep", "show", id, "--sort", "f1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("accuracy, loss, macro_f1"),
        "{}",
        describe(&out)
    );

    // exp run on a trial's commit reproduces it: the same weights.
    let trial = record_at(&env, &dir, &commits[0], "mnist-cnn");
    let wt = env.path("reproduce");
    env.git(
        &dir,
        &["worktree", "add", "-q", wt.to_str().unwrap(), &commits[0]],
    );
    env.git(&wt, &["switch", "-q", "-c", "feature/reproduce"]);
    let out = env.exp(&wt, &["run", "mnist-cnn", "--quiet"]);
    assert!(out.status.success(), "{}", describe(&out));
    let again = record_at(&env, &wt, "HEAD", "mnist-cnn");
    assert_eq!(again.model.tensor_hash, trial.model.tensor_hash);
    assert_eq!(again.metrics.values, trial.metrics.values);
}

#[test]
fn bad_definitions_are_refused_before_anything_starts() {
    let env = Env::new();
    let dir = env.init_repo("bad");
    let refused = |args: &[&str], says: &str| {
        let out = env.exp(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", describe(&out));
    };
    refused(
        &["sweep", "mnist-cnn"],
        "has no [sweep] table, and no --grid, --random or --seeds was given",
    );
    refused(
        &["sweep", "mnist-cnn", "--grid", "train.rate=[1, 2]"],
        "sweep.grid.train.rate is not a spec key",
    );
    refused(
        &["sweep", "mnist-cnn", "--grid", "train.lr=[0.1, -1.0]"],
        "trial 1 (train.lr=-1.0): ",
    );
    refused(
        &[
            "sweep",
            "mnist-cnn",
            "--random",
            "train.lr={ uniform = [0.1, 0.2] }",
        ],
        "random needs samples",
    );
    refused(
        &["sweep", "mnist-cnn", "--seeds", "[1, 1]"],
        "1 is listed twice",
    );
    refused(
        &["sweep", "mnist-cnn", "--seeds", "[1]", "--jobs", "0"],
        "--jobs must be at least 1",
    );
    refused(
        &["sweep", "status", "nope123"],
        "no sweep nope123 in this repository",
    );
    // A spec's [sweep] is validated like any table, for exp run too.
    let spec = dir.join("experiments/mnist-cnn.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}\n[sweep]\nseeds = []\n")).unwrap();
    refused(
        &["sweep", "mnist-cnn"],
        "sweep.seeds: give at least one seed",
    );
    refused(&["run", "mnist-cnn"], "sweep.seeds: give at least one seed");
    assert!(sweep_ids(&dir).is_empty());
    assert_eq!(
        env.git(&dir, &["branch", "--list", "feature/sweep-*"])
            .trim(),
        "",
        "a refused sweep left a branch"
    );
}

/// Waits until `done` holds, for at most a minute.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn interrupted_and_killed_trials_are_resumed_without_duplicates() {
    let env = Env::new();
    let dir = env.init_repo("resume");
    // Six trials, one at a time, each long enough to interrupt.
    let args = vec![
        "sweep",
        "mnist-cnn",
        "--seeds",
        "[1, 2, 3, 4, 5, 6]",
        "--set",
        "data.train_limit=3000",
        "--set",
        "data.test_limit=100",
        "--quiet",
    ];
    let child = env
        .exp_cmd(&dir, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("a sweep directory", || sweep_ids(&dir).len() == 1);
    let id = sweep_ids(&dir).remove(0);
    let branch = format!("feature/sweep-mnist-cnn-{id}");
    wait_until("the first trial's record", || {
        !run_commits(&env, &dir, &branch).is_empty()
    });
    // Ctrl-C: the sweep stops, the running trial commits nothing, the finished ones stay.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", describe(&out));
    let recorded = run_commits(&env, &dir, &branch).len();
    assert!((1..6).contains(&recorded), "{recorded} recorded");
    let status = status_json(&env, &dir, &id);
    let s = states(&status);
    assert_eq!(
        s.iter().filter(|s| *s == "completed").count(),
        recorded,
        "{s:?}"
    );
    assert!(
        s.iter().any(|s| s == "cancelled" || s == "pending"),
        "{s:?}"
    );
    assert!(!s.iter().any(|s| s == "running"), "{s:?}");

    // kill -9 of one trial in the middle of training: status says it failed.
    let victim = s.iter().position(|s| s != "completed").unwrap();
    let mut trial = env
        .exp_cmd(&dir, &["sweep", "trial", &id, &victim.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state_file = dir.join(format!(".git/exp/sweeps/{id}/state/{victim}.toml"));
    wait_until("the trial to start", || {
        std::fs::read_to_string(&state_file).is_ok_and(|t| t.contains("state = \"running\""))
    });
    trial.kill().unwrap();
    trial.wait().unwrap();
    let status = status_json(&env, &dir, &id);
    assert_eq!(status[victim]["state"], "failed", "{status}");
    assert!(
        status[victim]["message"]
            .as_str()
            .unwrap()
            .contains("ended without a record (killed?)"),
        "{status}"
    );

    // A trial never appends to a branch a work tree has checked out (it would go stale).
    let wt = env.path("looking");
    env.git(
        &dir,
        &["worktree", "add", "-q", wt.to_str().unwrap(), &branch],
    );
    let out = env.exp(&dir, &["sweep", "trial", &id, &victim.to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("{branch} is checked out in {}", wt.display())),
        "{}",
        describe(&out)
    );
    env.git(&dir, &["worktree", "remove", wt.to_str().unwrap()]);

    // resume runs exactly the rest; no trial is recorded twice.
    let out = env.exp(&dir, &["sweep", "resume", &id, "--jobs", "2", "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("{} trials without a record", 6 - recorded)),
        "{}",
        describe(&out)
    );
    assert_eq!(states(&status_json(&env, &dir, &id)), vec!["completed"; 6]);
    let commits = run_commits(&env, &dir, &branch);
    assert_eq!(commits.len(), 6);
    let seeds: std::collections::BTreeSet<u64> = commits
        .iter()
        .map(|c| record_at(&env, &dir, c, "mnist-cnn").params.train.seed)
        .collect();
    assert_eq!(seeds.len(), 6, "a trial was recorded twice: {seeds:?}");
}

#[test]
fn two_sweeps_and_a_plain_run_at_once_all_land() {
    let env = Env::new();
    let dir = env.init_repo("concurrent");
    let sweep = |seeds: &str| {
        let mut args = vec![
            "sweep",
            "mnist-cnn",
            "--seeds",
            seeds,
            "--jobs",
            "2",
            "--quiet",
        ];
        args.extend_from_slice(TINY);
        env.exp_cmd(&dir, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = sweep("[1, 2, 3]");
    let b = sweep("[4, 5, 6]");
    // Meanwhile, an ordinary run in the work tree.
    env.git(&dir, &["switch", "-q", "-c", "feature/plain", "develop"]);
    let mut args = vec!["run", "mnist-mlp", "--quiet"];
    args.extend_from_slice(TINY);
    let plain = env.exp(&dir, &args);
    assert!(plain.status.success(), "{}", describe(&plain));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
    let ids = sweep_ids(&dir);
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let commits = run_commits(&env, &dir, &format!("feature/sweep-mnist-cnn-{id}"));
        assert_eq!(commits.len(), 3, "sweep {id}");
    }
    assert_eq!(run_commits(&env, &dir, "feature/plain").len(), 1);
    let out = Command::new("git")
        .current_dir(&dir)
        .args(["fsck", "--no-dangling"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}

/// A single-node Slurm cluster of the project's own script, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "no Slurm cluster for the Slurm test: scripts/slurm.sh start failed (it needs root and Debian's slurm-wlm and munge, which scripts/test.sh installs):\n{}",
            describe(&out)
        );
        Cluster { dir }
    }

    fn conf(&self) -> std::path::PathBuf {
        self.dir.path().join("slurm.conf")
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program)
            .args(args)
            .env("SLURM_CONF", self.conf())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm.sh");
        let _ = Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

#[test]
fn a_slurm_sweep_survives_scancel_and_requeue_and_matches_the_local_one() {
    let cluster = Cluster::start();
    let env = Env::new();
    let dir = env.init_repo("slurm");
    let slurm = |args: &[&str]| {
        env.exp_cmd(&dir, args)
            .env("SLURM_CONF", cluster.conf())
            .output()
            .unwrap()
    };
    let mut args = vec![
        "sweep",
        "mnist-cnn",
        "--seeds",
        "[1, 2, 3, 4, 5, 6]",
        "--executor",
        "slurm",
        "--jobs",
        "2",
    ];
    args.extend_from_slice(TINY);
    let out = slurm(&args);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = stderr(&out);
    let job = err
        .split("submitted Slurm job array ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id: {err}"))
        .to_string();
    let id = sweep_ids(&dir).remove(0);
    let sweep_dir = dir.join(".git/exp/sweeps").join(&id);
    let script = std::fs::read_to_string(sweep_dir.join("job.sbatch")).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-5%2")
            && script.contains(&format!("export EXP_DATA='{}'", env.data.display()))
            && script.contains(&format!("sweep trial {id} \"$SLURM_ARRAY_TASK_ID\"")),
        "{script}"
    );
    // One task cancelled while it waits (two run at once, so the last one is still pending).
    cluster.run("scancel", &[&format!("{job}_5")]);
    let status = |env: &Env| -> serde_json::Value {
        let out = env
            .exp_cmd(&dir, &["sweep", "status", &id, "--json"])
            .env("SLURM_CONF", cluster.conf())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", describe(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let wait_done = |env: &Env| {
        let start = Instant::now();
        loop {
            let s = states(&status(env));
            if !s.iter().any(|s| s == "pending" || s == "running") {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "the array did not finish: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let s = wait_done(&env);
    assert_eq!(
        s,
        [
            "completed",
            "completed",
            "completed",
            "completed",
            "completed",
            "cancelled"
        ]
    );
    // A finished task requeued runs again and records nothing new.
    cluster.run("scontrol", &["requeue", &format!("{job}_0")]);
    std::thread::sleep(Duration::from_millis(500));
    let s = wait_done(&env);
    assert_eq!(s[0], "completed");
    let branch = format!("feature/sweep-mnist-cnn-{id}");
    assert_eq!(run_commits(&env, &dir, &branch).len(), 5);
    // resume submits exactly the cancelled trial.
    let out = slurm(&["sweep", "resume", &id, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr(&out).contains("1 trials without a record: 5"),
        "{}",
        describe(&out)
    );
    let script = std::fs::read_to_string(sweep_dir.join("job.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --array=5%2"), "{script}");
    assert_eq!(states(&status(&env)), vec!["completed"; 6]);
    assert!(sweep_dir.join("logs/5.log").is_file());

    // The same sweep run locally records the same weights, trial by trial.
    let mut local = vec![
        "sweep",
        "mnist-cnn",
        "--seeds",
        "[1, 2, 3, 4, 5, 6]",
        "--jobs",
        "2",
        "--quiet",
    ];
    local.extend_from_slice(TINY);
    env.exp_ok(&dir, &local);
    let local_id = sweep_ids(&dir).into_iter().find(|i| *i != id).unwrap();
    let hashes = |branch: &str| -> std::collections::BTreeMap<u64, String> {
        run_commits(&env, &dir, branch)
            .iter()
            .map(|c| {
                let r = record_at(&env, &dir, c, "mnist-cnn");
                (r.params.train.seed, r.model.tensor_hash)
            })
            .collect()
    };
    let on_slurm = hashes(&branch);
    assert_eq!(on_slurm.len(), 6);
    assert_eq!(
        on_slurm,
        hashes(&format!("feature/sweep-mnist-cnn-{local_id}"))
    );
}

#[test]
fn a_picked_trial_is_what_flow_finish_gates() {
    let env = Env::new();
    let dir = env.init_repo("pick");
    let mut args = vec![
        "sweep",
        "mnist-cnn",
        "--seeds",
        "[1, 2, 3]",
        "--jobs",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(TINY);
    env.exp_ok(&dir, &args);
    let id = sweep_ids(&dir).remove(0);
    let branch = format!("feature/sweep-mnist-cnn-{id}");
    // Finishing the sweep branch as it is would merge whichever trial finished last.
    let out = env.exp(&dir, &["flow", "finish", &branch]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("exp sweep pick {id} --best accuracy")),
        "{}",
        describe(&out)
    );
    let status = status_json(&env, &dir, &id);
    let best = status
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            let acc = |t: &serde_json::Value| t["metrics"]["accuracy"].as_f64().unwrap();
            acc(a)
                .total_cmp(&acc(b))
                .then(b["index"].as_u64().cmp(&a["index"].as_u64()))
        })
        .unwrap()
        .clone();
    let out = env.exp_ok(&dir, &["sweep", "pick", &id, "--best", "accuracy"]);
    assert!(
        out.contains(&format!("picked trial {} (", best["index"])),
        "{out} (best {best})"
    );
    let tip = record_at(&env, &dir, &branch, "mnist-cnn");
    let trial = record_at(&env, &dir, best["commit"].as_str().unwrap(), "mnist-cnn");
    assert_eq!(tip, trial, "the tip's record is not the picked trial's");
    assert_eq!(
        run_commits(&env, &dir, &branch).len(),
        4,
        "three trials and the pick"
    );
    // Picking it again changes nothing; another trial by index moves the tip.
    let again = env.exp_ok(&dir, &["sweep", "pick", &id, "--best", "accuracy"]);
    assert!(again.contains("is already at the tip"), "{again}");
    let out = env.exp(&dir, &["sweep", "pick", &id, "--best", "f1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // flow finish now gates and merges the picked model.
    let out = env.exp(&dir, &["flow", "finish", &branch]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        record_at(&env, &dir, "develop", "mnist-cnn")
            .model
            .tensor_hash,
        trial.model.tensor_hash
    );
}
