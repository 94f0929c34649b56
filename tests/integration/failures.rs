//! Runs that must not be recorded: bad specs, bad data, divergence, signals.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

use crate::common::*;

/// Runs `exp ARGS` expecting `code`, an error mentioning every `needles`, and no change at all
/// to the repository.
fn fails_cleanly(env: &Env, dir: &Path, args: &[&str], code: i32, needles: &[&str]) -> String {
    let before = repo_state(env, dir);
    let out = env.exp(dir, args);
    assert_eq!(out.status.code(), Some(code), "{}", describe(&out));
    let err = stderr(&out);
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        repo_state(env, dir),
        before,
        "a failed run changed the repository"
    );
    err
}

#[test]
fn spec_errors_name_key_file_and_line() {
    let env = Env::new();
    let dir = env.init_repo("spec");
    let spec = include_str!("../../experiments/mnist-cnn.toml");
    std::fs::write(
        dir.join("experiments/typo.toml"),
        spec.replace("epochs = 1", "epochs = 1\nepochz = 2"),
    )
    .unwrap();
    std::fs::write(
        dir.join("experiments/badtype.toml"),
        spec.replace("batch_size = 64", "batch_size = \"64\""),
    )
    .unwrap();
    std::fs::write(
        dir.join("experiments/badmodel.toml"),
        spec.replace("\"seed-cnn\"", "\"resnet9000\""),
    )
    .unwrap();
    env.git(&dir, &["add", "-A"]);
    env.git(&dir, &["commit", "-q", "-m", "specs"]);
    let line_of =
        |needle: &str, text: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;

    let typo_line = line_of(
        "epochz",
        &spec.replace("epochs = 1", "epochs = 1\nepochz = 2"),
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "typo"],
        2,
        &[
            &format!("experiments/typo.toml:{typo_line}"),
            "epochz",
            "unknown field",
        ],
    );
    let type_line = line_of("batch_size", spec);
    fails_cleanly(
        &env,
        &dir,
        &["run", "badtype"],
        2,
        &[
            &format!("experiments/badtype.toml:{type_line}"),
            "train.batch_size",
            "invalid type",
        ],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "badmodel"],
        2,
        &["model.name", "resnet9000", "seed-cnn"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "missing"],
        2,
        &["experiments/missing.toml", "hint:"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.epochs=banana"],
        2,
        &["--set train.epochs=banana", "invalid type"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.epoch=3"],
        2,
        &["--set train.epoch=3", "unknown field `epoch`"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.lr=0"],
        2,
        &["--set train.lr=0", "train.lr", "positive"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.device=cuda"],
        2,
        &["without CUDA support"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--device", "cuda:1"],
        2,
        &[
            "device \"cuda:1\" is not available",
            "without CUDA support",
            "--device cpu",
        ],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--device", "gpu"],
        2,
        &["train.device", "expected auto, cpu, cuda or cuda:N"],
    );
    // Half precision on the CPU (auto falls back to it here) is refused before any data is read.
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.precision=bf16"],
        2,
        &[
            "train.precision = \"bf16\" needs a CUDA device",
            "train.precision=f32",
        ],
    );
    // So is TF32, an opt-in to the GPU's tensor cores, and a precision exp does not know.
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.precision=tf32"],
        2,
        &[
            "train.precision = \"tf32\" needs a CUDA device",
            "train.precision=f32",
        ],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "train.precision=fp8"],
        2,
        &["train.precision", "fp8"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "mnist-cnn", "--set", "model.dropout=0.5"],
        2,
        &["model.dropout", "does not apply"],
    );
    fails_cleanly(
        &env,
        &dir,
        &["run", "../etc/passwd"],
        2,
        &["invalid experiment name"],
    );
    // Overrides are recorded as given, values as resolved.
    let out = quick_run(
        &env,
        &dir,
        "mnist-cnn",
        &[
            "--set",
            "train.optimizer=sgd",
            "--set",
            "train.momentum=0.9",
            "--set",
            "train.lr=0.05",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let r = record_at(&env, &dir, "HEAD", "mnist-cnn");
    assert_eq!(r.params.train.optimizer, exp::spec::OptimizerName::Sgd);
    assert_eq!(r.params.train.momentum, 0.9);
    assert!(r.run.overrides.contains(&"train.momentum=0.9".to_string()));
}

/// A data root holding a damaged copy of MNIST's training images.
fn damaged_root(env: &Env, damage: impl Fn(Vec<u8>) -> Vec<u8>, name: &str) -> std::path::PathBuf {
    let root = env.path(&format!("data-{name}"));
    std::fs::create_dir_all(root.join("mnist")).unwrap();
    for f in [
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        let (_, bytes) = exp::data::read_data_file(&env.data, &format!("mnist/{f}.gz")).unwrap();
        std::fs::write(root.join("mnist").join(f), bytes).unwrap();
    }
    let original = std::fs::read(env.data.join("mnist/train-images-idx3-ubyte.gz"))
        .or_else(|_| std::fs::read(env.data.join("mnist/train-images-idx3-ubyte")))
        .unwrap();
    std::fs::write(
        root.join("mnist/train-images-idx3-ubyte.gz"),
        damage(original),
    )
    .unwrap();
    root
}

#[test]
fn corrupt_and_truncated_idx_are_clear_errors() {
    let env = Env::new();
    let dir = env.init_repo("data");
    let gz = |bytes: Vec<u8>| -> Vec<u8> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            bytes
        } else {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap()
        }
    };
    let raw = |bytes: Vec<u8>| -> Vec<u8> {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz(bytes)[..]), &mut out)
            .unwrap();
        out
    };
    type Damage<'a> = Box<dyn Fn(Vec<u8>) -> Vec<u8> + 'a>;
    let cases: Vec<(&str, Damage<'_>, &str)> = vec![
        (
            "truncated-gzip",
            Box::new(move |b| {
                let g = gz(b);
                g[..g.len() / 2].to_vec()
            }),
            "corrupt or truncated gzip",
        ),
        (
            "truncated-idx",
            Box::new(move |b| {
                let r = raw(b);
                r[..r.len() - 1000].to_vec()
            }),
            "truncated",
        ),
        (
            "bad-magic",
            Box::new(move |b| {
                let mut r = raw(b);
                r[0] = 7;
                r
            }),
            "bad magic",
        ),
        (
            "short-header",
            Box::new(|_| vec![0, 0, 8, 3, 0, 0]),
            "truncated header",
        ),
        (
            "garbage-gzip",
            Box::new(|_| vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            "corrupt or truncated gzip",
        ),
    ];
    for (name, damage, needle) in cases {
        let root = damaged_root(&env, damage, name);
        let before = repo_state(&env, &dir);
        let mut cmd = env.exp_cmd(&dir, &["run", "mnist-cnn", "--quiet"]);
        cmd.env("EXP_DATA", &root);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {}", describe(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle) && err.contains("train-images-idx3-ubyte"),
            "{name}: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert_eq!(repo_state(&env, &dir), before, "{name}");
    }
    // A missing file names the data root and how to fill it.
    let mut cmd = env.exp_cmd(&dir, &["run", "mnist-cnn"]);
    cmd.env("EXP_DATA", env.path("empty-root"));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not found") && stderr(&out).contains("fetch-data.sh"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn diverged_run_records_nothing() {
    let env = Env::new();
    let dir = env.init_repo("nan");
    let args = [
        "run",
        "mnist-cnn",
        "--quiet",
        "--set",
        "data.train_limit=640",
        "--set",
        "data.test_limit=100",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.lr=1e30",
    ];
    fails_cleanly(&env, &dir, &args, 1, &["diverged", "hint:"]);
}

#[test]
fn sigterm_mid_training_records_nothing() {
    let env = Env::new();
    let dir = env.init_repo("sig");
    let before = repo_state(&env, &dir);
    let mut child = env
        .exp_cmd(
            &dir,
            &[
                "run",
                "mnist-cnn",
                "--set",
                "data.train_limit=2000",
                "--set",
                "data.test_limit=200",
                "--set",
                "train.epochs=100",
            ],
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until training is under way (the first epoch line), then terminate.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = first_epoch_line(&mut lines, 2000);
    assert!(first.starts_with("epoch 1/100:"), "{first}");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted by SIGTERM")),
        "{rest:?}"
    );
    assert_eq!(repo_state(&env, &dir), before);
}

#[test]
fn missing_identity_is_found_before_training() {
    let env = Env::new();
    let dir = env.init_repo("anon");
    let before = repo_state(&env, &dir);
    let nobody = env.path("nobody");
    std::fs::create_dir_all(&nobody).unwrap();
    std::fs::write(nobody.join("empty.gitconfig"), "").unwrap();
    let out = env
        .exp_cmd(&dir, &["run", "mnist-cnn"])
        .env("HOME", &nobody)
        .env("XDG_CONFIG_HOME", &nobody)
        .env("GIT_CONFIG_GLOBAL", nobody.join("empty.gitconfig"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no Git identity") && err.contains("git config user.name"),
        "{err}"
    );
    assert!(
        !err.contains("epoch 1"),
        "trained before finding out: {err}"
    );
    assert_eq!(repo_state(&env, &dir), before);
}
