//! Training recipes (issue 7) through the library, on real MNIST subsets: gradient
//! accumulation, augmentation, class selection and weights, validation and early stopping.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use exp::data::Dataset;
use exp::model::Model;
use exp::spec::{ResolvedSpec, Spec};
use exp::train::{train, Silent, StopFlag, TrainOutcome};

use crate::common::*;

/// The seed-cnn MNIST spec of `exp init`, with `overrides` applied.
pub fn mnist_spec(overrides: &[&str]) -> Spec {
    resolve(overrides).spec
}

fn resolve(overrides: &[&str]) -> ResolvedSpec {
    let text = include_str!("../../experiments/mnist-cnn.toml");
    let sets: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    exp::spec::parse(Path::new("experiments/mnist-cnn.toml"), text, &sets).expect("valid spec")
}

/// Loads the data, builds the model and trains it on the CPU.
pub fn train_spec(spec: &Spec) -> (Model, Dataset, TrainOutcome) {
    let data = Dataset::load(
        &data_root(),
        &spec.data,
        spec.train.seed,
        &|k| k.to_string(),
        None,
    )
    .expect("data");
    let model = Model::new(
        &spec.model,
        data.shape,
        data.classes,
        spec.train.seed,
        &Device::Cpu,
    )
    .expect("model");
    let outcome = train(
        &model,
        &data,
        &spec.train,
        &Device::Cpu,
        &StopFlag::default(),
        &mut Silent,
    )
    .expect("training");
    (model, data, outcome)
}

fn weights(model: &Model) -> BTreeMap<String, Vec<f32>> {
    model
        .params()
        .tensors()
        .into_iter()
        .map(|(k, t): (String, Tensor)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn max_abs_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// `accumulate = 4` with batch 8 takes the same optimiser steps as batch 32: the summed
/// gradients of four micro-batches, each scaled by 1/4, are the mean gradient of the 32
/// examples. Plain SGD makes the update proportional to the gradient, so a float rounding
/// difference stays a rounding difference (Adam's first step is nearly sign(g), which
/// would amplify it).
#[test]
fn accumulation_matches_the_large_batch() {
    let base = [
        "data.train_limit=64",
        "data.test_limit=100",
        "train.optimizer=sgd",
        "train.lr=0.05",
    ];
    let with = |extra: &[&str]| {
        let mut o = base.to_vec();
        o.extend_from_slice(extra);
        mnist_spec(&o)
    };
    let init = {
        let spec = with(&[]);
        let data = Dataset::load(&data_root(), &spec.data, 1, &|k| k.to_string(), None).unwrap();
        weights(&Model::new(&spec.model, data.shape, data.classes, 1, &Device::Cpu).unwrap())
    };
    let (large, _, large_out) = train_spec(&with(&["train.batch_size=32"]));
    let (accumulated, _, acc_out) =
        train_spec(&with(&["train.batch_size=8", "train.accumulate=4"]));
    let (small, _, _) = train_spec(&with(&["train.batch_size=8"]));
    assert_eq!((large_out.steps, acc_out.steps), (2, 2));
    let (large, accumulated, small) = (weights(&large), weights(&accumulated), weights(&small));

    let update = max_abs_diff(&large, &init);
    let accumulation_error = max_abs_diff(&large, &accumulated);
    let small_batch_difference = max_abs_diff(&large, &small);
    eprintln!(
        "update {update:e}, accumulation error {accumulation_error:e}, batch-8 difference {small_batch_difference:e}"
    );
    // Tolerance: 1e-4 of the largest weight change (f32 sums in another order differ in the
    // last bits; a wrong scaling, a missed micro-batch or a step too many is off by ≥ 25 %).
    assert!(
        update > 1e-3,
        "the two steps barely moved the weights: {update}"
    );
    assert!(
        accumulation_error <= 1e-4 * update,
        "accumulated update differs from the batch-32 update by {accumulation_error} (update {update})"
    );
    // The tolerance discriminates: eight batch-8 steps are a different trajectory.
    assert!(
        small_batch_difference > 100.0 * 1e-4 * update,
        "batch 8 without accumulation is indistinguishable: {small_batch_difference}"
    );
}

/// Augmentation is seeded (same seed: bit-identical weights), changes what the model sees
/// (other weights than without it), is recorded in the resolved params, and is off unless
/// asked for.
#[test]
fn augmentation_is_seeded_and_recorded() {
    let base = ["data.train_limit=300", "data.test_limit=100"];
    let plain = mnist_spec(&base);
    assert!(plain.train.augment.is_off() && !plain.train.augment.flip);
    let toml_plain = toml::to_string(&plain).unwrap();
    assert!(!toml_plain.contains("augment"), "{toml_plain}");
    let mut sets = base.to_vec();
    sets.extend(["train.augment.crop_padding=2", "train.augment.flip=true"]);
    let augmented = mnist_spec(&sets);
    assert_eq!(augmented.train.augment.crop_padding, 2);
    let flat = exp::spec::flatten(&augmented);
    assert!(flat
        .iter()
        .any(|(k, v)| k == "train.augment.crop_padding" && v.as_integer() == Some(2)));
    assert!(flat
        .iter()
        .any(|(k, v)| k == "train.augment.flip" && v.as_bool() == Some(true)));

    let (a, _, _) = train_spec(&augmented);
    let (b, _, _) = train_spec(&augmented);
    let (c, _, _) = train_spec(&plain);
    let hash = |m: &Model| exp::record::tensor_hash(&m.params().tensors()).unwrap();
    assert_eq!(hash(&a), hash(&b), "same seed, same augmentation");
    assert_ne!(hash(&a), hash(&c), "augmentation changed nothing");

    let bad = exp::spec::parse(
        Path::new("x.toml"),
        include_str!("../../experiments/mnist-cnn.toml"),
        &["train.augment.mirror=true".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("mirror"), "{bad}");
}

/// The recall of each class on the eval set.
fn recalls(outcome: &TrainOutcome, classes: usize) -> Vec<f64> {
    exp::eval::Metrics::new(&outcome.evaluation, classes).per_class_accuracy
}

/// `data.classes` keeps and relabels two MNIST digits, `data.class_limit` makes the training
/// split imbalanced (500 fours, 10 nines); inverse-frequency class weights then recover the
/// minority class's recall that the plain loss gives up.
#[test]
fn class_weights_recover_the_minority_class() {
    let base = [
        "data.classes=[4, 9]",
        "data.class_limit={4 = 500, 9 = 10}",
        "data.test_limit=1000",
        "train.epochs=4",
    ];
    let plain = mnist_spec(&base);
    let (_, data, plain_out) = train_spec(&plain);
    assert_eq!(data.classes, 2);
    let count = |labels: &[u8], l: u8| labels.iter().filter(|&&x| x == l).count();
    assert_eq!(
        (count(&data.train.labels, 0), count(&data.train.labels, 1)),
        (500, 10)
    );
    assert_eq!(data.test.len, 1000);
    assert!(data.test.labels.iter().all(|&l| l < 2));
    // The test set holds both digits in file order, roughly balanced.
    assert!(
        count(&data.test.labels, 1) > 400,
        "{}",
        count(&data.test.labels, 1)
    );

    let mut sets = base.to_vec();
    sets.push("train.class_weights=inverse-frequency");
    let weighted = mnist_spec(&sets);
    let (_, _, weighted_out) = train_spec(&weighted);
    assert_eq!(
        weighted_out.class_weights,
        Some(vec![510.0 / 1000.0, 510.0 / 20.0])
    );
    let (p, w) = (recalls(&plain_out, 2), recalls(&weighted_out, 2));
    eprintln!("recall without weights {p:?}, with inverse-frequency weights {w:?}");
    assert!(
        w[1] > p[1] + 0.2,
        "weights did not recover the minority class: {p:?} → {w:?}"
    );
}

/// From `exp run --set`: the classes, caps and weights reach the record, and the split
/// fingerprint tells the relabelled subset from the plain one.
#[test]
fn classes_and_weights_are_recorded() {
    let env = Env::new();
    let dir = env.init_repo("classes");
    env.git(&dir, &["switch", "-q", "-c", "feature/classes", "develop"]);
    let out = quick_run(&env, &dir, "mnist-cnn", &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let plain = record_at(&env, &dir, "HEAD", "mnist-cnn");
    let out = quick_run(
        &env,
        &dir,
        "mnist-cnn",
        &[
            "--set",
            "data.classes=[4,9]",
            "--set",
            "data.class_limit={9=20}",
            "--set",
            "train.class_weights=inverse-frequency",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let r = record_at(&env, &dir, "HEAD", "mnist-cnn");
    assert_eq!(r.params.data.classes, vec![4, 9]);
    assert_eq!(r.params.data.class_caps().unwrap()[&9], 20);
    assert_eq!(
        (r.data.train.classes, r.eval.classes, r.eval.confusion.len()),
        (2, 2, 2)
    );
    let weights = r.training.class_weights.expect("class weights recorded");
    assert_eq!(weights.len(), 2);
    assert!(weights[1] > 5.0 * weights[0], "{weights:?}");
    assert_ne!(r.data.train.blake3, plain.data.train.blake3);
    assert_ne!(r.data.test.blake3, plain.data.test.blake3);
    assert!(plain.training.class_weights.is_none());
    let text = env.git(&dir, &["show", "HEAD~1:experiments/mnist-cnn/metrics.toml"]);
    assert!(
        !text.contains("class_weights") && !text.contains("class_limit"),
        "{text}"
    );
}

/// The rows of `experiments/mnist-cnn/history.csv` in the work tree.
fn history_rows(dir: &Path) -> Vec<exp::record::EpochRecord> {
    let text = std::fs::read_to_string(dir.join("experiments/mnist-cnn/history.csv")).unwrap();
    csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .map(|r| r.unwrap())
        .collect()
}

/// `data.val_fraction` carves a seeded validation set out of the training examples (never
/// the test set); early stopping watches it, stops after `patience` epochs without
/// improvement and records the best epoch's weights and metrics.
#[test]
fn validation_split_and_early_stopping() {
    // The split: 10 % of the 1000 examples training may use, disjoint from the other 900.
    let spec = mnist_spec(&["data.train_limit=1000", "data.val_fraction=0.1"]);
    let data = Dataset::load(&data_root(), &spec.data, 1, &|k| k.to_string(), None).unwrap();
    let val = data.val.as_ref().expect("a validation split");
    assert_eq!((data.train.len, val.len), (900, 100));
    let train_sel = data.train.selection.as_ref().unwrap();
    let val_sel = val.selection.as_ref().unwrap();
    assert!(val_sel.iter().all(|i| train_sel.binary_search(i).is_err()));
    let other_seed = Dataset::load(&data_root(), &spec.data, 2, &|k| k.to_string(), None).unwrap();
    assert_ne!(other_seed.val.unwrap().selection.unwrap(), *val_sel);

    let env = Env::new();
    let dir = env.init_repo("early");
    env.git(&dir, &["switch", "-q", "-c", "feature/early", "develop"]);
    let run = |epochs: &str, rule: &str| {
        let out = quick_run(
            &env,
            &dir,
            "mnist-cnn",
            &[
                "--set",
                "data.val_fraction=0.1",
                "--set",
                &format!("train.epochs={epochs}"),
                "--set",
                &format!("train.early_stopping={rule}"),
            ],
        );
        assert!(out.status.success(), "{}", describe(&out));
        (
            record_at(&env, &dir, "HEAD", "mnist-cnn"),
            history_rows(&dir),
        )
    };
    // min_delta = 10 in loss: no epoch after the first can improve, so the run stops after
    // epoch 1 + patience and must record epoch 1's weights.
    let (r, rows) = run(
        "6",
        "{patience = 2, metric = \"val_loss\", min_delta = 10.0}",
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r.val_loss.is_some() && r.val_accuracy.is_some()));
    assert_eq!((r.training.epochs, r.training.best_epoch), (3, Some(1)));
    assert_eq!(r.data.val.as_ref().map(|v| v.examples), Some(100));
    assert_eq!(r.data.train.examples, 900);
    assert_eq!(r.metrics.values["accuracy"], rows[0].eval_accuracy);
    assert_ne!(
        rows[0].eval_accuracy, rows[2].eval_accuracy,
        "epochs 1 and 3 agree: the check above proves nothing"
    );
    let stop = r.params.train.early_stopping.as_ref().unwrap();
    assert_eq!(stop.patience, 2);

    // The ordinary rule: the best epoch is the one with the lowest validation loss.
    let (r, rows) = run("3", "{patience = 1}");
    let best = rows
        .iter()
        .min_by(|a, b| a.val_loss.unwrap().total_cmp(&b.val_loss.unwrap()))
        .unwrap();
    assert_eq!(r.training.best_epoch, Some(best.epoch));
    assert_eq!(r.metrics.values["accuracy"], best.eval_accuracy);

    // Early stopping without a validation set is refused before training.
    let out = quick_run(
        &env,
        &dir,
        "mnist-cnn",
        &["--set", "train.early_stopping={patience = 1}"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("validation"), "{}", describe(&out));
}

/// ResNet-18 (narrow, to stay a smoke test on the CPU) trains on the real CIFAR-10 sample
/// through `exp run` with augmentation: finite losses, a record whose weights file holds the
/// batch-norm running statistics, and the same weights again from the same seed.
#[test]
fn resnet18_smoke_on_the_cifar10_sample() {
    let env = Env::new();
    let dir = env.init_repo("resnet");
    env.git(&dir, &["switch", "-q", "-c", "feature/resnet", "develop"]);
    std::fs::write(
        dir.join("experiments/cifar-resnet.toml"),
        format!(
            "[model]\nname = \"resnet18\"\nwidth = 8\n\n{CIFAR_SAMPLE_DATA}\n[train]\n\
             optimizer = \"sgd\"\nlr = 0.05\nmomentum = 0.9\nbatch_size = 8\nepochs = 2\n\
             augment = {{ crop_padding = 4, flip = true }}\n"
        ),
    )
    .unwrap();
    let out = env.exp(&dir, &["run", "cifar-resnet", "--quiet"]);
    assert!(out.status.success(), "{}", describe(&out));
    let r = record_at(&env, &dir, "HEAD", "cifar-resnet");
    assert_eq!(r.model.architecture, "resnet18");
    assert_eq!((r.training.epochs, r.training.steps), (2, 6));
    assert!(r.training.final_train_loss.is_finite());
    assert!(r.metrics.values["loss"].is_finite());
    let bytes = std::fs::read(dir.join("experiments/cifar-resnet/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    assert!(names.contains(&"layer1.0.bn1.running_mean"));
    assert!(names.contains(&"fc.weight"));
    let mean = st.tensor("bn1.running_mean").unwrap();
    assert!(
        mean.data().iter().any(|b| *b != 0),
        "the saved running mean is still its initial value"
    );

    // Fine-tuning it on two of the classes with the stem frozen: the stem's weights and
    // batch-norm parameters stay bit-identical, the rest trains, the head is new.
    let out = env.exp(
        &dir,
        &[
            "run",
            "cifar-resnet",
            "--quiet",
            "--set",
            "init.from=run/feature-resnet/cifar-resnet/1",
            "--set",
            "init.freeze=[\"conv1.\", \"bn1.\"]",
            "--set",
            "data.classes=[3, 8]",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let child = record_at(&env, &dir, "HEAD", "cifar-resnet");
    let init = child.init.unwrap();
    assert_eq!(init.reinitialized, ["fc.bias", "fc.weight"]);
    assert_eq!(init.frozen, ["bn1.bias", "bn1.weight", "conv1.weight"]);
    let child_bytes =
        std::fs::read(dir.join("experiments/cifar-resnet/model.safetensors")).unwrap();
    let child_st = safetensors::SafeTensors::deserialize(&child_bytes).unwrap();
    for name in ["conv1.weight", "bn1.weight", "bn1.bias"] {
        assert_eq!(
            child_st.tensor(name).unwrap().data(),
            st.tensor(name).unwrap().data(),
            "{name}"
        );
    }
    assert_ne!(
        child_st.tensor("layer1.0.conv1.weight").unwrap().data(),
        st.tensor("layer1.0.conv1.weight").unwrap().data()
    );
    assert_eq!(child_st.tensor("fc.weight").unwrap().shape(), [2, 64]);

    // 28×28 grey through the library: a few steps on real MNIST, then determinism.
    let spec = mnist_spec(&[
        "model.name=resnet18",
        "model.width=4",
        "data.train_limit=64",
        "data.test_limit=64",
        "train.batch_size=16",
    ]);
    let (a, _, outcome) = train_spec(&spec);
    assert!(outcome.history[0].train_loss.is_finite());
    let (b, _, _) = train_spec(&spec);
    let hash = |m: &Model| exp::record::tensor_hash(&m.params().tensors()).unwrap();
    assert_eq!(
        hash(&a),
        hash(&b),
        "ResNet-18 on the CPU is not deterministic"
    );
}
