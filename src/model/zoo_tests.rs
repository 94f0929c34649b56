//! resnet50, vit and the ResNet stems: shapes, tensor names and counts as torchvision and
//! Hugging Face have them, the forward pass of candle-transformers' ViT, gradients and one
//! training step on the CPU.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Optimizer, VarBuilder};

use super::*;

fn spec(name: ModelName) -> ModelSpec {
    ModelSpec::named(name)
}

const MNIST: ImageShape = ImageShape {
    channels: 1,
    height: 28,
    width: 28,
};
const CIFAR: ImageShape = ImageShape {
    channels: 3,
    height: 32,
    width: 32,
};

/// A batch of `n` images of `shape`, uniform in ±1 from a fixed stream.
fn images(n: usize, shape: ImageShape) -> Result<Tensor> {
    let values = ExpRng::new(3, Purpose::Init).uniform(n * shape.size(), 1.0);
    Tensor::from_vec(
        values,
        (n, shape.channels, shape.height, shape.width),
        &Device::Cpu,
    )
}

fn labels(n: usize, classes: usize) -> Result<Tensor> {
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    Tensor::from_vec(labels, n, &Device::Cpu)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// One SGD step on one batch in training mode: the loss before and after it, and whether
/// every trained parameter got a gradient.
fn train_step(model: &Model, x: &Tensor, y: &Tensor) -> Result<(f32, f32, Vec<String>)> {
    let mut rng = ExpRng::new(1, Purpose::Dropout);
    let loss = |rng: &mut ExpRng| -> Result<Tensor> {
        let logits = model.forward(x, &mut Mode::Train(rng))?;
        candle_nn::loss::cross_entropy(&logits, y)
    };
    let before = loss(&mut rng)?;
    let grads = before.backward()?;
    let without: Vec<String> = model
        .params()
        .named()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(k, _)| k.clone())
        .collect();
    let mut sgd = candle_nn::SGD::new(model.params().vars(), 0.01)?;
    sgd.step(&grads)?;
    let after = loss(&mut rng)?;
    Ok((before.to_scalar()?, after.to_scalar()?, without))
}

/// torchvision's `resnet50()` and `resnet18()` have 25,557,032 and 11,689,512 parameters with
/// the ImageNet stem, width 64, RGB and 1000 classes; exp's have the same.
#[test]
fn resnets_have_torchvisions_parameter_counts() -> Result<()> {
    for (name, count) in [
        (ModelName::Resnet50, 25_557_032),
        (ModelName::Resnet18, 11_689_512),
    ] {
        let mut s = spec(name);
        s.stem = Some(Stem::Imagenet);
        let m = Model::new(&s, CIFAR, 1000, 1, &Device::Cpu)?;
        assert_eq!(m.params().count(), count, "{}", name.as_str());
    }
    Ok(())
}

/// ResNet-50's tensors carry torchvision's names and shapes: bottlenecks of 3, 4, 6 and 3
/// blocks, the stride on the 3×3 convolution, a downsampling projection at the first block of
/// each stage, running statistics as buffers.
#[test]
fn resnet50_names_and_shapes_are_torchvisions() -> Result<()> {
    let mut s = spec(ModelName::Resnet50);
    s.width = Some(4);
    let m = Model::new(&s, MNIST, 10, 1, &Device::Cpu)?;
    let t = m.params().tensors();
    let dims = |name: &str| t.get(name).map(|t| t.dims().to_vec());
    assert_eq!(dims("conv1.weight"), Some(vec![4, 1, 3, 3]));
    assert_eq!(dims("layer1.0.conv1.weight"), Some(vec![4, 4, 1, 1]));
    assert_eq!(dims("layer1.0.conv3.weight"), Some(vec![16, 4, 1, 1]));
    assert_eq!(
        dims("layer1.0.downsample.0.weight"),
        Some(vec![16, 4, 1, 1])
    );
    assert_eq!(dims("layer2.0.conv2.weight"), Some(vec![8, 8, 3, 3]));
    assert_eq!(dims("layer4.2.bn3.running_var"), Some(vec![128]));
    assert_eq!(dims("fc.weight"), Some(vec![10, 128]));
    assert_eq!(dims("layer1.1.downsample.0.weight"), None);
    let blocks = |stage: usize| {
        (0..10)
            .filter(|i| t.contains_key(&format!("layer{stage}.{i}.conv1.weight")))
            .count()
    };
    assert_eq!([1, 2, 3, 4].map(blocks), [3, 4, 6, 3]);
    // 16 blocks × 3 convs + 4 projections + the stem: 53 convolutions, each with a batch norm.
    let running: Vec<_> = t.keys().filter(|k| k.ends_with(".running_mean")).collect();
    assert_eq!(running.len(), 53);
    assert!(!m.params().named().any(|(k, _)| k.contains("running")));
    // The stride is on the 3×3 convolution (v1.5) and on the projection.
    let Architecture::ResNet50(net) = &m.architecture else {
        panic!("not a ResNet-50")
    };
    let (_, first) = &net.blocks[3];
    assert_eq!(
        (first.conv1.config().stride, first.conv2.config().stride),
        (1, 2)
    );
    assert_eq!(
        first.downsample.as_ref().map(|(c, _)| c.config().stride),
        Some(2)
    );
    Ok(())
}

/// ResNet-50 with either stem and ResNet-18 with the ImageNet stem: logits of the right shape,
/// a gradient for every parameter, batch norm's running statistics updated, and one SGD step
/// that lowers the loss on its batch.
#[test]
fn resnets_train_one_step_with_either_stem() -> Result<()> {
    for (name, stem, shape) in [
        (ModelName::Resnet50, Stem::Cifar, MNIST),
        (ModelName::Resnet50, Stem::Imagenet, CIFAR),
        (ModelName::Resnet18, Stem::Imagenet, CIFAR),
    ] {
        let mut s = spec(name);
        s.width = Some(4);
        s.stem = Some(stem);
        let m = Model::new(&s, shape, 10, 1, &Device::Cpu)?;
        let x = images(8, shape)?;
        assert_eq!(m.forward(&x, &mut Mode::Eval)?.dims(), &[8, 10]);
        let (before, after, without) = train_step(&m, &x, &labels(8, 10)?)?;
        let what = format!("{} {stem:?}", name.as_str());
        assert!(without.is_empty(), "{what}: no gradient for {without:?}");
        assert!(after < before, "{what}: loss {before} → {after}");
        let mean = m.params().tensors()["bn1.running_mean"].to_vec1::<f32>()?;
        assert!(mean.iter().any(|v| *v != 0.0), "{what}: running mean");
        let stem_conv = m.params().tensors()["conv1.weight"].dims().to_vec();
        let k = if stem == Stem::Imagenet { 7 } else { 3 };
        assert_eq!(stem_conv, [4, shape.channels, k, k], "{what}");
    }
    Ok(())
}

#[test]
fn resnets_refuse_images_too_small_for_their_stem() {
    let mut s = spec(ModelName::Resnet50);
    s.stem = Some(Stem::Imagenet);
    let err = Model::new(&s, MNIST, 10, 1, &Device::Cpu)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("model resnet50 needs images of at least 32×32 pixels, the data has 28×28")
    );
}

/// The ImageNet stem's 3×3, stride-2, padding-1 max pool equals a direct loop over the
/// windows (torch's definition, -∞ padding) on even and odd sizes, and has a gradient: 1 for
/// each window's maximum.
#[test]
fn stem_max_pool_is_torchs() -> Result<()> {
    for (h, w) in [(8, 8), (7, 9), (1, 2)] {
        let x = images(
            2,
            ImageShape {
                channels: 3,
                height: h,
                width: w,
            },
        )?
        .relu()?;
        let ours = resnet::max_pool_3x3_s2(&x)?;
        let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        assert_eq!(ours.dims(), &[2, 3, oh, ow]);
        let flat = x.flatten_all()?.to_vec1::<f32>()?;
        let got = ours.flatten_all()?.to_vec1::<f32>()?;
        let mut expected = Vec::new();
        for plane in 0..6 {
            for i in 0..oh {
                for j in 0..ow {
                    let mut m = f32::NEG_INFINITY;
                    for y in (2 * i).saturating_sub(1)..(2 * i + 2).min(h) {
                        for x in (2 * j).saturating_sub(1)..(2 * j + 2).min(w) {
                            m = m.max(flat[plane * h * w + y * w + x]);
                        }
                    }
                    expected.push(m);
                }
            }
        }
        assert_eq!(got, expected, "{h}×{w}");
    }
    let v = candle_core::Var::from_tensor(
        &images(
            1,
            ImageShape {
                channels: 1,
                height: 6,
                width: 6,
            },
        )?
        .abs()?,
    )?;
    let grads = resnet::max_pool_3x3_s2(v.as_tensor())?
        .sum_all()?
        .backward()?;
    let g = match grads.get(v.as_tensor()) {
        Some(g) => g.sum_all()?.to_scalar::<f32>()?,
        None => panic!("no gradient through the max pool"),
    };
    // Nine windows, one maximum each (the values are distinct).
    assert_eq!(g, 9.0);
    Ok(())
}

fn vit_spec(width: usize, depth: usize, heads: usize, patch: usize) -> ModelSpec {
    ModelSpec {
        width: Some(width),
        depth: Some(depth),
        heads: Some(heads),
        patch_size: Some(patch),
        mlp_dim: Some(2 * width),
        dropout: Some(0.0),
        ..spec(ModelName::Vit)
    }
}

/// ViT's tensors carry Hugging Face's `ViTForImageClassification` names and shapes.
#[test]
fn vit_names_and_shapes_are_hugging_faces() -> Result<()> {
    let m = Model::new(&vit_spec(16, 2, 2, 7), MNIST, 10, 1, &Device::Cpu)?;
    let t = m.params().tensors();
    let dims = |name: &str| t.get(name).map(|t| t.dims().to_vec());
    assert_eq!(dims("vit.embeddings.cls_token"), Some(vec![1, 1, 16]));
    assert_eq!(
        dims("vit.embeddings.position_embeddings"),
        Some(vec![1, 17, 16])
    );
    assert_eq!(
        dims("vit.embeddings.patch_embeddings.projection.weight"),
        Some(vec![16, 1, 7, 7])
    );
    let layer = "vit.encoder.layer.1";
    for (name, shape) in [
        ("attention.attention.query.weight", vec![16, 16]),
        ("attention.attention.key.bias", vec![16]),
        ("attention.attention.value.weight", vec![16, 16]),
        ("attention.output.dense.weight", vec![16, 16]),
        ("intermediate.dense.weight", vec![32, 16]),
        ("output.dense.weight", vec![16, 32]),
        ("layernorm_before.weight", vec![16]),
        ("layernorm_after.bias", vec![16]),
    ] {
        assert_eq!(dims(&format!("{layer}.{name}")), Some(shape), "{name}");
    }
    assert_eq!(dims("vit.layernorm.weight"), Some(vec![16]));
    assert_eq!(dims("classifier.weight"), Some(vec![10, 16]));
    // 2 layers × 16 tensors, cls token, position embeddings, projection weight and bias,
    // final norm, classifier: what transformers writes for this configuration.
    assert_eq!(t.len(), 2 * 16 + 4 + 2 + 2);
    assert_eq!(m.head_prefix(), "classifier.");
    Ok(())
}

/// candle-transformers' ViT (`models::vit::Model`, Hugging Face's computation), built from
/// exp's tensors, computes exp's logits: the names, shapes and the computation agree.
#[test]
fn vit_computes_candle_transformers_logits() -> Result<()> {
    for (shape, spec) in [
        (MNIST, vit_spec(16, 2, 2, 7)),
        (CIFAR, vit_spec(24, 1, 3, 4)),
    ] {
        let m = Model::new(&spec, shape, 10, 7, &Device::Cpu)?;
        let Architecture::Vit(net) = &m.architecture else {
            panic!("not a ViT")
        };
        let tensors: HashMap<String, Tensor> = m.params().tensors().into_iter().collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let reference = candle_transformers::models::vit::Model::new(&net.config, 10, vb)?;
        let x = images(3, shape)?;
        let theirs = reference.forward(&x)?;
        let ours = m.forward(&x, &mut Mode::Eval)?;
        assert_eq!(ours.dims(), &[3, 10]);
        let diff = max_diff(&ours, &theirs)?;
        assert!(diff < 1e-5, "{shape:?}: logits differ by {diff}");
    }
    Ok(())
}

/// ViT trains: a gradient for every parameter, one SGD step lowers the loss; dropout acts in
/// training only.
#[test]
fn vit_trains_one_step_with_dropout_in_training_only() -> Result<()> {
    let mut s = vit_spec(16, 2, 4, 4);
    s.dropout = Some(0.1);
    let m = Model::new(&s, CIFAR, 10, 1, &Device::Cpu)?;
    let x = images(8, CIFAR)?;
    let e1 = m.forward(&x, &mut Mode::Eval)?;
    let e2 = m.forward(&x, &mut Mode::Eval)?;
    assert_eq!(max_diff(&e1, &e2)?, 0.0);
    let mut rng = ExpRng::new(1, Purpose::Dropout);
    let t = m.forward(&x, &mut Mode::Train(&mut rng))?;
    assert!(max_diff(&e1, &t)? > 0.0, "dropout changed nothing");
    let (before, after, without) = train_step(&m, &x, &labels(8, 10)?)?;
    assert!(without.is_empty(), "no gradient for {without:?}");
    assert!(after < before, "loss {before} → {after}");
    Ok(())
}

#[test]
fn vit_refuses_a_patch_size_that_does_not_divide_the_image() {
    let err = Model::new(&vit_spec(16, 1, 2, 5), MNIST, 10, 1, &Device::Cpu)
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("model vit: model.patch_size = 5 must divide the image's height and width, the data has 28×28")
    );
}

/// The models `Layer` cannot describe say so (exp export refuses them by name); resnet18
/// with the CIFAR stem is still described.
#[test]
fn layers_describe_only_what_the_exporters_write() -> Result<()> {
    let mut r18 = spec(ModelName::Resnet18);
    r18.width = Some(4);
    assert!(Model::new(&r18, CIFAR, 10, 1, &Device::Cpu)?
        .layers()
        .is_some());
    r18.stem = Some(Stem::Imagenet);
    let mut r50 = spec(ModelName::Resnet50);
    r50.width = Some(4);
    for s in [r18, r50, vit_spec(16, 1, 2, 4)] {
        let m = Model::new(&s, CIFAR, 10, 1, &Device::Cpu)?;
        assert!(m.layers().is_none(), "{}", s.name.as_str());
    }
    Ok(())
}
