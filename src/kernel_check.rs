//! `exp device --check`: runs exp's own device kernels (max-pool forward and backward, the
//! kernel-gradient-only convolution, the fused Adam update) on a device and compares them with
//! the CPU implementations, which the unit tests pin to candle's reference ops. It sits above
//! `device/`, `model/` and `train/`, whose code it runs (docs/design.md §1). On a GPU this is
//! the test of the CUDA kernels; on the CPU it compares the CPU paths with themselves and
//! passes trivially.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig};

use crate::model::{conv2d, max_pool_2x2, ConvNames};
use crate::rng::{ExpRng, Purpose};
use crate::spec::{OptimizerName, TrainSpec};
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
        static NAMES: ConvNames = ConvNames {
            forward: "check conv",
            bias: "check conv bias",
            kernel_grad: "check conv kernel grad",
            input_grad: "check conv input grad",
            backward: "check conv",
            relu: "check conv relu",
        };
        // The image-batch case (no input gradient), then an input that needs its gradient.
        let xv = Var::from_tensor(&x.to_device(dev)?)?;
        let mut out = Vec::new();
        for input in [&x.to_device(dev)?, xv.as_tensor()] {
            let ys = conv2d(&layer, input, true, &NAMES)?;
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
    let reference = grads_on(&Device::Cpu)?;
    let ours = grads_on(device)?;
    if ours.len() != reference.len() {
        candle_core::bail!(
            "conv2d: {} gradients on the device, {} on the CPU",
            ours.len(),
            reference.len()
        )
    }
    let mut diff: f64 = 0.0;
    for (a, b) in ours.iter().zip(&reference) {
        // Relative to the tensor's scale: cuBLAS sums in another order than the CPU GEMM.
        let scale = b
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .max(1.0);
        diff = diff.max(max_abs_diff(a, b)? / scale);
    }
    Ok(result(
        "conv2d (GPU: direct first layer, im2col + GEMM) output and gradients (f32; relative to the largest value)".into(),
        diff,
        1e-4,
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
    results.push(fused_adam(device, OptimizerName::Adam, &mut rng)?);
    results.push(fused_adam(device, OptimizerName::Adamw, &mut rng)?);
    Ok(results)
}
