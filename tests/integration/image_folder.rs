//! Image folders (`data.format = "image-folder"`): real MNIST written out as PNG class folders
//! and the real photos of image-samples/ (ImageNet progressive JPEGs, CIFAR-100 and
//! Fashion-MNIST PNGs); the decoded cache, its invalidation and pruning; corrupt files.

use std::path::{Path, PathBuf};

use exp::data::{Dataset, Split};
use exp::spec::{DataFormat, DataSpec};

use crate::common::{assert_exit_2, describe, record_at, Env};

/// A data root for one test: `mnist` and `image-samples` linked from the real data root, and
/// room for the folders a test writes.
pub fn scratch_data_root(env: &mut Env) -> PathBuf {
    let root = env.path("data");
    std::fs::create_dir_all(&root).unwrap();
    for name in ["mnist", "fashion-mnist", "image-samples"] {
        std::os::unix::fs::symlink(env.data.join(name), root.join(name)).unwrap();
    }
    env.data = root.clone();
    root
}

/// Writes the first `train` and `test` images of real MNIST (read from the data root `root`)
/// as `<root>/<name>/{train,test}/<label>/<index>.png`.
pub fn mnist_png_folder(root: &Path, name: &str, train: usize, test: usize) -> PathBuf {
    mnist_pngs_into(root, &root.join(name), train, test)
}

/// As [`mnist_png_folder`], into any `folder`.
pub fn mnist_pngs_into(root: &Path, folder: &Path, train: usize, test: usize) -> PathBuf {
    let folder = folder.to_path_buf();
    for (split, images, labels, n) in [
        (
            "train",
            "mnist/train-images-idx3-ubyte.gz",
            "mnist/train-labels-idx1-ubyte.gz",
            train,
        ),
        (
            "test",
            "mnist/t10k-images-idx3-ubyte.gz",
            "mnist/t10k-labels-idx1-ubyte.gz",
            test,
        ),
    ] {
        let (path, bytes) = exp::data::read_data_file(root, images).unwrap();
        let pixels = exp::data::idx::parse(&bytes, &path).unwrap();
        let (path, bytes) = exp::data::read_data_file(root, labels).unwrap();
        let labels = exp::data::idx::parse(&bytes, &path).unwrap();
        for i in 0..n {
            let dir = folder.join(split).join(labels.data[i].to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let image =
                image::GrayImage::from_raw(28, 28, pixels.data[i * 784..(i + 1) * 784].to_vec())
                    .unwrap();
            image.save(dir.join(format!("{i:05}.png"))).unwrap();
        }
    }
    folder
}

fn folder_spec(path: &str, channels: usize, size: [usize; 2]) -> DataSpec {
    let text = format!(
        "format = \"image-folder\"\npath = \"{path}\"\nchannels = {channels}\nimage_size = [{}, {}]\n",
        size[0], size[1]
    );
    toml::from_str(&text).unwrap()
}

fn idx_spec() -> DataSpec {
    toml::from_str(
        "format = \"idx\"\ntrain_images = \"mnist/train-images-idx3-ubyte.gz\"\ntrain_labels = \"mnist/train-labels-idx1-ubyte.gz\"\ntest_images = \"mnist/t10k-images-idx3-ubyte.gz\"\ntest_labels = \"mnist/t10k-labels-idx1-ubyte.gz\"\n",
    )
    .unwrap()
}

/// Every example of `split`, as the model sees it.
fn examples(data: &Dataset, split: &Split) -> (Vec<f32>, Vec<u32>) {
    let all: Vec<u32> = (0..split.len as u32).collect();
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    data.gather(split, &all, &mut images, &mut labels);
    (images, labels)
}

fn load(root: &Path, spec: &DataSpec, cache: Option<&Path>) -> Result<Dataset, String> {
    Dataset::load(root, spec, 1, &|k| k.to_string(), cache).map_err(|e| e.to_string())
}

fn cache_entries(cache: &Path) -> Vec<PathBuf> {
    exp::data::cache::entries(cache)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect()
}

#[test]
fn mnist_pngs_decode_to_the_idx_pixels_and_the_cache_is_used_and_never_stale() {
    let mut env = Env::new();
    let root = scratch_data_root(&mut env);
    let folder = mnist_png_folder(&root, "mnist-png", 300, 100);
    let cache = env.path("cache");
    let spec = folder_spec("mnist-png", 1, [28, 28]);
    let data = load(&root, &spec, Some(&cache)).unwrap();
    assert_eq!(data.classes, 10);
    assert_eq!(
        data.class_names.as_deref().unwrap(),
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    );
    assert_eq!((data.train.len, data.test.len), (300, 100));
    assert_eq!(data.train_files[0].path, "mnist-png/train");
    assert_eq!(data.test_files[0].path, "mnist-png/test");

    // Example for example (files sorted by class folder, then name), the PNGs give IDX's bytes.
    let idx = load(&root, &idx_spec(), None).unwrap();
    let (idx_train, idx_labels) = examples(&idx, &idx.train);
    let (train, labels) = examples(&data, &data.train);
    let mut files: Vec<(u32, usize)> = Vec::new();
    for label in 0..10u32 {
        let mut names: Vec<usize> = std::fs::read_dir(folder.join("train").join(label.to_string()))
            .map(|d| {
                d.map(|e| {
                    e.unwrap().file_name().to_str().unwrap()[..5]
                        .parse()
                        .unwrap()
                })
                .collect()
            })
            .unwrap_or_default();
        names.sort();
        files.extend(names.into_iter().map(|i| (label, i)));
    }
    assert_eq!(files.len(), 300);
    for (k, (label, i)) in files.iter().enumerate() {
        assert_eq!(labels[k], *label);
        assert_eq!(idx_labels[*i], *label);
        assert_eq!(
            train[k * 784..(k + 1) * 784],
            idx_train[i * 784..(i + 1) * 784]
        );
    }

    // One entry per split; loading again maps the same entries (a byte changed inside one
    // shows through, so the cache is what is read), and without a cache the same values.
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let uncached = load(&root, &spec, None).unwrap();
    assert_eq!(
        examples(&uncached, &uncached.train),
        (train.clone(), labels.clone())
    );
    let train_entry = entries
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 300 * 784)
        .unwrap()
        .clone();
    let original = std::fs::read(&train_entry).unwrap();
    let mut altered = original.clone();
    altered[64] = altered[64].wrapping_add(1); // the first pixel of the first example
    std::fs::write(&train_entry, &altered).unwrap();
    let hit = load(&root, &spec, Some(&cache)).unwrap();
    assert_ne!(examples(&hit, &hit.train).0[0], train[0]);
    std::fs::write(&train_entry, &original).unwrap();
    assert_eq!(cache_entries(&cache).len(), 2);

    // A file replaced by another image: a new entry, with the new pixels.
    let (first_label, first_index) = files[0];
    let replaced = folder
        .join("train")
        .join(first_label.to_string())
        .join(format!("{first_index:05}.png"));
    let donor = folder.join("test").join("7");
    let donor = std::fs::read_dir(donor)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&donor, &replaced).unwrap();
    let changed = load(&root, &spec, Some(&cache)).unwrap();
    assert_ne!(changed.train.blake3, data.train.blake3);
    assert_eq!(changed.test.blake3, data.test.blake3);
    assert_eq!(cache_entries(&cache).len(), 3);
    let donor_pixels = exp::data::decode::decode_image(
        &std::fs::read(&donor).unwrap(),
        exp::data::ImageShape {
            channels: 1,
            height: 28,
            width: 28,
        },
    )
    .unwrap();
    let (changed_train, _) = examples(&changed, &changed.train);
    let expected: Vec<f32> = donor_pixels.iter().map(|&b| b as f32 / 255.0).collect();
    assert_eq!(changed_train[..784], expected[..]);

    // Other decode settings are other entries.
    let bigger = load(&root, &folder_spec("mnist-png", 3, [32, 32]), Some(&cache)).unwrap();
    assert_eq!(bigger.shape.size(), 3 * 32 * 32);
    assert_eq!(cache_entries(&cache).len(), 5);
    assert_eq!(exp::data::cache::prune(&cache, 0).unwrap().len(), 5);
}

#[test]
fn photos_in_class_folders_split_by_fraction_from_the_split_seed() {
    let mut env = Env::new();
    let root = scratch_data_root(&mut env);
    // Three classes from three sources: CIFAR-100 PNGs (RGB 32×32), Fashion-MNIST PNGs
    // (grey 28×28) and ImageNet photos (progressive JPEG, 512×512).
    let folder = root.join("photos");
    for entry in std::fs::read_dir(root.join("image-samples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some((class, _)) = name.split_once('_') else {
            continue;
        };
        if !(name.ends_with(".png") || name.ends_with(".jpg")) {
            continue;
        }
        std::fs::create_dir_all(folder.join(class)).unwrap();
        std::fs::copy(&path, folder.join(class).join(&name)).unwrap();
    }
    std::fs::write(folder.join("README.txt"), "not an image: left alone").unwrap();
    std::fs::write(folder.join("imagenet/.DS_Store"), "junk").unwrap();
    let mut spec = folder_spec("photos", 3, [32, 32]);
    assert_eq!(
        load(&root, &spec, None).unwrap_err(),
        "photos has class folders but no train/ and test/ folders: set data.test_fraction to hold out a test set (e.g. 0.2), or split the folder"
    );
    spec.test_fraction = 0.25;
    let cache = env.path("cache");
    let a = load(&root, &spec, Some(&cache)).unwrap();
    assert_eq!(
        a.class_names.as_deref().unwrap(),
        ["cifar100", "fashionMNIST", "imagenet"]
    );
    assert_eq!((a.train.len, a.test.len), (45, 15));
    let test_a = a.test.selection.clone().unwrap();
    let train_a = a.train.selection.clone().unwrap();
    assert!(test_a.iter().all(|i| !train_a.contains(i)));
    // Another training seed, the same split; another split seed, another split.
    let b = Dataset::load(&root, &spec, 99, &|k| k.to_string(), Some(&cache)).unwrap();
    assert_eq!(b.test.selection.unwrap(), test_a);
    assert_eq!(b.test.blake3, a.test.blake3);
    spec.split_seed = Some(5);
    let c = load(&root, &spec, Some(&cache)).unwrap();
    assert_ne!(c.test.selection.clone().unwrap(), test_a);
    assert_ne!(c.test.blake3, a.test.blake3);
    // One decoded entry serves both splits.
    assert_eq!(cache_entries(&cache).len(), 1);

    // Normalisation computed over the training split: exact mean and population std.
    spec.normalize = Some(toml::from_str::<Wrap>("n = \"train\"").unwrap().n);
    let d = load(&root, &spec, Some(&cache)).unwrap();
    let n = &d.normalisation;
    assert_eq!(n.mean.len(), 3);
    let (pixels, _) = examples(&c, &c.train);
    let plane = 32 * 32;
    for ch in 0..3 {
        let values: Vec<f64> = pixels
            .chunks_exact(3 * plane)
            .flat_map(|img| img[ch * plane..(ch + 1) * plane].iter().map(|&v| v as f64))
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        assert!(
            (n.mean[ch] - mean).abs() < 1e-6,
            "{ch}: {} vs {mean}",
            n.mean[ch]
        );
        assert!((n.std[ch] - var.sqrt()).abs() < 1e-6);
    }
    let mut resolved = spec.clone();
    d.resolve_spec(&mut resolved);
    assert_eq!(resolved.num_classes, Some(3));
    assert!(matches!(
        resolved.normalize,
        Some(exp::spec::NormalizeSpec::Given(_))
    ));

    // A class in test/ that train/ lacks is an error naming it.
    let split = root.join("split");
    for (s, class) in [("train", "a"), ("train", "b"), ("test", "a"), ("test", "c")] {
        let dir = split.join(s).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            root.join("image-samples/cifar100_00_49.png"),
            dir.join("x.png"),
        )
        .unwrap();
    }
    let e = load(&root, &folder_spec("split", 3, [32, 32]), None).unwrap_err();
    assert!(
        e.contains("class folder \"c\" has no counterpart in train/"),
        "{e}"
    );
    check_against_torchvision(&env, &folder, &c);
}

#[derive(serde::Deserialize)]
struct Wrap {
    n: exp::spec::NormalizeSpec,
}

/// torchvision's `ImageFolder` with `Resize` over the same folder gives the same classes and,
/// image by image, pixels within half a grey level on average.
fn check_against_torchvision(env: &Env, folder: &Path, data: &Dataset) {
    let Some(python) = crate::export::python_tools() else {
        return;
    };
    // exp's decoded images of every file, in file order: the train and test splits together.
    let mut all: Vec<(u32, Vec<f32>)> = Vec::new();
    for split in [&data.train, &data.test] {
        let (pixels, labels) = examples(data, split);
        let size = data.shape.size();
        for (k, sel) in split.selection.as_ref().unwrap().iter().enumerate() {
            all.push((*sel, pixels[k * size..(k + 1) * size].to_vec()));
            let _ = labels[k];
        }
    }
    all.sort_by_key(|(i, _)| *i);
    let bytes: Vec<u8> = all
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&v| (v * 255.0).round() as u8))
        .collect();
    let raw = env.path("exp-decoded.raw");
    std::fs::write(&raw, bytes).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/image_folder_check.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(folder)
        .arg(&raw)
        .args(["3", "32", "32"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("vs torchvision ImageFolder:\n{report}");
    assert!(
        report.contains("classes=cifar100,fashionMNIST,imagenet images=60"),
        "{report}"
    );
    let worst: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("worst_mad="))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(worst <= 0.5, "{report}");
}

#[test]
fn runs_record_the_folder_and_refuse_or_skip_corrupt_files() {
    let mut env = Env::new();
    let root = scratch_data_root(&mut env);
    mnist_png_folder(&root, "digits", 400, 100);
    let dir = env.init_repo("repo");
    std::fs::write(
        dir.join("experiments/folder.toml"),
        "[model]\nname = \"seed-cnn\"\n\n[data]\nformat = \"image-folder\"\npath = \"digits\"\nchannels = 1\nimage_size = [28, 28]\nnormalize = \"train\"\n\n[train]\nepochs = 1\nbatch_size = 32\n",
    )
    .unwrap();
    env.git(&dir, &["add", "experiments/folder.toml"]);
    env.git(&dir, &["commit", "-qm", "folder experiment"]);
    env.exp_ok(&dir, &["run", "folder", "--quiet"]);
    let record = record_at(&env, &dir, "HEAD", "folder");
    let d = &record.params.data;
    assert_eq!(d.num_classes, Some(10));
    assert_eq!(d.channels, Some(1));
    assert_eq!(d.class_names.len(), 10);
    let Some(exp::spec::NormalizeSpec::Given(n)) = &d.normalize else {
        panic!("{:?}", d.normalize)
    };
    assert!(
        (n.mean[0] - 0.13).abs() < 0.02 && (n.std[0] - 0.31).abs() < 0.02,
        "{n:?}"
    );
    assert_eq!(record.data.train.files.len(), 1);
    assert_eq!(record.data.train.files[0].path, "digits/train");
    assert_eq!(record.data.train.examples, 400);
    assert_eq!(record.model.input, Some([1, 28, 28]));
    let ls = env.exp_ok(&dir, &["cache", "ls"]);
    assert!(ls.contains("2 decoded split(s)"), "{ls}");
    // The record re-evaluates from the folder (and the cache).
    let verify = env.exp_ok(&dir, &["verify"]);
    assert!(verify.contains("verified"), "{verify}");

    // Damaged files: an empty file, a cut PNG, a cut progressive JPEG.
    let seven = root.join("digits/train/7");
    std::fs::write(seven.join("empty.png"), b"").unwrap();
    let png = std::fs::read(root.join("image-samples/cifar100_00_49.png")).unwrap();
    std::fs::write(seven.join("cut.png"), &png[..png.len() / 2]).unwrap();
    let jpeg = std::fs::read(root.join("image-samples/imagenet_00_243.jpg")).unwrap();
    std::fs::write(seven.join("cut.jpg"), &jpeg[..jpeg.len() - 200]).unwrap();
    let out = env.exp(&dir, &["run", "folder", "--quiet"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = crate::common::stderr(&out);
    assert!(err.contains("digits/train/7/cut.jpg"), "{err}");
    assert!(err.contains("set data.skip_corrupt = true"), "{err}");
    env.exp_ok(
        &dir,
        &[
            "run",
            "folder",
            "--quiet",
            "--set",
            "data.skip_corrupt=true",
        ],
    );
    let record = record_at(&env, &dir, "HEAD", "folder");
    assert_eq!(record.data.train.skipped, 3);
    assert_eq!(record.data.train.examples, 400);
    // The entry decoded with skip_corrupt serves a run without it only to name the bad file.
    let out = env.exp(&dir, &["run", "folder", "--quiet"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(crate::common::stderr(&out).contains("digits/train/7/cut.jpg"));

    let pruned = env.exp_ok(&dir, &["cache", "prune"]);
    assert!(pruned.starts_with("removed 3 decoded split(s)"), "{pruned}");
    assert!(env
        .exp_ok(&dir, &["cache", "ls"])
        .contains("0 decoded split(s)"));
    assert_exit_2(
        &env,
        &dir,
        &["cache", "prune", "--max-size", "lots"],
        "--max-size \"lots\"",
    );

    // Spec errors come before any work, with the key.
    assert_exit_2(
        &env,
        &dir,
        &["run", "folder", "--set", "data.image_size=[0, 28]"],
        "data.image_size: height and width must be between 1 and 4096, got [0, 28]",
    );
    assert_exit_2(
        &env,
        &dir,
        &["run", "folder", "--set", "data.channels=2"],
        "data.channels: must be 1 (grey) or 3 (RGB), got 2",
    );
    assert_exit_2(
        &env,
        &dir,
        &["run", "folder", "--set", "data.test_fraction=0.2"],
        "digits has train/ and test/ folders: remove data.test_fraction",
    );
    assert_exit_2(
        &env,
        &dir,
        &["run", "folder", "--set", "data.path=nowhere"],
        "is not a folder",
    );
    assert_exit_2(
        &env,
        &dir,
        &["run", "folder", "--set", "data.format=idx"],
        "data.path: applies to data.format = \"image-folder\" only (this spec reads idx)",
    );
    let _ = DataFormat::ImageFolder;
}
