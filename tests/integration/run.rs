//! `exp run`: what a run records, where, and what it leaves alone.

use crate::common::*;

#[test]
fn run_from_develop_records_everything() {
    let env = Env::new();
    let dir = env.init_repo("repo");
    let develop = env.git(&dir, &["rev-parse", "develop"]).trim().to_string();
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);

    // Moved to a feature branch from develop; develop and main untouched.
    let branch = env
        .git(&dir, &["symbolic-ref", "--short", "HEAD"])
        .trim()
        .to_string();
    assert!(branch.starts_with("feature/mnist-cnn-"), "{branch}");
    assert!(
        stdout.contains(&format!(
            "Moved the run from develop to the new branch {branch}"
        )),
        "{stdout}"
    );
    assert_eq!(env.git(&dir, &["rev-parse", "develop"]).trim(), develop);
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD^"]).trim(), develop);

    // One commit with the spec and the run's files, and its tag.
    let record = record_at(&env, &dir, "HEAD", "mnist-cnn");
    let subject = env.git(&dir, &["log", "-1", "--format=%s"]);
    assert_eq!(
        subject.trim(),
        format!(
            "exp run mnist-cnn: accuracy={:.4} loss={:.4}",
            record.metrics.values["accuracy"], record.metrics.values["loss"]
        )
    );
    let files = env.git(&dir, &["show", "--name-only", "--format=", "HEAD"]);
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "experiments/mnist-cnn/history.csv",
            "experiments/mnist-cnn/metrics.toml",
            "experiments/mnist-cnn/model.safetensors",
            "experiments/mnist-cnn/predictions.bin",
        ]
    );
    let tag = format!("run/{}/mnist-cnn/1", branch.replace('/', "-"));
    assert_eq!(env.git(&dir, &["tag", "-l"]).trim(), tag);
    assert_eq!(
        env.git(&dir, &["cat-file", "-t", &tag]).trim(),
        "tag",
        "annotated"
    );
    assert_eq!(
        env.git(&dir, &["rev-parse", &format!("{tag}^{{commit}}")]),
        env.git(&dir, &["rev-parse", "HEAD"])
    );
    assert!(env
        .git(&dir, &["tag", "-l", "--format=%(contents)", &tag])
        .contains("accuracy="));

    // The record: every section of docs/design.md §4.
    assert_eq!(record.run.status, "completed");
    assert_eq!(record.run.experiment, "mnist-cnn");
    assert_eq!(record.run.branch, branch);
    assert_eq!(record.run.parent, develop);
    assert_eq!(record.run.device, "cpu");
    assert_eq!(record.run.id.len(), 64);
    // The candle the build links: Cargo.lock's candle-core, read here as TOML.
    let lock: toml::Table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
    )
    .unwrap()
    .parse()
    .unwrap();
    let locked = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("candle-core"))
        .and_then(|p| p["version"].as_str())
        .unwrap();
    assert_eq!(record.run.candle_version, locked);
    assert_eq!(
        record.params.train.batch_size, 64,
        "resolved spec, defaults included"
    );
    assert_eq!(record.params.data.train_limit, 1000);
    assert_eq!(record.data.train.examples, 1000);
    assert_eq!(record.data.test.examples, 500);
    assert_eq!(record.data.test.classes, 10);
    assert_eq!(record.model.architecture, "seed-cnn");
    assert_eq!(record.model.parameters, 54_410);
    for m in ["accuracy", "loss", "macro_f1"] {
        let meta = &record.metrics.meta[m];
        assert_eq!(meta.eval_set, record.data.test.blake3);
        assert_eq!(meta.samples, 500);
    }
    assert_eq!(
        record.metrics.meta["loss"].direction,
        exp::record::Direction::Min
    );
    assert!(
        record.metrics.values["accuracy"] > 0.7,
        "{:?}",
        record.metrics.values
    );
    assert_eq!(record.eval.confusion.iter().flatten().sum::<u64>(), 500);
    assert_eq!(record.eval.per_class_accuracy.len(), 10);

    // Pointer in Git, byte for byte; object in .git/lfs/objects; real weights in the work tree.
    let pointer = env.git(
        &dir,
        &["show", "HEAD:experiments/mnist-cnn/model.safetensors"],
    );
    assert_eq!(
        pointer,
        format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            record.model.oid, record.model.size
        )
    );
    let oid = &record.model.oid;
    let object = dir
        .join(".git/lfs/objects")
        .join(&oid[0..2])
        .join(&oid[2..4])
        .join(oid);
    let object_bytes = std::fs::read(&object).expect("LFS object");
    assert_eq!(sha256_hex(&object_bytes), *oid);
    assert_eq!(object_bytes.len() as u64, record.model.size);
    assert_eq!(
        std::fs::read(dir.join("experiments/mnist-cnn/model.safetensors")).unwrap(),
        object_bytes
    );
    // The weights load as safetensors with the model's tensors.
    let tensors = candle_core::safetensors::load(
        dir.join("experiments/mnist-cnn/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        vec!["conv.bias", "conv.weight", "fc.bias", "fc.weight"]
    );
    assert_eq!(tensors["fc.weight"].dims(), &[10, 5408]);
    let hash = exp::record::tensor_hash(&tensors.into_iter().collect()).unwrap();
    assert_eq!(hash, record.model.tensor_hash);

    // git-lfs agrees with what exp wrote.
    let ls = env.git(&dir, &["lfs", "ls-files", "--long"]);
    assert_eq!(
        ls.trim(),
        format!("{oid} * experiments/mnist-cnn/model.safetensors")
    );
    let fsck = env.git(&dir, &["lfs", "fsck"]);
    assert!(fsck.contains("Git LFS fsck OK"), "{fsck}");

    // predictions.bin and history.csv.
    let preds = std::fs::read(dir.join("experiments/mnist-cnn/predictions.bin")).unwrap();
    let (labels, predictions, classes) = exp::eval::decode_predictions(&preds).unwrap();
    assert_eq!((labels.len(), classes), (500, 10));
    let correct = labels
        .iter()
        .zip(&predictions)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(correct as f64 / 500.0, record.metrics.values["accuracy"]);
    let history = std::fs::read_to_string(dir.join("experiments/mnist-cnn/history.csv")).unwrap();
    let mut lines = history.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,lr,train_loss,val_loss,val_accuracy,eval_loss,eval_accuracy,seconds,train_seconds")
    );
    assert!(lines.next().unwrap().starts_with("1,0.001,"));
    assert_eq!(lines.next(), None);

    // Nothing left over.
    assert_eq!(
        env.git(&dir, &["status", "--porcelain", "--untracked-files=all"]),
        ""
    );

    // A second run on the feature branch stays there and counts up.
    let out = quick_run(&env, &dir, "mnist-cnn", &["--set", "train.seed=2"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        env.git(&dir, &["symbolic-ref", "--short", "HEAD"]).trim(),
        branch
    );
    assert!(env
        .git(&dir, &["tag", "-l"])
        .contains(&format!("run/{}/mnist-cnn/2", branch.replace('/', "-"))));
    assert_eq!(
        env.git(&dir, &["status", "--porcelain", "--untracked-files=all"]),
        ""
    );
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let env = Env::new();
    let dir = env.init_repo("det");
    env.git(&dir, &["switch", "-q", "-c", "feature/det"]);
    let mut hashes = Vec::new();
    for seed in ["1", "1", "2"] {
        let out = quick_run(
            &env,
            &dir,
            "mnist-cnn",
            &["--set", &format!("train.seed={seed}")],
        );
        assert!(out.status.success(), "{}", describe(&out));
        let r = record_at(&env, &dir, "HEAD", "mnist-cnn");
        hashes.push((
            r.model.tensor_hash,
            r.model.oid,
            r.data.train.blake3,
            r.run.id,
        ));
    }
    assert_eq!(hashes[0], hashes[1], "two runs with seed 1 differ");
    assert_ne!(hashes[0].0, hashes[2].0, "seed 2 gave the same weights");
    assert_ne!(
        hashes[0].2, hashes[2].2,
        "the train subset follows the seed"
    );
}

/// exp's CPU kernels split batch sums into fixed chunks, not per thread: the deeper `cnn`
/// (two conv kinds, pool, dropout, dense + ReLU) trains to the same bits on 1, 2 and 3 threads.
#[test]
fn weights_do_not_depend_on_the_thread_count() {
    let env = Env::new();
    let dir = env.init_repo("threads");
    env.git(&dir, &["switch", "-q", "-c", "feature/threads"]);
    let mut runs = Vec::new();
    for threads in ["1", "2", "3"] {
        let mut args = vec!["run", "mnist-cnn"];
        args.extend_from_slice(QUICK);
        args.extend_from_slice(&["--set", "model.name=cnn", "--set", "data.train_limit=320"]);
        let out = env
            .exp_cmd(&dir, &args)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("run exp");
        assert!(out.status.success(), "{}", describe(&out));
        let r = record_at(&env, &dir, "HEAD", "mnist-cnn");
        assert_eq!(r.run.threads.to_string(), threads);
        runs.push((r.model.tensor_hash, r.metrics.values.get("loss").copied()));
    }
    assert_eq!(runs[0], runs[1], "1 and 2 threads");
    assert_eq!(runs[0], runs[2], "1 and 3 threads");
}

#[test]
fn run_on_develop_carries_uncommitted_changes_elsewhere() {
    let env = Env::new();
    let dir = env.init_repo("wip");
    std::fs::write(dir.join("notes.txt"), "v1\n").unwrap();
    env.git(&dir, &["add", "notes.txt"]);
    env.git(&dir, &["commit", "-q", "-m", "notes"]);
    let develop = env.git(&dir, &["rev-parse", "develop"]).trim().to_string();
    std::fs::write(dir.join("notes.txt"), "v2, not committed\n").unwrap();
    std::fs::write(dir.join("staged.txt"), "staged\n").unwrap();
    env.git(&dir, &["add", "staged.txt"]);
    std::fs::write(dir.join("scratch.txt"), "untracked\n").unwrap();

    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(env
        .git(&dir, &["symbolic-ref", "--short", "HEAD"])
        .starts_with("feature/mnist-cnn-"));
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD^"]).trim(), develop);
    let committed = env.git(&dir, &["show", "--name-only", "--format=", "HEAD"]);
    assert!(
        committed
            .lines()
            .all(|l| l.starts_with("experiments/mnist-cnn/")),
        "{committed}"
    );
    // Still uncommitted, and nothing lost.
    assert_eq!(
        env.git(&dir, &["status", "--porcelain", "--untracked-files=all"]),
        " M notes.txt\nA  staged.txt\n?? scratch.txt\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "v2, not committed\n"
    );
}

#[test]
fn run_from_main_creates_develop_and_refuses_to_clobber() {
    let env = Env::new();
    let dir = env.init_repo("flow");
    // main without develop: the first feature creates develop from main.
    env.git(&dir, &["switch", "-q", "main"]);
    env.git(&dir, &["branch", "-D", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        env.git(&dir, &["rev-parse", "develop"]),
        env.git(&dir, &["rev-parse", "main"])
    );
    assert!(env
        .git(&dir, &["symbolic-ref", "--short", "HEAD"])
        .starts_with("feature/"));

    // develop moves ahead in notes.txt; on main the user edits notes.txt: switching to a branch
    // from develop would overwrite it, so the run stops before training.
    env.git(&dir, &["switch", "-q", "develop"]);
    std::fs::write(dir.join("notes.txt"), "develop\n").unwrap();
    env.git(&dir, &["add", "notes.txt"]);
    env.git(&dir, &["commit", "-q", "-m", "notes on develop"]);
    env.git(&dir, &["switch", "-q", "main"]);
    std::fs::write(dir.join("notes.txt"), "mine\n").unwrap();
    let before = repo_state(&env, &dir);
    let started = std::time::Instant::now();
    let out = quick_run(
        &env,
        &dir,
        "mnist-cnn",
        &["--set", "data.train_limit=50000"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("would overwrite") && err.contains("notes.txt"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert!(!err.contains("epoch 1"), "trained before refusing: {err}");
    assert!(
        started.elapsed().as_secs() < 30,
        "refused only after training"
    );
    assert_eq!(repo_state(&env, &dir), before);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine\n"
    );
}

#[test]
fn lfs_clone_restores_the_exact_weights() {
    let env = Env::new();
    let dir = env.init_repo("origin");
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let branch = env
        .git(&dir, &["symbolic-ref", "--short", "HEAD"])
        .trim()
        .to_string();
    let record = record_at(&env, &dir, "HEAD", "mnist-cnn");

    let clone = env.path("clone");
    let url = format!("file://{}", dir.display());
    let mut cmd = std::process::Command::new("git");
    cmd.args([
        "clone",
        "-q",
        "--branch",
        &branch,
        &url,
        clone.to_str().unwrap(),
    ])
    .env("HOME", &env.home)
    .env("GIT_LFS_SKIP_SMUDGE", "1");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let weights = clone.join("experiments/mnist-cnn/model.safetensors");
    // Without smudging, the checkout holds the pointer.
    assert!(std::fs::read_to_string(&weights)
        .unwrap()
        .starts_with("version https://git-lfs.github.com/spec/v1"));
    // The git first on PATH here reads no system gitconfig naming git-lfs (docs/design.md §6): a clone
    // needs git-lfs installed for it, as `exp init` does for the repositories it makes.
    env.git(&clone, &["lfs", "install", "--local"]);
    env.git(&clone, &["lfs", "pull"]);
    let bytes = std::fs::read(&weights).unwrap();
    assert_eq!(sha256_hex(&bytes), record.model.oid);
    assert_eq!(
        bytes,
        std::fs::read(dir.join("experiments/mnist-cnn/model.safetensors")).unwrap()
    );
    assert_eq!(env.git(&clone, &["status", "--porcelain"]), "");
}

#[test]
fn cifar10_sample_trains_end_to_end() {
    let env = Env::new();
    let dir = env.init_repo("cifar");
    std::fs::write(
        dir.join("experiments/cifar-smoke.toml"),
        format!(
            "[model]\nname = \"mlp\"\nhidden = [32]\n\n{CIFAR_SAMPLE_DATA}\n[train]\nbatch_size = 8\nepochs = 2\n"
        ),
    )
    .unwrap();
    let out = env.exp(&dir, &["run", "cifar-smoke", "--quiet"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = record_at(&env, &dir, "HEAD", "cifar-smoke");
    assert_eq!(
        (
            r.data.train.examples,
            r.data.test.examples,
            r.data.test.classes
        ),
        (20, 20, 10)
    );
    assert_eq!(r.model.parameters, 3072 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(r.training.epochs, 2);
    assert_eq!(r.training.steps, 6);
}

/// The learning rate of every epoch follows the schedule (warm-up, then cosine) and is in
/// history.csv; label smoothing trains and is recorded.
#[test]
fn schedule_and_label_smoothing() {
    let env = Env::new();
    let dir = env.init_repo("schedule");
    env.git(&dir, &["switch", "-q", "-c", "feature/schedule", "develop"]);
    let out = quick_run(
        &env,
        &dir,
        "mnist-cnn",
        &[
            "--set",
            "train.epochs=3",
            "--set",
            "train.schedule=cosine",
            "--set",
            "train.warmup_epochs=1",
            "--set",
            "train.label_smoothing=0.1",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let history = std::fs::read_to_string(dir.join("experiments/mnist-cnn/history.csv")).unwrap();
    let lrs: Vec<f64> = history
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    // lr 1e-3: warm-up epoch 1 at lr/2, then cosine over epochs 2–3 (T = 2): lr, lr/2.
    let expected = [0.0005, 0.001, 0.0005];
    assert_eq!(lrs.len(), 3, "{history}");
    for (got, want) in lrs.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
    let record = record_at(&env, &dir, "HEAD", "mnist-cnn");
    assert_eq!(record.params.train.label_smoothing, 0.1);
    assert_eq!(record.params.train.schedule, exp::spec::Schedule::Cosine);
    let out = quick_run(&env, &dir, "mnist-cnn", &["--set", "train.warmup_epochs=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("train.warmup_epochs"),
        "{}",
        describe(&out)
    );
}

/// When stderr is not a terminal (CI, pipes, Slurm logs) a run is never silent: a line when the
/// data starts and ends loading, one every EXP_PROGRESS_SECONDS (10 s by default) with step,
/// loss, throughput and ETA, one per epoch; --quiet prints none of them.
#[test]
fn progress_lines_without_a_terminal() {
    let env = Env::new();
    let dir = env.init_repo("progress");
    env.git(&dir, &["switch", "-q", "-c", "feature/p", "develop"]);
    let out = env
        .exp_cmd(
            &dir,
            &[
                "run",
                "mnist-cnn",
                "--set",
                "data.train_limit=640",
                "--set",
                "data.test_limit=100",
            ],
        )
        .env("EXP_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines[0], "loading data", "{err}");
    assert!(
        lines[1].starts_with("loaded data: 640 train, 100 eval examples ("),
        "{err}"
    );
    // 640 examples in batches of 64: ten steps, each with its line (interval 0).
    let steps: Vec<&&str> = lines.iter().filter(|l| l.contains(" step ")).collect();
    assert_eq!(steps.len(), 10, "{err}");
    assert!(
        steps[0].starts_with("epoch 1/1 step 1/10: loss ")
            && steps[0].contains(" img/s, ETA ")
            && steps[9].starts_with("epoch 1/1 step 10/10: loss ")
            && steps[9].ends_with("ETA 0s"),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("epoch 1/1: train_loss ")),
        "{err}"
    );
    let quiet = quick_run(&env, &dir, "mnist-cnn", &["--set", "train.seed=3"]);
    assert!(quiet.status.success(), "{}", describe(&quiet));
    assert!(
        !stderr(&quiet).contains("loading data"),
        "{}",
        describe(&quiet)
    );
}

/// Shell completions and the man page come from the one clap definition: every subcommand is in
/// them, and bash accepts the script.
#[test]
fn completions_and_man_page() {
    let env = Env::new();
    let dir = env.tmp.path();
    let bash = env.exp_ok(dir, &["completions", "bash"]);
    let script = env.path("exp.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", describe(&check));
    for sub in ["apply", "ls", "sweep", "verify", "gate", "completions"] {
        assert!(
            bash.contains(&format!("cmd=\"exp__subcmd__{sub}\"")),
            "no {sub} in the bash completions"
        );
    }
    let zsh = env.exp_ok(dir, &["completions", "zsh"]);
    assert!(
        zsh.starts_with("#compdef exp"),
        "{}",
        &zsh[..zsh.len().min(200)]
    );
    let man = env.exp_ok(dir, &["man"]);
    assert!(
        man.contains(".TH exp 1") && man.contains("apply"),
        "{}",
        &man[..man.len().min(400)]
    );
    let out = env.exp(dir, &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
