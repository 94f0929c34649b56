//! The readers on the real files of the data root.

use exp::spec::{DataFormat, DataSpec};

use crate::common::*;

fn spec(
    format: DataFormat,
    train: &str,
    train_labels: &str,
    test: &str,
    test_labels: &str,
) -> DataSpec {
    DataSpec {
        format,
        train_images: vec![train.into()],
        train_labels: train_labels.into(),
        test_images: vec![test.into()],
        test_labels: test_labels.into(),
        normalize: None,
        train_limit: 0,
        val_limit: 0,
        val_fraction: 0.0,
        test_limit: 0,
        num_classes: None,
        classes: Vec::new(),
        class_limit: Default::default(),
        class_names: Vec::new(),
        path: String::new(),
        channels: None,
        image_size: None,
        test_fraction: 0.0,
        split_seed: None,
        skip_corrupt: false,
        dataset: String::new(),
    }
}

#[test]
fn cifar10_sample_reads_as_published() {
    let root = data_root();
    let s = spec(
        DataFormat::Cifar10,
        "cifar10-sample/test_batch_first20.bin",
        "",
        "cifar10-sample/test_batch_first20.bin",
        "",
    );
    let d = exp::data::Dataset::load(&root, &s, 1, &|k| k.to_string(), None).unwrap();
    assert_eq!(d.test.len, 20);
    assert_eq!(d.classes, 10);
    assert_eq!(
        d.test.labels,
        vec![3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    );
    // Image 0, row 0 starts with RGB [158,112,49], [159,111,47] (the README's spot check).
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    d.gather(&d.test, &[0], &mut images, &mut labels);
    let px = |v: f32| (v * 255.0).round() as u8;
    assert_eq!(
        [px(images[0]), px(images[1024]), px(images[2048])],
        [158, 112, 49]
    );
    assert_eq!(
        [px(images[1]), px(images[1025]), px(images[2049])],
        [159, 111, 47]
    );
}

#[test]
fn mnist_gz_and_raw_agree_and_limits_select() {
    let env = Env::new();
    let root = data_root();
    let raw_root = env.path("raw");
    std::fs::create_dir_all(raw_root.join("mnist")).unwrap();
    for f in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        let (_, bytes) = exp::data::read_data_file(&root, &format!("mnist/{f}.gz")).unwrap();
        std::fs::write(raw_root.join("mnist").join(f), bytes).unwrap();
    }
    let mut s = spec(
        DataFormat::Idx,
        "mnist/t10k-images-idx3-ubyte.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
        "mnist/t10k-images-idx3-ubyte.gz",
        "mnist/t10k-labels-idx1-ubyte.gz",
    );
    s.train_limit = 300;
    s.val_limit = 100;
    s.test_limit = 50;
    let a = exp::data::Dataset::load(&root, &s, 7, &|k| k.to_string(), None).unwrap();
    let b = exp::data::Dataset::load(&raw_root, &s, 7, &|k| k.to_string(), None).unwrap();
    assert_eq!(
        a.train_files, b.train_files,
        "fingerprints over decompressed bytes"
    );
    assert_eq!(a.train.blake3, b.train.blake3);
    assert_eq!(
        (a.train.len, a.val.as_ref().unwrap().len, a.test.len),
        (300, 100, 50)
    );
    assert_eq!(a.classes, 10);
    // Validation and training subsets never overlap.
    let train: std::collections::HashSet<_> =
        a.train.selection.clone().unwrap().into_iter().collect();
    assert!(a
        .val
        .as_ref()
        .unwrap()
        .selection
        .as_ref()
        .unwrap()
        .iter()
        .all(|i| !train.contains(i)));
    // The test subset is the first N in file order.
    assert_eq!(
        a.test.selection.clone().unwrap(),
        (0..50).collect::<Vec<u32>>()
    );
    let c = exp::data::Dataset::load(&root, &s, 8, &|k| k.to_string(), None).unwrap();
    assert_ne!(a.train.blake3, c.train.blake3);
    assert_eq!(a.test.blake3, c.test.blake3);
}
