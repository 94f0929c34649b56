//! `exp device --check`: runs exp's own device kernels (max-pool forward and backward, the
//! convolutions on cuDNN or im2col in every precision over the geometries the models use, the
//! fused dropout, the augmentation kernel, a whole ResNet's batch norm and residual path forward and backward, the
//! fused Adam update) on a device and compares them with the CPU implementations, which the
//! unit tests pin to candle's reference ops. It sits above
//! `device/`, `model/` and `train/`, whose code it runs (docs/design.md §1). On a GPU this is
//! the test of the CUDA kernels; on the CPU it compares the CPU paths with themselves and
//! passes trivially.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig};

use crate::data::ImageShape;
use crate::model::{conv2d, fused_dropout, max_pool_2x2, ConvNames, Mode, Model};
use crate::rng::{ExpRng, Purpose};
use crate::spec::{ModelName, ModelSpec, OptimizerName, TrainSpec};
use crate::train::Optimizer;

/// Some of exp's kernels disagree with the reference on this device.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} kernel checks failed on {device}")]
pub struct CheckFailed {
    /// Checks outside tolerance.
    pub failed: usize,
    /// Checks run.
    pub total: usize,
    /// The device.
    pub device: String,
}

/// One comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    /// What was compared.
    pub name: String,
    /// Largest absolute difference found.
    pub max_abs_diff: f64,
    /// Allowed difference.
    pub tolerance: f64,
    /// Whether it is within tolerance.
    pub passed: bool,
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    if a.shape() != b.shape() {
        candle_core::bail!("shapes differ: {:?} vs {:?}", a.shape(), b.shape())
    }
    // NaN in either side counts as an infinite difference.
    let diff = (a - b)?.abs()?.flatten_all()?.to_vec1::<f64>()?;
    Ok(diff
        .into_iter()
        .map(|d| if d.is_nan() { f64::INFINITY } else { d })
        .fold(0.0, f64::max))
}

fn result(name: String, diff: f64, tolerance: f64) -> CheckResult {
    CheckResult {
        name,
        max_abs_diff: diff,
        tolerance,
        passed: diff <= tolerance,
    }
}

/// Values on a coarse grid so that pooling windows hold ties, which must route the gradient to
/// the first maximum on every device.
fn tie_heavy(rng: &mut ExpRng, n: usize) -> Vec<f32> {
    rng.uniform(n, 2.0)
        .into_iter()
        .map(|v| (v * 2.0).round() / 2.0)
        .collect()
}

/// Max-pool forward and backward on `device` in `dtype` against the CPU in f32 on the same
/// (dtype-representable) values: pooling selects, so the results must agree exactly.
fn max_pool(device: &Device, dtype: DType, rng: &mut ExpRng) -> Result<CheckResult> {
    let (n, c, h, w) = (3, 4, 13, 10);
    let x = Tensor::from_vec(tie_heavy(rng, n * c * h * w), (n, c, h, w), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?;
    let probe = Tensor::from_vec(
        tie_heavy(rng, n * c * (h / 2) * (w / 2)),
        (n, c, h / 2, w / 2),
        &Device::Cpu,
    )?
    .to_dtype(dtype)?
    .to_dtype(DType::F32)?;
    let grad_of = |x: &Tensor, probe: &Tensor| -> Result<(Tensor, Tensor)> {
        let var = Var::from_tensor(x)?;
        let y = max_pool_2x2(var.as_tensor())?;
        let grads = (y.to_dtype(DType::F32)? * probe.to_dtype(DType::F32)?)?
            .sum_all()?
            .backward()?;
        let g = grads
            .get(var.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?;
        Ok((y, g))
    };
    let (y_ref, g_ref) = grad_of(&x, &probe)?;
    let (y, g) = grad_of(
        &x.to_device(device)?.to_dtype(dtype)?,
        &probe.to_device(device)?.to_dtype(dtype)?,
    )?;
    let diff = max_abs_diff(&y, &y_ref)?.max(max_abs_diff(&g, &g_ref)?);
    Ok(result(
        format!("max-pool 2x2 forward+backward ({dtype:?}, odd sizes, ties)"),
        diff,
        0.0,
    ))
}

/// The profile labels of the checks' convolutions.
static CHECK_CONV: ConvNames = ConvNames {
    forward: "check conv",
    bias: "check conv bias",
    kernel_grad: "check conv kernel grad",
    input_grad: "check conv input grad",
    backward: "check conv",
    relu: "check conv relu",
};

/// exp's convolution on `device` (on a GPU: the direct first-layer kernel for an input without
/// gradient, im2col + GEMM for one with) against candle's on the CPU, output and gradients.
fn conv2d_paths(device: &Device, rng: &mut ExpRng) -> Result<CheckResult> {
    let (n, c_in, c_out, h, w, k) = (8, 3, 16, 17, 15, 3);
    let x = Tensor::from_vec(
        rng.uniform(n * c_in * h * w, 1.0),
        (n, c_in, h, w),
        &Device::Cpu,
    )?;
    let weight = rng.uniform(c_out * c_in * k * k, 0.3);
    let bias = rng.uniform(c_out, 0.3);
    let grads_on = |dev: &Device| -> Result<Vec<Tensor>> {
        let wv = Var::from_tensor(&Tensor::from_vec(weight.clone(), (c_out, c_in, k, k), dev)?)?;
        let bv = Var::from_tensor(&Tensor::from_vec(bias.clone(), c_out, dev)?)?;
        let layer = Conv2d::new(
            wv.as_tensor().clone(),
            Some(bv.as_tensor().clone()),
            Conv2dConfig::default(),
        );
        // The image-batch case (no input gradient), then an input that needs its gradient.
        let xv = Var::from_tensor(&x.to_device(dev)?)?;
        let mut out = Vec::new();
        for input in [&x.to_device(dev)?, xv.as_tensor()] {
            let ys = conv2d(&layer, input, true, &CHECK_CONV)?;
            let grads = ys.sqr()?.sum_all()?.backward()?;
            let missing = || candle_core::Error::Msg("no gradient reached a parameter".into());
            out.push(ys);
            out.push(grads.get(wv.as_tensor()).cloned().ok_or_else(missing)?);
            out.push(grads.get(bv.as_tensor()).cloned().ok_or_else(missing)?);
            if let Some(g) = grads.get(xv.as_tensor()) {
                out.push(g.clone());
            }
        }
        Ok(out)
    };
    // Relative to each tensor's scale: the GPU sums in another order than the CPU GEMM.
    let (diff, _) = max_rel_diff(&grads_on(device)?, &grads_on(&Device::Cpu)?)?;
    Ok(result(
        format!("conv2d (GPU: direct first layer, {}) output and gradients (f32; relative to the largest value)", gpu_conv_label(device)?),
        diff,
        1e-4,
    ))
}

/// The largest difference over pairs of tensors, each relative to the reference's largest
/// magnitude (at least 1): GPU and CPU sum in other orders. Also returns which pair it was.
fn max_rel_diff(ours: &[Tensor], reference: &[Tensor]) -> Result<(f64, usize)> {
    if ours.len() != reference.len() {
        candle_core::bail!(
            "{} tensors on the device, {} on the CPU",
            ours.len(),
            reference.len()
        )
    }
    let mut worst = (0.0, 0);
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let scale = b
            .to_dtype(DType::F64)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?
            .max(1.0);
        let diff = max_abs_diff(a, b)? / scale;
        if diff > worst.0 || diff.is_nan() {
            worst = (diff, i);
        }
    }
    Ok(worst)
}

/// The precisions a GPU convolution runs in: name, activation dtype, TF32 allowed, tolerance
/// (relative to the largest value). f32 must be exact FP32: TF32's 10-bit mantissa would miss
/// its tolerance by an order of magnitude.
#[cfg(feature = "cuda")]
const CONV_PRECISIONS: [(&str, DType, bool, f64); 4] = [
    ("f32", DType::F32, false, 1e-4),
    ("tf32", DType::F32, true, 1e-2),
    ("bf16", DType::BF16, false, 3e-2),
    ("f16", DType::F16, false, 1e-2),
];
#[cfg(not(feature = "cuda"))]
const CONV_PRECISIONS: [(&str, DType, bool, f64); 1] = [("f32", DType::F32, false, 1e-4)];

/// Convolutions over the geometries the models use (stride 2, 1×1 projections, padding, odd
/// sizes, batch 1, with and without bias), each with an input that needs its gradient, in
/// every precision: output, input, kernel and bias gradients against candle's on the CPU.
fn conv2d_geometries(device: &Device, rng: &mut ExpRng) -> Result<Vec<CheckResult>> {
    let shapes = [
        (4, 16, 32, 16, 16, 3, 2, 1, false),
        (4, 16, 32, 16, 16, 1, 2, 0, false),
        (1, 8, 8, 9, 7, 3, 1, 1, true),
        (16, 32, 64, 26, 26, 3, 1, 0, true),
        // Large enough that cuDNN picks tensor-core algorithms when TF32 is allowed.
        (32, 64, 64, 32, 32, 3, 1, 1, true),
    ];
    let mut cases = Vec::new();
    for (n, c_in, c_out, h, w, k, stride, padding, with_bias) in shapes {
        let case = ConvCase {
            input: (n, c_in, h, w),
            kernel: (c_out, c_in, k, k),
            stride,
            padding,
            with_bias,
            x: rng.uniform(n * c_in * h * w, 1.0),
            weight: rng.uniform(c_out * c_in * k * k, 0.3),
            bias: rng.uniform(c_out, 0.3),
        };
        // The CPU's f32 answer, once for every precision.
        let reference = case.run(&Device::Cpu, DType::F32)?;
        cases.push((case, reference));
    }
    let mut results = Vec::new();
    for (label, dtype, tf32, tolerance) in CONV_PRECISIONS {
        if device.is_cpu() && (dtype != DType::F32 || tf32) {
            continue; // the CPU has one f32 path
        }
        #[cfg(feature = "cuda")]
        crate::cuda::cudnn::set_tf32(tf32);
        let _ = tf32;
        let mut worst: f64 = 0.0;
        for (case, reference) in &cases {
            worst = worst.max(max_rel_diff(&case.run(device, dtype)?, reference)?.0);
        }
        results.push(result(
            format!(
                "conv2d {label} ({}): output, input/kernel/bias gradients over stride 2, 1×1, padding, batch 1 (relative)",
                gpu_conv_label(device)?
            ),
            worst,
            tolerance,
        ));
    }
    #[cfg(feature = "cuda")]
    crate::cuda::cudnn::set_tf32(false);
    Ok(results)
}

/// One convolution of [`conv2d_geometries`]: its shapes and values.
struct ConvCase {
    /// (n, c_in, h, w).
    input: (usize, usize, usize, usize),
    /// (c_out, c_in, kh, kw).
    kernel: (usize, usize, usize, usize),
    stride: usize,
    padding: usize,
    with_bias: bool,
    x: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl ConvCase {
    /// Output, then the input, kernel and (with a bias) bias gradients of the case on `dev`,
    /// the input in `dtype`.
    fn run(&self, dev: &Device, dtype: DType) -> Result<Vec<Tensor>> {
        let wv = Var::from_tensor(&Tensor::from_vec(self.weight.clone(), self.kernel, dev)?)?;
        let bv = Var::from_tensor(&Tensor::from_vec(self.bias.clone(), self.kernel.0, dev)?)?;
        let layer = Conv2d::new(
            wv.as_tensor().clone(),
            self.with_bias.then(|| bv.as_tensor().clone()),
            Conv2dConfig {
                stride: self.stride,
                padding: self.padding,
                ..Conv2dConfig::default()
            },
        );
        let xv =
            Var::from_tensor(&Tensor::from_vec(self.x.clone(), self.input, dev)?.to_dtype(dtype)?)?;
        let ys = conv2d(&layer, xv.as_tensor(), true, &CHECK_CONV)?;
        let grads = ys.to_dtype(DType::F32)?.sqr()?.sum_all()?.backward()?;
        let missing = || candle_core::Error::Msg("no gradient reached an operand".into());
        let mut out = vec![
            ys,
            grads.get(xv.as_tensor()).cloned().ok_or_else(missing)?,
            grads.get(wv.as_tensor()).cloned().ok_or_else(missing)?,
        ];
        if self.with_bias {
            out.push(grads.get(bv.as_tensor()).cloned().ok_or_else(missing)?);
        }
        Ok(out)
    }
}

fn gpu_conv_label(device: &Device) -> Result<&'static str> {
    if device.is_cpu() {
        return Ok("CPU kernels");
    }
    Ok(match crate::model::gpu_conv_path()? {
        crate::model::GpuConv::Cudnn => "cuDNN",
        crate::model::GpuConv::Im2col => "im2col + GEMM",
        crate::model::GpuConv::Candle => "candle",
    })
}

/// The fused dropout on `device` in each dtype against the CPU's op with the same seed: the
/// same mask and values, forward and backward, exactly.
fn dropout(device: &Device, rng: &mut ExpRng) -> Result<Vec<CheckResult>> {
    let (n, p, seed) = (3 * 257 * 129, 0.3, rng.next_u64());
    let x = Tensor::from_vec(rng.uniform(n, 2.0), n, &Device::Cpu)?;
    let probe = Tensor::from_vec(rng.uniform(n, 1.0), n, &Device::Cpu)?;
    let mut results = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        if device.is_cpu() && dtype != DType::F32 {
            continue;
        }
        // The op in `compute` on `dev`, from values representable in dtype (so both sides start
        // from the same numbers), returned in dtype: the CPU reference computes in f32 and
        // rounds once, as the kernel does.
        let run = |dev: &Device, compute: DType| -> Result<(Tensor, Tensor)> {
            let var = Var::from_tensor(&x.to_dtype(dtype)?.to_dtype(compute)?.to_device(dev)?)?;
            let y = fused_dropout(var.as_tensor(), p, seed)?;
            let probe = probe.to_dtype(dtype)?.to_dtype(compute)?.to_device(dev)?;
            let grads = (&y * &probe)?.sum_all()?.backward()?;
            let g = grads
                .get(var.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("no gradient reached the input".into()))?;
            Ok((y.to_dtype(dtype)?, g.to_dtype(dtype)?))
        };
        let (y_ref, g_ref) = run(&Device::Cpu, DType::F32)?;
        let (y, g) = run(device, dtype)?;
        let diff = max_abs_diff(&y, &y_ref)?.max(max_abs_diff(&g, &g_ref)?);
        results.push(result(
            format!("fused dropout p=0.3 forward+backward ({dtype:?}, same seed: same mask)"),
            diff,
            0.0,
        ));
    }
    Ok(results)
}

/// Random crop and flip on `device` (on a GPU: the kernel fed three numbers per example)
/// against the CPU's index with the same seed: the same pixels, exactly.
fn augmentation(device: &Device, rng: &mut ExpRng) -> Result<Vec<CheckResult>> {
    let (n, c, h, w) = (37, 3, 11, 9);
    let x = Tensor::from_vec(rng.uniform(n * c * h * w, 2.0), (n, c, h, w), &Device::Cpu)?;
    let spec = crate::spec::AugmentSpec {
        crop_padding: 3,
        flip: true,
    };
    let fill = [-0.5f32, -1.0, -1.5];
    let mut results = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        if device.is_cpu() && dtype != DType::F32 {
            continue;
        }
        let run = |dev: &Device| -> Result<Vec<Tensor>> {
            let mut augmenter = crate::data::augment::Augmenter::new(&spec, 5, &fill, dev, dtype)?
                .ok_or_else(|| candle_core::Error::Msg("augmentation is off".into()))?;
            let xs = x.to_dtype(dtype)?.to_device(dev)?;
            // Three batches: the stream advances the same way on both sides.
            (0..3).map(|_| augmenter.apply(&xs)).collect()
        };
        let ours = run(device)?;
        let reference = run(&Device::Cpu)?;
        let mut diff: f64 = 0.0;
        for (a, b) in ours.iter().zip(&reference) {
            diff = diff.max(max_abs_diff(a, b)?);
        }
        results.push(result(
            format!("augmentation: crop (padding 3) and flip, 3 batches ({dtype:?}, same seed: same pixels)"),
            diff,
            0.0,
        ));
    }
    Ok(results)
}

/// A whole ResNet-18 (width 8, CIFAR stem) in training mode on `device` against the CPU: the
/// loss, every parameter's gradient (batch norm with batch statistics, the residual adds, the
/// projection shortcuts, global average pooling) and the running statistics batch norm
/// updated, relative to each tensor's largest value.
fn resnet_training_step(device: &Device, dtype: DType, rng: &mut ExpRng) -> Result<CheckResult> {
    let spec = ModelSpec {
        width: Some(8),
        ..ModelSpec::named(ModelName::Resnet18)
    };
    let shape = ImageShape {
        channels: 3,
        height: 16,
        width: 16,
    };
    let batch = 6;
    let x = rng.uniform(batch * shape.size(), 1.5);
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    let mut names = vec!["loss".to_string()];
    let run = |dev: &Device, dtype: DType, names: &mut Vec<String>| -> Result<Vec<Tensor>> {
        let model = Model::new(&spec, shape, 10, 7, dev)?;
        let xs = Tensor::from_vec(x.clone(), (batch, 3, 16, 16), dev)?.to_dtype(dtype)?;
        let mut stream = ExpRng::new(1, Purpose::Dropout);
        let logits = model.forward(&xs, &mut Mode::Train(&mut stream))?;
        let loss = candle_nn::loss::cross_entropy(
            &logits.to_dtype(DType::F32)?,
            &Tensor::new(labels.as_slice(), dev)?,
        )?;
        let grads = loss.backward()?;
        let mut out = vec![loss];
        for (name, var) in model.params().named() {
            let g = grads
                .get(var.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient reached {name}")))?;
            out.push(g);
            names.push(format!("{name} gradient"));
        }
        for (name, t) in model.params().tensors() {
            if name.contains("running") {
                out.push(t);
                names.push(name);
            }
        }
        Ok(out)
    };
    let reference = run(&Device::Cpu, DType::F32, &mut names)?;
    let (diff, worst) = max_rel_diff(&run(device, dtype, &mut Vec::new())?, &reference)?;
    // Half precision: rounding only the input and the weights to bf16 (everything else in f32,
    // on the CPU) already moves this batch's gradients by 0.25 of their largest value (layer1's
    // conv2), batch norm over 6 images amplifying the rounding; on the GPU every activation is
    // rounded too (0.36 measured on an H200). So the whole-network check catches gross faults
    // only; the per-op checks above hold the precision.
    let tolerance = if dtype == DType::F32 { 1e-3 } else { 0.5 };
    Ok(result(
        format!(
            "resnet18 (width 8) training step ({dtype:?}): loss, every gradient, running statistics (relative; worst: {})",
            names.get(worst).map(String::as_str).unwrap_or("?")
        ),
        diff,
        tolerance,
    ))
}

/// Five fused Adam and AdamW steps on `device` against the CPU's.
fn fused_adam(device: &Device, kind: OptimizerName, rng: &mut ExpRng) -> Result<CheckResult> {
    let n = 100_003;
    let init = rng.uniform(n, 1.0);
    let grads: Vec<Vec<f32>> = (0..5).map(|_| rng.uniform(n, 3.0)).collect();
    let spec = TrainSpec {
        optimizer: kind,
        lr: 1e-2,
        weight_decay: 0.01,
        ..TrainSpec::default()
    };
    let run = |dev: &Device| -> Result<Tensor> {
        let var = Var::new(init.as_slice(), dev)?;
        let mut opt = Optimizer::new(vec![var.clone()], &spec);
        for g in &grads {
            opt.step(&[Some(Tensor::new(g.as_slice(), dev)?)])?;
        }
        Ok(var.as_tensor().clone())
    };
    let diff = max_abs_diff(&run(device)?, &run(&Device::Cpu)?)?;
    // The GPU contracts a·b + c into one rounding (FMA); after five steps of size ≤ lr the
    // parameters may differ in their last bits only.
    let name = if kind == OptimizerName::Adamw {
        "AdamW"
    } else {
        "Adam"
    };
    Ok(result(format!("fused {name} update, 5 steps"), diff, 1e-6))
}

/// Runs every check on `device`.
pub fn run_checks(device: &Device) -> Result<Vec<CheckResult>> {
    let mut rng = ExpRng::new(20261127, Purpose::Init);
    let mut results = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        if device.is_cpu() && dtype != DType::F32 {
            continue; // exp trains in half precision on CUDA only
        }
        results.push(max_pool(device, dtype, &mut rng)?);
    }
    results.push(conv2d_paths(device, &mut rng)?);
    results.extend(conv2d_geometries(device, &mut rng)?);
    results.extend(dropout(device, &mut rng)?);
    results.extend(augmentation(device, &mut rng)?);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        if device.is_cpu() && dtype != DType::F32 {
            continue;
        }
        results.push(resnet_training_step(device, dtype, &mut rng)?);
    }
    results.push(fused_adam(device, OptimizerName::Adam, &mut rng)?);
    results.push(fused_adam(device, OptimizerName::Adamw, &mut rng)?);
    Ok(results)
}
