//! `exp export`: every model of the zoo written as ONNX and as safetensors + a PyTorch module,
//! each read back by another implementation (candle-onnx in this process, onnxruntime and
//! Debian's PyTorch through tests/python/export_check.py) and checked against exp's own logits
//! on the first 1,000 test images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::common::{assert_exit_2, describe, quick_run, stderr, Env};

/// Images the exported models are checked on.
const CHECKED: usize = 1000;

/// The first `CHECKED` test images of a run's data as pixels / 255, and exp's logits for them.
pub struct Reference {
    pub pixels: Vec<f32>,
    pub logits: Vec<f32>,
    pub shape: [usize; 3],
    pub classes: usize,
    pub artifact: exp::artifact::Artifact,
}

/// Loads the model `source` names in `dir` through exp's library and computes its logits.
pub fn reference(env: &Env, dir: &Path, source: &str) -> Reference {
    let repo = git2::Repository::open(dir).unwrap();
    let artifact = exp::artifact::load(&repo, source, None, &Device::Cpu, Some(&env.data))
        .unwrap_or_else(|e| panic!("load {source}: {e}"));
    let record = &artifact.record;
    let mut spec = record.params.data.clone();
    spec.test_limit = CHECKED;
    let load = |spec: &exp::spec::DataSpec| {
        exp::data::Dataset::load(
            &env.data,
            spec,
            record.params.train.seed,
            &|_| "test".into(),
            None,
        )
        .unwrap()
    };
    let first: Vec<u32> = (0..CHECKED as u32).collect();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let data = load(&spec);
    data.gather(&data.test, &first, &mut images, &mut labels);
    let s = data.shape;
    let xs = Tensor::from_vec(
        images,
        (CHECKED, s.channels, s.height, s.width),
        &Device::Cpu,
    )
    .unwrap();
    let logits = artifact
        .model
        .forward(&xs, &mut exp::model::Mode::Eval)
        .unwrap();
    let classes = logits.dims()[1];
    // The same images unnormalised: what every exported model takes.
    spec.normalize = None;
    let raw = load(&spec);
    let mut pixels = Vec::new();
    raw.gather(&raw.test, &first, &mut pixels, &mut labels);
    Reference {
        pixels,
        logits: logits.flatten_all().unwrap().to_vec1().unwrap(),
        shape: [s.channels, s.height, s.width],
        classes,
        artifact,
    }
}

fn argmax_rows(values: &[f32], classes: usize) -> Vec<usize> {
    values
        .chunks(classes)
        .map(|row| {
            (0..classes)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Reads an exported ONNX file back with candle-onnx and evaluates it on the reference images.
fn check_with_candle_onnx(path: &Path, r: &Reference) {
    let model = candle_onnx::read_file(path).unwrap();
    let [c, h, w] = r.shape;
    let xs = Tensor::from_vec(r.pixels.clone(), (CHECKED, c, h, w), &Device::Cpu).unwrap();
    let outputs =
        candle_onnx::simple_eval(&model, HashMap::from([("pixels".to_string(), xs)])).unwrap();
    let logits: Vec<f32> = outputs["logits"].flatten_all().unwrap().to_vec1().unwrap();
    let diff = max_abs_diff(&logits, &r.logits);
    assert!(diff <= 1e-4, "candle-onnx logits differ by {diff}");
    assert_eq!(
        argmax_rows(&logits, r.classes),
        argmax_rows(&r.logits, r.classes),
        "candle-onnx predicts other labels"
    );
}

/// The venv python of scripts/py-tools.sh, or None (said on stderr) when scripts/test.sh could
/// not install it.
pub fn python_tools() -> Option<PathBuf> {
    let python =
        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/exp/py-venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    if std::env::var_os("EXP_SKIP_PYTHON_CHECKS").is_some() {
        eprintln!("SKIPPED: the onnxruntime and PyTorch checks of exp export (scripts/py-tools.sh could not install them)");
        return None;
    }
    panic!("no onnxruntime / PyTorch venv at {}: run the tests with scripts/test.sh, which runs scripts/py-tools.sh", python.display());
}

/// Runs tests/python/export_check.py on an exported file; returns its output lines.
fn check_in_python(env: &Env, mode: &str, model: &Path, r: &Reference) -> Option<String> {
    let python = python_tools()?;
    let as_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let pixels = env.path("pixels.f32");
    let logits = env.path("logits.f32");
    std::fs::write(&pixels, as_bytes(&r.pixels)).unwrap();
    std::fs::write(&logits, as_bytes(&r.logits)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/export_check.py");
    let [c, h, w] = r.shape;
    let dims = [CHECKED, c, h, w, r.classes].map(|d| d.to_string());
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(mode)
        .arg(model)
        .arg(&pixels)
        .arg(&logits)
        .args(&dims)
        .output()
        .unwrap();
    assert!(out.status.success(), "{mode} check: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verdict = text
        .lines()
        .find_map(|l| l.strip_prefix("max_abs_diff="))
        .unwrap_or_else(|| panic!("{text}"));
    let (diff, rest) = verdict.split_once(' ').unwrap();
    let diff: f64 = diff.parse().unwrap();
    assert!(diff <= 1e-4, "{mode}: logits differ by {diff}\n{text}");
    assert!(
        rest.contains("same_labels=True") && rest.contains(&format!("classes={}", r.classes)),
        "{mode}: {text}"
    );
    Some(text)
}

/// Trains `experiment` (with `extra` overrides) on a feature branch; returns the repository
/// and the run tag.
pub fn trained(env: &Env, experiment: &str, extra: &[&str]) -> (PathBuf, String) {
    let dir = env.init_repo("repo");
    env.git(&dir, &["switch", "-q", "-c", "feature/export", "develop"]);
    let mut args = vec!["--set", "data.train_limit=300", "--set", "train.epochs=1"];
    args.extend_from_slice(extra);
    let out = quick_run(env, &dir, experiment, &args);
    assert!(out.status.success(), "{}", describe(&out));
    let tag = env.git(&dir, &["tag", "-l", &format!("run/*/{experiment}/*")]);
    (dir, tag.trim().to_string())
}

/// Exports the run `tag` both ways and checks each file in every reader.
fn export_and_check(env: &Env, dir: &Path, tag: &str) -> (Reference, String) {
    let r = reference(env, dir, tag);
    let onnx = env.path("model.onnx");
    let out = env.exp_ok(
        dir,
        &[
            "export",
            tag,
            "--format",
            "onnx",
            "-o",
            onnx.to_str().unwrap(),
        ],
    );
    assert!(out.contains(&format!("to {}", onnx.display())), "{out}");
    check_with_candle_onnx(&onnx, &r);
    let onnx_report = check_in_python(env, "onnx", &onnx, &r).unwrap_or_default();
    let stem = env.path("exported_model");
    let out = env.exp_ok(
        dir,
        &[
            "export",
            tag,
            "--format",
            "torch",
            "-o",
            stem.to_str().unwrap(),
        ],
    );
    assert!(out.contains("exported_model.safetensors") && out.contains("exported_model.py"));
    check_in_python(env, "torch", &env.path("exported_model.py"), &r);
    (r, onnx_report)
}

#[test]
fn seed_cnn_exports_with_metadata_and_refuses_bad_sources() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-cnn", &[]);
    let (r, report) = export_and_check(&env, &dir, &tag);
    let commit = env.git(&dir, &["rev-parse", &format!("{tag}^{{commit}}")]);
    if !report.is_empty() {
        // onnxruntime read the metadata back.
        for line in [
            "input pixels ['N', 1, 28, 28]".to_string(),
            "meta exp.experiment=mnist-cnn".to_string(),
            format!("meta exp.commit={}", commit.trim()),
            format!("meta exp.run_tag={tag}"),
            format!("meta exp.run_id={}", r.artifact.record.run.id),
            format!("meta exp.weights_oid={}", r.artifact.record.model.oid),
            "meta exp.architecture=seed-cnn".to_string(),
            r#"meta exp.class_names=["0","1","2","3","4","5","6","7","8","9"]"#.to_string(),
            r#"meta exp.normalize={"folded_in":true,"mean":[0.1307],"std":[0.3081]}"#.to_string(),
        ] {
            assert!(report.lines().any(|l| l == line), "{line} not in\n{report}");
        }
    }

    // Bad sources and options: exit 2, a message naming the problem.
    let refused = |args: &[&str], message: &str| assert_exit_2(&env, &dir, args, message);
    refused(
        &["export", "nope", "--format", "onnx"],
        "unknown revision \"nope\"",
    );
    refused(
        &["export", &tag, "--format", "onnx", "--opset", "9"],
        "--opset 9: exp writes opsets 14–21",
    );
    refused(
        &["export", "mnist-cnn@1.0.0", "--format", "onnx"],
        "there is no release v1.0.0",
    );
    refused(
        &["export", "main", "--format", "torch"],
        "no run record at main",
    );
    refused(
        &["export", &tag, "--format", "onnx", "-e", "mnist-mlp"],
        "holds no run of \"mnist-mlp\"",
    );
    // Nothing the user has is overwritten: an existing file only with --force, a tracked file
    // or the git dir never.
    let onnx = env.path("model.onnx");
    let onnx = onnx.to_str().unwrap();
    refused(
        &["export", &tag, "--format", "onnx", "-o", onnx],
        "model.onnx: exists; --force replaces it",
    );
    env.exp_ok(
        &dir,
        &["export", &tag, "--format", "onnx", "-o", onnx, "--force"],
    );
    refused(
        &["export", &tag, "--format", "torch", "-o", "experiments/mnist-cnn/model", "--force"],
        "Git tracks experiments/mnist-cnn/model.safetensors; exp export never writes over a tracked file",
    );
    refused(
        &[
            "export",
            &tag,
            "--format",
            "onnx",
            "-o",
            ".git/hooks/x.onnx",
        ],
        "inside the repository's git dir",
    );
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
    // -o naming a directory: the default name inside it.
    std::fs::create_dir(dir.join("out")).unwrap();
    let short = &r.artifact.provenance.commit[..12];
    let out = env.exp_ok(&dir, &["export", &tag, "--format", "torch", "-o", "out"]);
    assert!(
        out.contains(&format!("out/mnist_cnn_{short}.safetensors")),
        "{out}"
    );
    assert!(dir.join(format!("out/mnist_cnn_{short}.py")).is_file());

    // Weights that are not in the store (and no remote to fetch them from).
    let oid = &r.artifact.record.model.oid;
    let object = dir.join(format!(
        ".git/lfs/objects/{}/{}/{oid}",
        &oid[..2],
        &oid[2..4]
    ));
    std::fs::remove_file(&object).unwrap();
    let out = env.exp(&dir, &["export", &tag, "--format", "onnx", "-o", "x.onnx"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("are not in the local store") && stderr(&out).contains("exp pull"),
        "{}",
        describe(&out)
    );
    assert!(!dir.join("x.onnx").exists());
}

#[test]
fn released_cnn_exports_by_name_and_version_with_class_names() {
    let env = Env::new();
    let (dir, _) = trained(&env, "fashion-cnn", &[]);
    env.exp_ok(&dir, &["flow", "finish"]);
    env.exp_ok(&dir, &["flow", "release", "1.0.0"]);
    let (r, report) = export_and_check(&env, &dir, "fashion-cnn@1.0.0");
    assert_eq!(r.artifact.provenance.release.as_deref(), Some("1.0.0"));
    assert_eq!(r.artifact.class_names[9], "Ankle boot");
    if !report.is_empty() {
        assert!(
            report.lines().any(|l| l == "meta exp.release=1.0.0"),
            "{report}"
        );
        assert!(report.contains("\"T-shirt/top\",\"Trouser\""), "{report}");
    }
    // Without -o: exp-out/<experiment>-<version>.onnx, ignored by Git.
    let out = env.exp_ok(&dir, &["export", "fashion-cnn@1.0.0", "--format", "onnx"]);
    assert!(out.contains("exp-out/fashion-cnn-1.0.0.onnx"), "{out}");
    assert!(dir.join("exp-out/fashion-cnn-1.0.0.onnx").is_file());
    assert_eq!(env.git(&dir, &["status", "--porcelain"]), "");
}

#[test]
fn mlp_exports_and_old_records_take_their_shape_from_the_data() {
    let env = Env::new();
    let (dir, tag) = trained(&env, "mnist-mlp", &[]);
    export_and_check(&env, &dir, &tag);
    // A record written before exp recorded model.input: the shape comes from its data.
    let record = dir.join("experiments/mnist-mlp/metrics.toml");
    let text = std::fs::read_to_string(&record).unwrap();
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("input = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(old, text, "the record has no model.input line");
    std::fs::write(&record, old).unwrap();
    env.git(
        &dir,
        &["commit", "-qam", "a record from before model.input"],
    );
    let out = env.path("old.onnx");
    env.exp_ok(
        &dir,
        &[
            "export",
            "HEAD",
            "--format",
            "onnx",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    let r = reference(&env, &dir, "HEAD");
    assert_eq!(r.artifact.input.size(), 784);
    check_with_candle_onnx(&out, &r);
}

#[test]
fn resnet18_exports_with_batch_norm_buffers() {
    let env = Env::new();
    let (dir, tag) = trained(
        &env,
        "mnist-cnn",
        &[
            "--set",
            "model.name=resnet18",
            "--set",
            "model.width=8",
            "--set",
            "data.train_limit=200",
        ],
    );
    export_and_check(&env, &dir, &tag);
}
