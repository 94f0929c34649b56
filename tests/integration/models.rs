//! resnet50 and vit end to end (`exp run` on real MNIST), and `init.from` a torchvision or
//! Hugging Face safetensors file in the libraries' own tensor names: what loads, what exp then
//! computes, what the record says, and the error that lists what does not fit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use exp::data::ImageShape;
use exp::model::{Mode, Model};
use exp::spec::{ModelName, ModelSpec, Stem};

use crate::common::*;
use crate::export::python_tools;

const MNIST_DATA: &str = r#"[data]
format = "idx"
train_images = "mnist/train-images-idx3-ubyte.gz"
train_labels = "mnist/train-labels-idx1-ubyte.gz"
test_images = "mnist/t10k-images-idx3-ubyte.gz"
test_labels = "mnist/t10k-labels-idx1-ubyte.gz"
normalize = { mean = [0.1307], std = [0.3081] }
"#;

const TINY: &[&str] = &[
    "--set",
    "data.train_limit=64",
    "--set",
    "data.test_limit=32",
    "--quiet",
];

/// Writes `experiments/NAME.toml` with `model` (the `[model]` body) on MNIST, batch 32.
fn write_spec(dir: &Path, name: &str, model: &str) {
    std::fs::write(
        dir.join(format!("experiments/{name}.toml")),
        format!(
            "[model]\n{model}\n\n{MNIST_DATA}\n[train]\nbatch_size = 32\nepochs = 1\nseed = 1\n"
        ),
    )
    .unwrap();
}

fn run(env: &Env, dir: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", name];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    env.exp(dir, &args)
}

/// The tensors of the safetensors file at `path`, by name.
fn load(path: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn committed_weights(dir: &Path, oid: &str) -> BTreeMap<String, Tensor> {
    load(
        &dir.join(".git/lfs/objects")
            .join(&oid[0..2])
            .join(&oid[2..4])
            .join(oid),
    )
}

/// resnet50 (CIFAR stem, width 4) and vit (width 16, 2 layers, 7×7 patches) train on 64 real
/// MNIST images and evaluate on 32: the record names the model, counts its parameters and
/// steps, and the committed weights carry torchvision's and Hugging Face's names.
#[test]
fn resnet50_and_vit_train_end_to_end_on_mnist() {
    let env = Env::new();
    let dir = env.init_repo("models");
    env.git(&dir, &["switch", "-q", "-c", "feature/models", "develop"]);
    write_spec(&dir, "mnist-r50", "name = \"resnet50\"\nwidth = 4");
    write_spec(
        &dir,
        "mnist-vit",
        "name = \"vit\"\nwidth = 16\ndepth = 2\nheads = 2\npatch_size = 7\ndropout = 0.1",
    );
    // (experiment, parameters, a tensor and its shape in the weights)
    let cases = [
        (
            "mnist-r50",
            96_230,
            "layer4.2.conv3.weight",
            vec![128, 32, 1, 1],
        ),
        (
            "mnist-vit",
            5_738,
            "vit.encoder.layer.1.attention.attention.query.weight",
            vec![16, 16],
        ),
    ];
    for (name, parameters, tensor, shape) in cases {
        let out = run(&env, &dir, name, &[]);
        assert!(out.status.success(), "{name}: {}", describe(&out));
        let r = record_at(&env, &dir, "HEAD", name);
        let architecture = name.replace("mnist-r50", "resnet50").replace("mnist-", "");
        assert_eq!(r.model.architecture, architecture);
        assert_eq!(r.model.parameters, parameters, "{name}");
        assert_eq!((r.data.train.examples, r.data.test.examples), (64, 32));
        assert_eq!((r.training.epochs, r.training.steps), (1, 2));
        let weights = committed_weights(&dir, &r.model.oid);
        assert_eq!(weights[tensor].dims(), shape.as_slice(), "{name}");
        let count: usize = weights
            .iter()
            .filter(|(k, _)| !k.contains("running_"))
            .map(|(_, t)| t.elem_count())
            .sum();
        assert_eq!(count, parameters, "{name}: the weights hold the parameters");
    }
    let r = record_at(&env, &dir, "HEAD", "mnist-r50");
    assert_eq!(r.params.model.stem, Some(Stem::Cifar));
    let v = record_at(&env, &dir, "HEAD", "mnist-vit");
    assert_eq!(
        (v.params.model.mlp_dim, v.params.model.dropout),
        (Some(32), Some(0.1))
    );
    // exp export refuses both by name rather than writing a wrong graph.
    for (name, model) in [("mnist-r50", "resnet50"), ("mnist-vit", "vit")] {
        let tag = format!("run/feature-models/{name}/1");
        let onnx = env.path(&format!("{name}.onnx"));
        let args = [
            "export",
            &tag,
            "--format",
            "onnx",
            "-o",
            onnx.to_str().unwrap(),
        ];
        let out = env.exp(&dir, &args);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            stderr(&out).contains(&format!("exp export does not write {model} models")),
            "{}",
            describe(&out)
        );
        assert!(!onnx.exists());
    }
}

/// Runs tests/python/pretrained_weights.py: the weights file and the reference (input and
/// logits) it writes under `env`.
fn pretrained(env: &Env, kind: &str, args: &[&str]) -> Option<(PathBuf, PathBuf)> {
    let python = python_tools()?;
    let weights = env.path(&format!("{kind}.safetensors"));
    let reference = env.path(&format!("{kind}-reference.safetensors"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/pretrained_weights.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(kind)
        .arg(&weights)
        .arg(&reference)
        .arg(&env.data)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{kind}: {}", describe(&out));
    Some((weights, reference))
}

fn spec(name: ModelName) -> ModelSpec {
    ModelSpec::named(name)
}

/// Loads `weights` into `model` as `init.from` does and checks that exp computes the logits
/// the library computed on the reference images; returns what the record would say.
fn loads_and_computes(model: &Model, weights: &Path, reference: &Path, tolerance: f32) {
    let mut parent = exp::init_from::load_file(weights, "weights.safetensors", &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    parent.apply(model, 10).unwrap_or_else(|e| panic!("{e}"));
    assert!(parent.record.reinitialized.is_empty());
    assert_eq!(
        parent.record.tensor_hash,
        exp::record::tensor_hash(&load(weights)).unwrap()
    );
    let reference = load(reference);
    let logits = model.forward(&reference["input"], &mut Mode::Eval).unwrap();
    let expected = &reference["logits"];
    assert_eq!(logits.dims(), expected.dims());
    let scale = expected.abs().unwrap().max_all().unwrap();
    let diff = (logits - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    let (scale, diff) = (
        scale.to_scalar::<f32>().unwrap(),
        diff.to_scalar::<f32>().unwrap(),
    );
    assert!(scale > 0.0);
    assert!(
        diff <= tolerance * scale,
        "logits differ by {diff} (largest {scale})"
    );
}

/// A torchvision `resnet50()` state dict (ImageNet stem, width 64, running statistics after
/// two training batches, `num_batches_tracked` included) loads into exp's resnet50, which then
/// computes torchvision's evaluation logits on real CIFAR-10 images; likewise a transformers
/// `ViTForImageClassification` state dict into exp's vit, on real MNIST images.
#[test]
fn torchvision_and_hugging_face_weights_compute_their_logits() {
    let env = Env::new();
    let Some((r50, r50_reference)) = pretrained(&env, "resnet50", &["10"]) else {
        return;
    };
    let mut s = spec(ModelName::Resnet50);
    s.stem = Some(Stem::Imagenet);
    let cifar = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let model = Model::new(&s, cifar, 10, 1, &Device::Cpu).unwrap();
    loads_and_computes(&model, &r50, &r50_reference, 1e-4);

    let (vit, vit_reference) = pretrained(&env, "vit", &["10", "16", "2", "2", "7"]).unwrap();
    let s = ModelSpec {
        width: Some(16),
        depth: Some(2),
        heads: Some(2),
        patch_size: Some(7),
        mlp_dim: Some(32),
        ..spec(ModelName::Vit)
    };
    let mnist = ImageShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let model = Model::new(&s, mnist, 10, 1, &Device::Cpu).unwrap();
    loads_and_computes(&model, &vit, &vit_reference, 1e-5);
}

/// `exp run` with `init.from` a Hugging Face ViT file (a path relative to the repository's
/// root) on three of the ten digits: the classifier keeps its fresh initialisation, the rest
/// starts from the file, and the record's `[init]` names the file and its tensor hash. Files
/// that do not fit are refused (exit 2) with every missing, unexpected and misshapen tensor.
#[test]
fn init_from_a_weights_file() {
    let env = Env::new();
    let Some((vit, _)) = pretrained(&env, "vit", &["10", "16", "2", "2", "7"]) else {
        return;
    };
    let dir = env.init_repo("pretrained");
    env.git(
        &dir,
        &["switch", "-q", "-c", "feature/pretrained", "develop"],
    );
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    std::fs::copy(&vit, dir.join("weights/vit-hf.safetensors")).unwrap();
    write_spec(
        &dir,
        "mnist-vit",
        "name = \"vit\"\nwidth = 16\ndepth = 2\nheads = 2\npatch_size = 7",
    );
    let from = "init.from=weights/vit-hf.safetensors";
    let out = run(
        &env,
        &dir,
        "mnist-vit",
        &["--set", from, "--set", "data.classes=[0,1,2]"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let r = record_at(&env, &dir, "HEAD", "mnist-vit");
    let init = r.init.as_ref().expect("the record names the file");
    assert_eq!(init.from, "weights/vit-hf.safetensors");
    assert_eq!(
        init.tensor_hash,
        exp::record::tensor_hash(&load(&vit)).unwrap()
    );
    assert_eq!(init.reinitialized, ["classifier.bias", "classifier.weight"]);
    assert_eq!((init.commit.as_str(), init.run_id.as_str()), ("", ""));
    let file = load(&vit);
    let trained = committed_weights(&dir, &r.model.oid);
    assert_eq!(trained["classifier.weight"].dims(), &[3, 16]);
    // Two Adam steps from the file's values: close to them, not equal.
    let name = "vit.encoder.layer.0.attention.attention.query.weight";
    let moved = (&trained[name] - &file[name]).unwrap().abs().unwrap();
    let moved = moved.max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved > 0.0 && moved < 0.01, "moved {moved}");
    // `exp lineage` stops at the file.
    let json = env.exp_ok(&dir, &["lineage", "--json"]);
    let chain: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(chain.as_array().map(Vec::len), Some(1), "{json}");

    // Another patch size: the embeddings have other shapes.
    let out = run(
        &env,
        &dir,
        "mnist-vit",
        &["--set", from, "--set", "model.patch_size=4"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let text = stderr(&out);
    for needle in [
        "the file's tensors do not fit this vit model: shape mismatches (2): ",
        "vit.embeddings.patch_embeddings.projection.weight is [16, 1, 7, 7] in the file, [16, 1, 4, 4] here",
        "vit.embeddings.position_embeddings is [1, 17, 16] in the file, [1, 50, 16] here",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // One layer fewer: the second layer's 16 tensors are unexpected.
    let out = run(
        &env,
        &dir,
        "mnist-vit",
        &["--set", from, "--set", "model.depth=1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains(
            "unexpected tensors (16): vit.encoder.layer.1.attention.attention.key.bias, "
        ),
        "{}",
        describe(&out)
    );
    // A ViT file for a ResNet: its tensors are missing (53 convolutions, 53 batch norms of 4
    // tensors; the head is exempt, as the file has none), the file's 40 unexpected.
    write_spec(&dir, "mnist-r50", "name = \"resnet50\"\nwidth = 4");
    let out = run(&env, &dir, "mnist-r50", &["--set", from]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let text = stderr(&out);
    for needle in [
        "missing tensors (265): bn1.bias, bn1.running_mean",
        ", and 241 more;",
        "unexpected tensors (40): classifier.bias, classifier.weight, vit.embeddings.cls_token",
        ", and 16 more\n",
        "hint: the file must hold this model's tensors",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    // No such file.
    assert_exit_2(
        &env,
        &dir,
        &[
            "run",
            "mnist-vit",
            "--set",
            "init.from=weights/none.safetensors",
        ],
        "cannot read the weights file",
    );
    // Nothing was recorded by the refused runs.
    assert_eq!(
        env.git(&dir, &["tag", "-l", "run/*"]).lines().count(),
        1,
        "only the first run is recorded"
    );
}
