//! The spec's unit tests: schedules, parsing, overrides, validation and messages.

mod schedule {
    use crate::spec::*;
    #[allow(unused_imports)]
    use std::path::Path;

    fn train(schedule: Schedule, epochs: usize, warmup: usize) -> TrainSpec {
        TrainSpec {
            lr: 0.1,
            epochs,
            schedule,
            warmup_epochs: warmup,
            min_lr: 0.01,
            step_size: 2,
            gamma: 0.5,
            ..TrainSpec::default()
        }
    }

    #[test]
    fn schedules_follow_pytorch() {
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let c = train(Schedule::Constant, 3, 0);
        (1..=3).for_each(|e| close(c.learning_rate(e), 0.1));
        // CosineAnnealingLR(T_max = 4, eta_min = 0.01) stepped per epoch: 0.1, 0.08682, 0.055, 0.02318.
        let c = train(Schedule::Cosine, 4, 0);
        close(c.learning_rate(1), 0.1);
        close(
            c.learning_rate(2),
            0.01 + 0.09 * (1.0 + (std::f64::consts::PI / 4.0).cos()) / 2.0,
        );
        close(c.learning_rate(3), 0.055);
        close(
            c.learning_rate(4),
            0.01 + 0.09 * (1.0 + (3.0 * std::f64::consts::PI / 4.0).cos()) / 2.0,
        );
        // StepLR(step_size = 2, gamma = 0.5): 0.1, 0.1, 0.05, 0.05, 0.025.
        let s = train(Schedule::Step, 5, 0);
        let expected = [0.1, 0.1, 0.05, 0.05, 0.025];
        (1..=5).for_each(|e| close(s.learning_rate(e), expected[e - 1]));
        // Two warm-up epochs (lr/3, 2·lr/3), then cosine over the remaining two.
        let w = train(Schedule::Cosine, 4, 2);
        close(w.learning_rate(1), 0.1 / 3.0);
        close(w.learning_rate(2), 0.2 / 3.0);
        close(w.learning_rate(3), 0.1);
        close(w.learning_rate(4), 0.055);
    }
}

mod spec {
    use crate::spec::*;
    #[allow(unused_imports)]
    use std::path::Path;

    const MNIST: &str = r#"[model]
name = "seed-cnn"

[data]
format = "idx"
train_images = "mnist/train-images-idx3-ubyte.gz"
train_labels = "mnist/train-labels-idx1-ubyte.gz"
test_images = "mnist/t10k-images-idx3-ubyte.gz"
test_labels = "mnist/t10k-labels-idx1-ubyte.gz"
normalize = { mean = [0.1307], std = [0.3081] }

[train]
lr = 1e-3
epochs = 1
"#;

    fn p(text: &str, sets: &[&str]) -> Result<Spec, SpecError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        parse(Path::new("experiments/x.toml"), text, &sets).map(|r| r.spec)
    }

    #[test]
    fn parses_and_fills_defaults() {
        let s = p(MNIST, &[]).unwrap();
        assert_eq!(s.model.name, ModelName::SeedCnn);
        assert_eq!(s.train.batch_size, 64);
        assert_eq!(s.train.optimizer, OptimizerName::Adam);
        assert_eq!(
            s.data.train_images,
            vec!["mnist/train-images-idx3-ubyte.gz"]
        );
        let mlp = p(MNIST, &["model.name=mlp"]).unwrap();
        assert_eq!(mlp.model.hidden, Some(vec![128]));
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = MNIST.replace("epochs = 1", "epochs = 1\nlearning_rate = 3");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("experiments/x.toml:15:1"), "{e}");
        assert!(e.contains("learning_rate"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = MNIST.replace("epochs = 1", "epochs = \"ten\"");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(e.contains("experiments/x.toml:14:10"), "{e}");
        assert!(e.contains("train.epochs"), "{e}");
    }

    #[test]
    fn a_missing_format_is_named() {
        let text = MNIST.replace("format = \"idx\"\n", "");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(
            e.contains("data.train_images: data.format is image-folder (its default)"),
            "{e}"
        );
        assert!(e.contains("experiments/x.toml:"), "{e}");
    }

    #[test]
    fn overrides_follow_design_rules() {
        let s = p(
            MNIST,
            &[
                "train.epochs=3",
                "train.lr=0.01",
                "model.name=mlp",
                "model.hidden=[64,32]",
            ],
        )
        .unwrap();
        assert_eq!(s.train.epochs, 3);
        assert_eq!(s.train.lr, 0.01);
        assert_eq!(s.model.hidden, Some(vec![64, 32]));
        // Strings: raw text unless quoted; numbers-looking text stays a string.
        let s = p(MNIST, &["train.device=cpu"]).unwrap();
        assert_eq!(s.train.device, "cpu");
        let s = p(MNIST, &["train.device=\"cpu\""]).unwrap();
        assert_eq!(s.train.device, "cpu");
        let s = p(MNIST, &["data.train_labels=2024"]).unwrap();
        assert_eq!(s.data.train_labels, "2024");
    }

    #[test]
    fn override_errors_name_the_key() {
        let e = p(MNIST, &["train.epochs=banana"]).unwrap_err().to_string();
        assert!(e.starts_with("--set train.epochs=banana"), "{e}");
        let e = p(MNIST, &["train.nope=1"]).unwrap_err().to_string();
        assert!(
            e.contains("--set train.nope=1") && e.contains("nope"),
            "{e}"
        );
        let e = p(MNIST, &["trainepochs"]).unwrap_err().to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        let e = p(
            MNIST,
            &["train.early_stopping.patience=0", "data.val_limit=5"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--set train.early_stopping.patience=0"),
            "{e}"
        );
        let e = p(MNIST, &["train.lr=-1"]).unwrap_err().to_string();
        assert!(
            e.contains("--set train.lr=-1") && e.contains("train.lr"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_point_at_the_file_line() {
        let text = MNIST.replace("lr = 1e-3", "lr = 0.0");
        let e = p(&text, &[]).unwrap_err().to_string();
        assert!(
            e.contains("experiments/x.toml:13") && e.contains("train.lr"),
            "{e}"
        );
        let e = p(MNIST, &["model.hidden=[10]"]).unwrap_err().to_string();
        assert!(e.contains("does not apply"), "{e}");
        let e = p(MNIST, &["model.width=8"]).unwrap_err().to_string();
        assert!(
            e.contains("model.width") && e.contains("does not apply"),
            "{e}"
        );
        let r = p(MNIST, &["model.name=resnet18"]).unwrap();
        assert_eq!(r.model.width, Some(64));
        assert!(p(MNIST, &["model.name=resnet18", "model.width=0"]).is_err());
    }

    #[test]
    fn flatten_lists_resolved_keys() {
        let s = p(MNIST, &[]).unwrap();
        let flat = flatten(&s);
        let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"train.batch_size"));
        assert!(keys.contains(&"data.normalize.mean"));
        for (k, _) in &flat {
            let root = k.split('.').take(2).collect::<Vec<_>>().join(".");
            assert!(
                keys::is_known(k) && keys::is_known(&root),
                "{k} is not in spec::keys::SPEC_KEYS"
            );
        }
    }

    #[test]
    fn classes_and_class_weights_are_checked() {
        let s = p(
            MNIST,
            &[
                "data.classes=[3, 5]",
                "data.class_limit={5 = 20}",
                "train.class_weights=inverse-frequency",
            ],
        )
        .unwrap();
        assert_eq!(s.data.classes, vec![3, 5]);
        assert_eq!(
            s.data.class_caps().unwrap(),
            BTreeMap::from([(5u8, 20usize)])
        );
        assert_eq!(
            s.train.class_weights,
            Some(ClassWeights::Rule(ClassWeightRule::InverseFrequency))
        );
        let s = p(MNIST, &["train.class_weights=[1, 2.5]"]).unwrap();
        assert_eq!(
            s.train.class_weights,
            Some(ClassWeights::Explicit(vec![1.0, 2.5]))
        );
        for (sets, key) in [
            (&["data.classes=[3, 3]"][..], "data.classes"),
            (&["data.classes=[3]"][..], "data.classes"),
            (&["data.classes=[300]"][..], "data.classes"),
            (&["data.class_limit={x = 2}"][..], "data.class_limit"),
            (&["data.class_limit={1 = 0}"][..], "data.class_limit"),
            (
                &["data.classes=[3, 5]", "data.class_limit={4 = 2}"][..],
                "data.class_limit",
            ),
            (&["train.class_weights=[1, -1]"][..], "train.class_weights"),
            (&["train.class_weights=balanced"][..], "train.class_weights"),
        ] {
            let e = p(MNIST, sets).unwrap_err().to_string();
            assert!(e.contains(key), "{sets:?}: {e}");
        }
    }

    #[test]
    fn validation_and_early_stopping_are_checked() {
        let s = p(
            MNIST,
            &[
                "data.val_fraction=0.2",
                "train.early_stopping={patience = 3, metric = \"val_accuracy\"}",
            ],
        )
        .unwrap();
        let stop = s.train.early_stopping.unwrap();
        assert_eq!((stop.patience, stop.metric), (3, StopMetric::ValAccuracy));
        assert_eq!(stop.min_delta, 0.0);
        let default_metric = p(
            MNIST,
            &["data.val_limit=10", "train.early_stopping={patience = 1}"],
        )
        .unwrap();
        assert_eq!(
            default_metric.train.early_stopping.unwrap().metric,
            StopMetric::ValLoss
        );
        for sets in [
            &["data.val_fraction=1.0"][..],
            &["data.val_fraction=0.1", "data.val_limit=10"][..],
            &["train.early_stopping={patience = 2}"][..],
            &["data.val_limit=10", "train.early_stopping={patience = 0}"][..],
            &[
                "data.val_limit=10",
                "train.early_stopping={patience = 1, metric = \"eval_loss\"}",
            ][..],
        ] {
            assert!(p(MNIST, sets).is_err(), "{sets:?}");
        }
    }

    #[test]
    fn freeze_prefixes_are_checked() {
        let s = p(
            MNIST,
            &["init.from=run/f-x/mnist-cnn/1", "init.freeze=[\"conv.\"]"],
        )
        .unwrap();
        assert_eq!(s.init.freeze, vec!["conv."]);
        let one = p(MNIST, &["init.from=v1", "init.freeze=conv."]).unwrap();
        assert_eq!(one.init.freeze, vec!["conv."]);
        for sets in [
            &["init.freeze=[\"conv.\"]"][..],
            &["init.from=v1", "init.freeze=[\"conv\"]"][..],
            &["init.from=v1", "init.freeze=[\"\"]"][..],
        ] {
            let e = p(MNIST, sets).unwrap_err().to_string();
            assert!(e.contains("init.freeze"), "{sets:?}: {e}");
        }
    }

    #[test]
    fn experiment_names_are_checked() {
        assert!(check_name("mnist-cnn").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("").is_err());
    }
}

mod normalize {
    use crate::spec::*;
    use std::path::Path;

    #[test]
    fn a_nan_or_infinite_normalisation_is_a_spec_error() {
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/mnist-cnn.toml"),
        )
        .unwrap();
        for value in ["nan", "inf", "-inf"] {
            for set in [
                format!("data.normalize={{ mean = [{value}], std = [0.3081] }}"),
                format!("data.normalize={{ mean = [0.1307], std = [{value}] }}"),
            ] {
                let e = parse(
                    Path::new("experiments/x.toml"),
                    &base,
                    std::slice::from_ref(&set),
                )
                .unwrap_err()
                .to_string();
                assert!(e.contains("data.normalize"), "{set}: {e}");
                assert!(e.contains(&format!("--set {set}")), "{set}: {e}");
            }
        }
    }
}
