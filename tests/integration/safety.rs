//! A failed run never destroys user work (issue 15 §2): one committing command per work tree,
//! everything that could refuse the commit checked before training, a refused commit keeps the
//! trained run, an untagged run commit is tagged by the next run, no write through a symlink,
//! Git's identity variables, `exp init` that fails or is interrupted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use crate::common::*;

/// Work in progress the tests check survives: a modified tracked file, an untracked one.
fn work_in_progress(dir: &Path) -> (String, String) {
    std::fs::write(dir.join("experiments/mnist-mlp.toml"), "# my edit\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "untracked notes\n").unwrap();
    (
        std::fs::read_to_string(dir.join("experiments/mnist-mlp.toml")).unwrap(),
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
    )
}

fn still_there(dir: &Path, wip: &(String, String)) {
    assert_eq!(
        std::fs::read_to_string(dir.join("experiments/mnist-mlp.toml")).unwrap(),
        wip.0
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        wip.1
    );
}

/// A run that trains for a while, its stderr piped; returns once its first epoch started.
fn long_run(
    env: &Env,
    dir: &Path,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = env
        .exp_cmd(
            dir,
            &[
                "run",
                "mnist-cnn",
                "--set",
                "data.train_limit=3000",
                "--set",
                "data.test_limit=200",
                "--set",
                "train.epochs=3",
            ],
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = first_epoch_line(&mut lines, 3000);
    assert!(first.starts_with("epoch 1/3:"), "{first}");
    (child, lines)
}

#[test]
fn one_committing_command_per_work_tree() {
    let env = Env::new();
    let dir = env.init_repo("lock");
    env.git(&dir, &["switch", "-q", "-c", "feature/a", "develop"]);
    let (mut child, lines) = long_run(&env, &dir);
    // A second run in the same work tree is refused at once, naming the first.
    let out = env.exp(&dir, &["run", "mnist-mlp", "--set", "data.train_limit=100"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "another exp command is committing in this work tree: pid {} on host ",
            child.id()
        )) && stderr(&out).contains("running \"exp run mnist-cnn\""),
        "{}",
        describe(&out)
    );
    let out = env.exp(&dir, &["flow", "finish"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("another exp command is committing"),
        "{}",
        describe(&out)
    );
    // Another work tree of the same repository runs meanwhile.
    let other = env.path("other");
    env.git(
        &dir,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature/b",
            other.to_str().unwrap(),
            "develop",
        ],
    );
    let out = quick_run(&env, &other, "mnist-mlp", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let _: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success());
    assert!(
        !dir.join(".git/exp/worktree.lock").exists(),
        "the lock was left behind"
    );

    // A lock a killed exp left behind (its pid is dead on this host) is removed by the next run.
    let (mut child, _lines) = long_run(&env, &dir);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.join(".git/exp/worktree.lock").exists());
    let out = quick_run(&env, &dir, "mnist-mlp", &[]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn what_would_refuse_the_commit_is_found_before_training() {
    let env = Env::new();
    let dir = env.init_repo("refs");
    env.git(&dir, &["switch", "-q", "-c", "feature/x", "develop"]);
    let spec = std::fs::read_to_string(dir.join("experiments/mnist-mlp.toml")).unwrap();
    let refused = |name: &str, says: &str| {
        std::fs::write(dir.join(format!("experiments/{name}.toml")), &spec).unwrap();
        let before = lfs_objects(&dir);
        let out = quick_run(&env, &dir, name, &[]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", describe(&out));
        assert!(stderr(&out).contains(says), "{name}: {}", describe(&out));
        assert!(
            stderr(&out).contains("nothing was trained"),
            "{name}: {}",
            describe(&out)
        );
        assert_eq!(lfs_objects(&dir), before, "{name}: trained anyway");
        std::fs::remove_file(dir.join(format!("experiments/{name}.toml"))).unwrap();
    };
    refused("a..b", "is not a valid Git ref name");
    refused("x.lock", "is not a valid Git ref name");
    // On develop the run's branch is feature/<name>-<run id>: too long a file name for a ref.
    env.git(&dir, &["switch", "-q", "develop"]);
    refused(
        &"n".repeat(246),
        "has a path component longer than a file name may be",
    );
    env.git(&dir, &["switch", "-q", "feature/x"]);
    // Git's lock files.
    for lock in ["index.lock", "HEAD.lock", "refs/heads/feature/x.lock"] {
        let path = dir.join(".git").join(lock);
        std::fs::write(&path, "").unwrap();
        let out = quick_run(&env, &dir, "mnist-mlp", &[]);
        assert_eq!(out.status.code(), Some(2), "{lock}: {}", describe(&out));
        assert!(
            stderr(&out).contains(&format!("{} exists: another Git process", path.display()))
                && stderr(&out).contains(&format!("remove {}", path.display())),
            "{lock}: {}",
            describe(&out)
        );
        std::fs::remove_file(&path).unwrap();
    }
    // A committed symlink where the outputs go.
    std::os::unix::fs::symlink(env.path("outside"), dir.join("experiments/mnist-mlp")).unwrap();
    env.git(&dir, &["add", "experiments/mnist-mlp"]);
    env.git(&dir, &["commit", "-q", "-m", "a link"]);
    let out = quick_run(&env, &dir, "mnist-mlp", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("experiments/mnist-mlp is a symbolic link")
            && stderr(&out).contains("never writes through a link"),
        "{}",
        describe(&out)
    );
    assert!(!env.path("outside").exists());
}

#[test]
fn a_refused_commit_keeps_the_run_and_a_missing_tag_is_made_by_the_next_run() {
    let env = Env::new();
    let dir = env.init_repo("keep");
    env.git(&dir, &["switch", "-q", "-c", "feature/k", "develop"]);
    let wip = work_in_progress(&dir);
    let head = env.git(&dir, &["rev-parse", "HEAD"]);

    // The branch's ref lock appears while the run trains: the commit is refused after training.
    let (mut child, lines) = long_run(&env, &dir);
    let lock = dir.join(".git/refs/heads/feature/k.lock");
    std::fs::write(&lock, "").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(2), "{rest:?}");
    std::fs::remove_file(&lock).unwrap();
    let text = rest.join("\n");
    let kept = text
        .split("the trained run is kept as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    assert!(kept.starts_with("refs/exp/failed/"), "{text}");
    assert!(
        text.contains(&format!("git switch -c feature/recovered {kept}")),
        "{text}"
    );
    // The user's branch, work and index are as they were; the run is recoverable.
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD"]), head);
    still_there(&dir, &wip);
    let record = record_at(&env, &dir, &kept, "mnist-cnn");
    assert_eq!(record.run.experiment, "mnist-cnn");

    // A tag that cannot be written after the commit: the commit stays, the next run tags it.
    let blocker = dir.join(".git/refs/tags/run/feature-k");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("but its run tag could not be written")
            && stderr(&out)
                .contains("the next exp command (exp run, exp log, exp flow) tags the run commit"),
        "{}",
        describe(&out)
    );
    let committed = env.git(&dir, &["rev-parse", "HEAD"]);
    assert_ne!(committed, head, "the run commit was undone");
    still_there(&dir, &wip);
    std::fs::remove_file(&blocker).unwrap();
    let out = quick_run(&env, &dir, "mnist-cnn", &["--set", "train.seed=2"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        env.git(&dir, &["rev-parse", "run/feature-k/mnist-cnn/1^{commit}"]),
        committed
    );
    assert_eq!(
        env.git(&dir, &["rev-parse", "run/feature-k/mnist-cnn/2^{commit}"]),
        env.git(&dir, &["rev-parse", "HEAD"])
    );
    still_there(&dir, &wip);
}

#[test]
fn git_identity_variables_and_model_get_paths() {
    let env = Env::new();
    let dir = env.init_repo("who");
    env.git(&dir, &["switch", "-q", "-c", "feature/who", "develop"]);
    let mut args = vec!["run", "mnist-mlp"];
    args.extend_from_slice(QUICK);
    let out = env
        .exp_cmd(&dir, &args)
        .env("GIT_AUTHOR_NAME", "Ada Author")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_AUTHOR_DATE", "1700000000 +0100")
        .env("GIT_COMMITTER_NAME", "Bob Committer")
        .env("GIT_COMMITTER_EMAIL", "bob@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        env.git(
            &dir,
            &[
                "log",
                "-1",
                "--format=%an <%ae> %ad|%cn <%ce>",
                "--date=raw"
            ]
        )
        .trim(),
        "Ada Author <ada@example.com> 1700000000 +0100|Bob Committer <bob@example.com>"
    );
    let out = env
        .exp_cmd(&dir, &args)
        .env("GIT_AUTHOR_DATE", "yesterday-ish")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("GIT_AUTHOR_DATE=\"yesterday-ish\" is not a date"),
        "{}",
        describe(&out)
    );

    // Released weights are never written into the git dir or through a link.
    env.git(&dir, &["switch", "-q", "develop"]);
    env.git(
        &dir,
        &["merge", "-q", "--no-ff", "feature/who", "-m", "merge"],
    );
    env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    for out_path in [".git/hooks/pre-commit", ".git/objects/evil"] {
        let out = env.exp(
            &dir,
            &["model", "get", "mnist-mlp@1.0.0", "--out", out_path],
        );
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            stderr(&out).contains("is inside the repository's git dir"),
            "{}",
            describe(&out)
        );
    }
    std::os::unix::fs::symlink(env.path("elsewhere"), dir.join("link.safetensors")).unwrap();
    let out = env.exp(
        &dir,
        &[
            "model",
            "get",
            "mnist-mlp@1.0.0",
            "--out",
            "link.safetensors",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!env.path("elsewhere").exists());
}

#[test]
fn a_failed_init_leaves_the_directory_as_it_was_and_a_rerun_finishes() {
    let env = Env::new();
    let nobody = env.path("nobody");
    std::fs::create_dir_all(&nobody).unwrap();
    std::fs::write(
        nobody.join(".gitconfig"),
        "[init]\n\tdefaultBranch = master\n",
    )
    .unwrap();
    let anonymous = |args: &[&str]| {
        env.exp_cmd(env.tmp.path(), args)
            .env("HOME", &nobody)
            .env("GIT_CONFIG_GLOBAL", nobody.join(".gitconfig"))
            .env_remove("EMAIL")
            .output()
            .unwrap()
    };
    let fresh = env.path("fresh");
    let out = anonymous(&["init", fresh.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no Git identity"),
        "{}",
        describe(&out)
    );
    assert!(!fresh.exists(), "a failed init left {}", fresh.display());
    // An existing directory with the user's file: left exactly as it was.
    let mine = env.path("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("data.csv"), "a,b\n").unwrap();
    let out = anonymous(&["init", mine.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let left: Vec<String> = std::fs::read_dir(&mine)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["data.csv"]);
    // An init interrupted after writing its files (as a kill would leave it): the rerun commits
    // them and sets up the branches.
    let half = env.path("half");
    env.git(env.tmp.path(), &["init", "-q", half.to_str().unwrap()]);
    std::fs::create_dir_all(half.join("experiments")).unwrap();
    for (name, text) in exp::init::EXAMPLES {
        std::fs::write(half.join("experiments").join(name), text).unwrap();
    }
    std::fs::write(
        half.join(".gitattributes"),
        format!("{}\n", exp::init::LFS_ATTRIBUTES),
    )
    .unwrap();
    env.exp_ok(env.tmp.path(), &["init", half.to_str().unwrap()]);
    assert_eq!(env.git(&half, &["status", "--porcelain"]).trim(), "");
    assert!(env
        .git(&half, &["ls-files"])
        .contains("experiments/mnist-cnn.toml"));
    assert_eq!(
        env.git(&half, &["branch", "--format=%(refname:short)"])
            .trim(),
        "develop\nmain"
    );
}

/// A real MNIST subset copied into a data root of the test's, its training label of example 5
/// set to `label` (the images untouched: never made-up images).
fn relabelled_root(env: &Env, label: u8) -> std::path::PathBuf {
    let root = env.path(&format!("data-label-{label}"));
    std::fs::create_dir_all(root.join("mnist")).unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        let (_, mut bytes) =
            exp::data::read_data_file(&env.data, &format!("mnist/{f}.gz")).unwrap();
        if f == "train-labels-idx1-ubyte" {
            bytes[8 + 5] = label; // after the 8-byte IDX header
        }
        std::fs::write(root.join("mnist").join(f), bytes).unwrap();
    }
    root
}

#[test]
fn a_label_outside_the_classes_is_an_error_not_a_class() {
    let env = Env::new();
    let dir = env.init_repo("labels");
    let root = relabelled_root(&env, 200);
    let mut args = vec!["run", "mnist-mlp"];
    args.extend_from_slice(QUICK);
    let before = lfs_objects(&dir);
    let out = env
        .exp_cmd(&dir, &args)
        .env("EXP_DATA", &root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{}: the label of example 5 is 200, outside the data set's 10 classes (0–9); if the data set has more classes, set data.num_classes",
            root.join("mnist/train-labels-idx1-ubyte").display()
        )),
        "{}",
        describe(&out)
    );
    assert_eq!(lfs_objects(&dir), before);
    // A data set that really has more classes says so, and trains a model with that many.
    let mut args = args.clone();
    args.extend_from_slice(&["--set", "data.num_classes=201"]);
    let out = env
        .exp_cmd(&dir, &args)
        .env("EXP_DATA", &root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let record = record_at(&env, &dir, "HEAD", "mnist-mlp");
    assert_eq!(record.eval.classes, 201);
    // Out of range values are spec errors.
    let out = env.exp(&dir, &["run", "mnist-mlp", "--set", "data.num_classes=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("data.num_classes: must be between 2 and 256"),
        "{}",
        describe(&out)
    );
}

#[test]
fn idx_is_decompressed_only_as_far_as_its_header_says() {
    let env = Env::new();
    let dir = env.init_repo("bomb");
    // Real MNIST training labels, gzipped with a megabyte of zeros after them in the stream.
    let root = relabelled_root(&env, 3);
    let labels = root.join("mnist/train-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&labels).unwrap();
    let size = bytes.len();
    bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    std::fs::remove_file(&labels).unwrap();
    std::fs::write(
        root.join("mnist/train-labels-idx1-ubyte.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    let mut args = vec!["run", "mnist-mlp"];
    args.extend_from_slice(QUICK);
    let out = env
        .exp_cmd(&dir, &args)
        .env("EXP_DATA", &root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "train-labels-idx1-ubyte.gz: the gzip stream holds more than the {size} bytes its IDX header implies"
        )),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_pointer_whose_size_disagrees_with_its_object_is_reported() {
    let env = Env::new();
    let dir = env.init_repo("size");
    env.git(&dir, &["switch", "-q", "-c", "feature/size", "develop"]);
    let out = quick_run(&env, &dir, "mnist-mlp", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let record = record_at(&env, &dir, "HEAD", "mnist-mlp");
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        record.model.oid,
        record.model.size + 1
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
                "100644,{},experiments/mnist-mlp/model.safetensors",
                blob.trim()
            ),
        ],
    );
    env.git(&dir, &["commit", "-q", "-m", "a pointer edited by hand"]);
    let listed = env.exp_ok(&dir, &["lfs", "ls"]);
    assert!(
        listed.contains("size-mismatch")
            && listed.contains("experiments/mnist-mlp/model.safetensors"),
        "{listed}"
    );
    let out = env.exp(&dir, &["lfs", "fsck"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "experiments/mnist-mlp/model.safetensors: pointer whose size disagrees with its object"
        ),
        "{}",
        describe(&out)
    );
    // The gate refuses it too (the record's size is the object's).
    let out = env.exp(&dir, &["gate", "--base", "develop"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("the pointer was edited"),
        "{}",
        describe(&out)
    );
}

#[test]
fn exp_push_with_git_lfs_never_uploads_a_corrupt_object() {
    let env = Env::new();
    let dir = env.init_repo("corrupt-push");
    env.git(&dir, &["switch", "-q", "-c", "feature/push", "develop"]);
    let out = quick_run(&env, &dir, "mnist-mlp", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let oid = record_at(&env, &dir, "HEAD", "mnist-mlp").model.oid;
    let object = dir
        .join(".git/lfs/objects")
        .join(&oid[..2])
        .join(&oid[2..4])
        .join(&oid);
    let mut bytes = std::fs::read(&object).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&object, &bytes).unwrap();
    let remote = env.path("remote.git");
    env.git(
        env.tmp.path(),
        &["init", "-q", "--bare", remote.to_str().unwrap()],
    );
    env.git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
    let out = env.exp(&dir, &["push"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the LFS object {oid} of experiments/mnist-mlp/model.safetensors is corrupt in the local store"
        )) && stderr(&out).contains("nothing was pushed"),
        "{}",
        describe(&out)
    );
    assert!(!remote
        .join("lfs/objects")
        .join(&oid[..2])
        .join(&oid[2..4])
        .join(&oid)
        .exists());
    assert_eq!(
        env.git(&remote, &["for-each-ref"]).trim(),
        "",
        "refs were pushed"
    );
    assert!(!object.exists(), "the corrupt object is still in the store");
}

/// A run started on develop is killed (SIGKILL, from a `git` shim) right after `git switch -c`
/// created and checked out its feature branch, before anything was committed on it. The next
/// exp run finds the journal, switches back to develop, deletes the empty branch, says so, and
/// records its own run on a new branch; the user's work is untouched throughout.
#[test]
fn a_run_killed_after_its_branch_switch_leaves_no_empty_feature_branch() {
    let env = Env::new();
    let dir = env.init_repo("switch-kill");
    let wip = work_in_progress(&dir);
    let develop = env.git(&dir, &["rev-parse", "develop"]);

    // A `git` that runs the real one, then kills its caller when it was a branch switch.
    let mut cmd = with_git_shim(
        &env,
        env.exp_cmd(&dir, &["run", "mnist-cnn"]),
        "\"$REAL_GIT\" \"$@\"\nrc=$?\ncase \"$*\" in *'switch --quiet -c'*) kill -9 $PPID;; esac\nexit $rc\n",
    );
    cmd.args(QUICK);
    let out = cmd.output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{}",
        describe(&out)
    );
    // What the kill left: an empty feature branch, checked out.
    let killed_on = env
        .git(&dir, &["branch", "--show-current"])
        .trim()
        .to_string();
    assert!(killed_on.starts_with("feature/mnist-cnn-"), "{killed_on}");
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD"]), develop);
    still_there(&dir, &wip);

    let out = quick_run(&env, &dir, "mnist-cnn", &["--set", "train.seed=7"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!(
            "note: an earlier exp run of mnist-cnn was killed before committing on {killed_on}: switched back to develop and removed the empty branch"
        )),
        "{}",
        describe(&out)
    );
    let branches = env.git(
        &dir,
        &["branch", "--list", "feature/*", "--format=%(refname:short)"],
    );
    let now_on = env
        .git(&dir, &["branch", "--show-current"])
        .trim()
        .to_string();
    assert_eq!(branches.trim(), now_on, "only the new run's branch exists");
    assert_ne!(now_on, killed_on);
    assert_eq!(env.git(&dir, &["rev-parse", "develop"]), develop);
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD^"]), develop);
    assert!(!dir.join(".git/exp/switch.toml").exists());
    still_there(&dir, &wip);
}

/// `cmd` with a `git` first on its PATH that runs `body` (a shell script; `$REAL_GIT` is the
/// real git).
fn with_git_shim(env: &Env, mut cmd: std::process::Command, body: &str) -> std::process::Command {
    let real_git = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let shim = env.path("shim");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(
        shim.join("git"),
        format!("#!/bin/sh\nREAL_GIT={}\n{body}", real_git.trim()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shim.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = cmd
        .get_envs()
        .find(|(k, _)| *k == "PATH")
        .and_then(|(_, v)| v.map(|v| v.to_os_string()))
        .unwrap();
    let mut dirs = vec![shim];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    cmd
}

/// The branch switch after training fails (a `git` that refuses it): the trained run is kept
/// under refs/exp/failed/, the error says how to get it, and the user's branch, work and
/// branches are as they were.
#[test]
fn a_failed_branch_switch_after_training_keeps_the_run() {
    let env = Env::new();
    let dir = env.init_repo("switch-fail");
    let wip = work_in_progress(&dir);
    let develop = env.git(&dir, &["rev-parse", "develop"]);
    let branches = env.git(&dir, &["branch", "--list"]);
    let mut cmd = with_git_shim(
        &env,
        env.exp_cmd(&dir, &["run", "mnist-cnn"]),
        "case \"$*\" in *'switch --quiet -c'*) echo 'fatal: refused by the test' >&2; exit 128;; esac\nexec \"$REAL_GIT\" \"$@\"\n",
    );
    cmd.args(QUICK);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let text = stderr(&out);
    assert!(text.contains("fatal: refused by the test"), "{text}");
    let kept = text
        .split("the trained run is kept as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();
    assert!(kept.starts_with("refs/exp/failed/"), "{text}");
    assert!(
        text.contains(&format!(
            "hint: recover the run with `git switch -c feature/recovered {kept}`"
        )),
        "{text}"
    );
    let record = record_at(&env, &dir, &kept, "mnist-cnn");
    assert_eq!(record.run.parent, develop.trim());
    assert_eq!(env.git(&dir, &["rev-parse", &format!("{kept}^")]), develop);
    assert_eq!(env.git(&dir, &["branch", "--list"]), branches);
    assert_eq!(env.git(&dir, &["rev-parse", "HEAD"]), develop);
    assert!(!dir.join(".git/exp/switch.toml").exists());
    still_there(&dir, &wip);
}

/// A run started on main whose spec differs on develop (where its feature branch would start)
/// is refused before training: its commit would hold a spec it did not train.
#[test]
fn a_run_from_main_whose_spec_differs_on_develop_is_refused_before_training() {
    let env = Env::new();
    let dir = env.init_repo("spec-differs");
    let spec = dir.join("experiments/mnist-cnn.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("epochs = ", "# tuned on develop\nepochs = "),
    )
    .unwrap();
    env.git(&dir, &["commit", "-qam", "tune on develop"]);
    env.git(&dir, &["switch", "-q", "main"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("error: experiments/mnist-cnn.toml differs between main and develop: a run started on main is recorded on a feature branch from develop, whose spec is not the one it would train\nhint: nothing was trained; run it from develop (`git switch develop`) or from a feature branch"),
        "{}",
        describe(&out)
    );
    assert!(!stderr(&out).contains("epoch 1"), "{}", describe(&out));
    assert_eq!(env.git(&dir, &["branch", "--show-current"]).trim(), "main");
}

/// `exp apply` killed between its commit and bringing the work tree along (a `git` shim kills
/// exp when it runs `git restore`): the next committing command finishes it, says so, and the
/// tree is clean with the applied run's files.
#[test]
fn an_apply_killed_after_its_commit_is_finished_by_the_next_command() {
    let env = Env::new();
    let dir = runs_on_a_feature_branch(&env, "apply-kill", "feature/k", &["1000", "300"]);
    let mut cmd = with_git_shim(
        &env,
        env.exp_cmd(&dir, &["apply", "run/feature-k/mnist-cnn/1"]),
        "case \"$*\" in *'restore --source=HEAD'*) kill -9 $PPID; exit 1;; esac\nexec \"$REAL_GIT\" \"$@\"\n",
    );
    let out = cmd.output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "{}",
        describe(&out)
    );
    // The commit is made, the work tree still holds run 2's files.
    assert!(env
        .git(&dir, &["log", "-1", "--format=%s"])
        .starts_with("exp apply run/feature-k/mnist-cnn/1:"));
    assert_ne!(env.git(&dir, &["status", "--porcelain"]), "");
    let out = env.exp(&dir, &["apply", "run/feature-k/mnist-cnn/1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("note: an earlier exp apply of mnist-cnn was killed after its commit: its files are now those of the tip"),
        "{}",
        describe(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already holds"),
        "{}",
        describe(&out)
    );
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    let record = record_at(&env, &dir, "run/feature-k/mnist-cnn/1", "mnist-cnn");
    let weights = std::fs::read(dir.join("experiments/mnist-cnn/model.safetensors")).unwrap();
    assert_eq!(sha256_hex(&weights), record.model.oid);
    assert!(!dir.join(".git/exp/apply.toml").exists());
}
