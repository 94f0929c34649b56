//! Batch norm in training mode on the CPU, with a ResNet's residual add and ReLU fused in:
//! `relu(bn(x) + skip)` as one op, forward and backward.
//!
//! candle-nn's batch norm is a dozen tensor ops each way (transpose, mean, subtract, square,
//! mean, divide, multiply, add, and their gradients), each a pass over the whole activation;
//! here each direction is one task per channel: the channel's values (`n` planes of `h·w`) are
//! read once from memory to sum, and the second and third passes over them hit the cache. Sums
//! run in f32 lanes within a plane and in f64 across planes, in a fixed order within the
//! channel, so the result is the same for any thread count.
//!
//! The formulas are PyTorch's `BatchNorm2d` in training mode: the batch mean and the biased
//! variance normalise, `y = γ·(x − mean)/√(var + ε) + β`; the running statistics move by
//! `momentum` towards the mean and the unbiased variance (`var·M/(M − 1)`, M values per
//! channel). The ReLU passes a gradient where its output is > 0 (PyTorch's
//! `threshold_backward`, so a NaN output passes its gradient on).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, InplaceOp1, Layout, Result, Shape, Tensor};
use candle_nn::BatchNorm;
use rayon::prelude::*;

use super::{slice, tensor};
use crate::profile::span;

/// Profile labels of the op.
const FORWARD: &str = "fwd batch-norm";
const BACKWARD: &str = "bwd batch-norm";

/// `relu(bn(x) + skip)` in training mode — the add when `skip` is given, the ReLU when `relu`
/// — with `layer`'s running statistics updated in place. `x` is NCHW f32 on the CPU; `skip`
/// has its shape.
pub fn batch_norm_train(
    layer: &BatchNorm,
    x: &Tensor,
    skip: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    let (weight, bias) = layer.weight_and_bias().ok_or_else(|| {
        candle_core::Error::Msg("batch norm without weight and bias is not supported".into())
    })?;
    let (n, c, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        // PyTorch refuses the same: the unbiased variance of one value is undefined.
        candle_core::bail!(
            "batch norm in training needs more than one value per channel, got input {:?}",
            x.dims()
        )
    }
    if weight.dims() != [c]
        || layer.running_mean().dims() != [c]
        || layer.running_var().dims() != [c]
    {
        candle_core::bail!(
            "batch norm over {} features applied to an input of shape {:?}",
            weight.dim(0)?,
            x.dims()
        )
    }
    if let Some(skip) = skip {
        if skip.dims() != x.dims() {
            candle_core::bail!("residual add: {:?} plus {:?}", x.dims(), skip.dims())
        }
    }
    let saved = Arc::new(Mutex::new(None));
    let kernel = Kernel {
        n,
        c,
        hw: h * w,
        eps: layer.eps(),
        relu,
        saved: saved.clone(),
    };
    let x = x.contiguous()?;
    // γ and β as one operand (the op takes at most three), their gradients split by `cat`'s.
    let affine = Tensor::cat(&[weight, bias], 0)?.contiguous()?;
    let y = span(FORWARD, x.device(), || match skip {
        Some(skip) => x.apply_op3(&affine, &skip.contiguous()?, WithSkip(kernel)),
        None => x.apply_op2(&affine, NoSkip(kernel)),
    })?;
    let stats = saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("batch norm: no statistics saved".into()))?;
    let unbias = count as f64 / (count - 1) as f64;
    let momentum = layer.momentum();
    for (running, values) in [
        (layer.running_mean(), stats.mean.clone()),
        (
            layer.running_var(),
            stats.var.iter().map(|v| v * unbias).collect(),
        ),
    ] {
        running.inplace_op1(&RunningUpdate { values, momentum })?;
    }
    Ok(y)
}

/// A batch's per-channel mean and biased variance, written by the forward and read by the
/// caller (the running update) and the backward (the op, owned by candle's graph).
#[derive(Clone)]
struct Stats {
    mean: Vec<f64>,
    var: Vec<f64>,
}

struct Kernel {
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
    relu: bool,
    /// Filled by the forward: for the backward (this op) and the running update (the caller).
    saved: Arc<Mutex<Option<Stats>>>,
}

/// An output that several tasks write at once, each to its own planes, allocated without
/// zeroing (a pass over memory saved per output: every element is written exactly once).
struct Disjoint {
    values: Vec<MaybeUninit<f32>>,
}

/// A pointer to a [`Disjoint`]'s elements, shared by the tasks that write them.
struct Planes<'a> {
    ptr: *mut MaybeUninit<f32>,
    len: usize,
    _borrow: PhantomData<&'a mut [MaybeUninit<f32>]>,
}

// SAFETY: `Planes` hands out sub-slices only through `plane`, whose callers promise that no two
// of them hold overlapping ranges at once; the borrow it was made from is unique.
unsafe impl Send for Planes<'_> {}
unsafe impl Sync for Planes<'_> {}

impl Disjoint {
    fn new(len: usize) -> Disjoint {
        let mut values = Vec::with_capacity(len);
        // SAFETY: MaybeUninit elements need no initialisation.
        unsafe { values.set_len(len) };
        Disjoint { values }
    }

    fn planes(&mut self) -> Planes<'_> {
        Planes {
            ptr: self.values.as_mut_ptr(),
            len: self.values.len(),
            _borrow: PhantomData,
        }
    }

    /// The values.
    ///
    /// # Safety
    /// Every element must have been written.
    unsafe fn assume_written(self) -> Vec<f32> {
        let mut values = std::mem::ManuallyDrop::new(self.values);
        let (ptr, len, cap) = (values.as_mut_ptr(), values.len(), values.capacity());
        // SAFETY: MaybeUninit<f32> has f32's layout; every element is initialised (the
        // caller's promise); the allocation moves from the forgotten vector to this one.
        unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, cap) }
    }
}

impl Planes<'_> {
    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// No other live slice from these planes may overlap the range.
    #[allow(clippy::mut_from_ref)]
    unsafe fn plane(&self, start: usize, len: usize) -> &mut [MaybeUninit<f32>] {
        assert!(start + len <= self.len, "plane outside the output");
        // SAFETY: in bounds (asserted); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

impl Kernel {
    fn len(&self) -> usize {
        self.n * self.c * self.hw
    }

    /// Offsets of channel `ch`'s planes, one per image.
    fn planes(&self, ch: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.n).map(move |b| (b * self.c + ch) * self.hw)
    }

    /// [`Kernel::forward`] on an op's operands, the output shaped as the input.
    fn forward_op(
        &self,
        op: &str,
        (xs, xl): (&CpuStorage, &Layout),
        (a, al): (&CpuStorage, &Layout),
        skip: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let f32s = super::super::cpu_f32;
        let skip = skip.map(|(s, sl)| f32s(s, sl, op)).transpose()?;
        let y = self.forward(f32s(xs, xl, op)?, f32s(a, al, op)?, skip)?;
        Ok((y, xl.shape().clone()))
    }

    /// The output, shaped as the input (the op's wrappers pass its shape on).
    fn forward(&self, x: &[f32], affine: &[f32], skip: Option<&[f32]>) -> Result<CpuStorage> {
        if x.len() != self.len()
            || affine.len() != 2 * self.c
            || skip.is_some_and(|s| s.len() != self.len())
        {
            candle_core::bail!("batch norm: operand sizes do not match the input")
        }
        let (gamma, beta) = affine.split_at(self.c);
        let count = (self.n * self.hw) as f64;
        let mut y = Disjoint::new(self.len());
        let out = y.planes();
        let stats: Vec<(f64, f64)> = (0..self.c)
            .into_par_iter()
            .map(|ch| {
                let sum: f64 = self.planes(ch).map(|o| sum_f64(&x[o..o + self.hw])).sum();
                let mean = sum / count;
                let var = self
                    .planes(ch)
                    .map(|o| squared_deviations(&x[o..o + self.hw], mean))
                    .sum::<f64>()
                    / count;
                let inv_std = 1.0 / (var + self.eps).sqrt();
                let scale = (gamma[ch] as f64 * inv_std) as f32;
                let shift = (beta[ch] as f64 - mean * gamma[ch] as f64 * inv_std) as f32;
                for o in self.planes(ch) {
                    // SAFETY: channel `ch`'s planes belong to this task alone.
                    let y = unsafe { out.plane(o, self.hw) };
                    let x = &x[o..o + self.hw];
                    // Keeps NaN, as PyTorch's ReLU; a select, so that it vectorises.
                    let relu = |v: f32| if self.relu && v < 0.0 { 0.0 } else { v };
                    match skip {
                        Some(s) => {
                            let s = &s[o..o + self.hw];
                            for ((y, &x), &s) in y.iter_mut().zip(x).zip(s) {
                                y.write(relu(x * scale + shift + s));
                            }
                        }
                        None => {
                            for (y, &x) in y.iter_mut().zip(x) {
                                y.write(relu(x * scale + shift));
                            }
                        }
                    }
                }
                (mean, var)
            })
            .collect();
        let (mean, var) = stats.into_iter().unzip();
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Stats { mean, var });
        // SAFETY: the tasks above wrote every channel's plane of every image.
        Ok(CpuStorage::F32(unsafe { y.assume_written() }))
    }

    /// Gradients of x, of [γ; β], and of the skip input when there is one.
    fn backward(
        &self,
        x: &Tensor,
        affine: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        skip: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let what = "batch norm backward";
        let shape = x.dims().to_vec();
        let grad = grad.contiguous()?;
        let (x_store, x_layout) = x.storage_and_layout();
        let (a_store, a_layout) = affine.storage_and_layout();
        let (g_store, g_layout) = grad.storage_and_layout();
        let (r_store, r_layout) = res.storage_and_layout();
        let x = slice(&x_store, x_layout, what)?;
        let affine = slice(&a_store, a_layout, what)?;
        let dy = slice(&g_store, g_layout, what)?;
        let y = slice(&r_store, r_layout, what)?;
        let Stats { mean, var } = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: no forward statistics")))?;
        if x.len() != self.len() || dy.len() != self.len() || y.len() != self.len() {
            candle_core::bail!("{what}: the gradient does not match the forward pass")
        }
        let gamma = &affine[..self.c];
        let count = (self.n * self.hw) as f64;
        let mut dx = Disjoint::new(self.len());
        let mut dskip = Disjoint::new(if skip { self.len() } else { 0 });
        let (dx_out, dskip_out) = (dx.planes(), dskip.planes());
        // The gradient below the ReLU (and into the skip input).
        let passes = |g: f32, y: f32| if self.relu && y <= 0.0 { 0.0 } else { g };
        let daffine: Vec<(f32, f32)> = (0..self.c)
            .into_par_iter()
            .map(|ch| {
                let (mean, inv_std) = (mean[ch], 1.0 / (var[ch] + self.eps).sqrt());
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for o in self.planes(ch) {
                    let (x, dy, y) = (&x[o..o + self.hw], &dy[o..o + self.hw], &y[o..o + self.hw]);
                    let (a, b) = gradient_sums(x, dy, y, mean as f32, self.relu);
                    sum_g += a;
                    sum_gx += b;
                }
                let d_gamma = sum_gx * inv_std;
                let d_beta = sum_g;
                // dx = γ·inv_std·(g − dβ/M − x̂·dγ/M), x̂ = (x − mean)·inv_std.
                let k = gamma[ch] as f64 * inv_std;
                let a = k as f32;
                let b = (-k * inv_std * d_gamma / count) as f32;
                // x − mean, not x alone: b·x and b·mean would cancel in f32 for a channel whose
                // mean is large against its spread.
                let c0 = (-k * d_beta / count) as f32;
                let mean = mean as f32;
                for o in self.planes(ch) {
                    let (x, dy, y) = (&x[o..o + self.hw], &dy[o..o + self.hw], &y[o..o + self.hw]);
                    // SAFETY: channel `ch`'s planes belong to this task alone.
                    let dx = unsafe { dx_out.plane(o, self.hw) };
                    for (((dx, &x), &dy), &y) in dx.iter_mut().zip(x).zip(dy).zip(y) {
                        dx.write(a * passes(dy, y) + b * (x - mean) + c0);
                    }
                    if skip {
                        // SAFETY: as above.
                        let ds = unsafe { dskip_out.plane(o, self.hw) };
                        for ((ds, &dy), &y) in ds.iter_mut().zip(dy).zip(y) {
                            ds.write(passes(dy, y));
                        }
                    }
                }
                (d_gamma as f32, d_beta as f32)
            })
            .collect();
        let (d_gamma, d_beta): (Vec<f32>, Vec<f32>) = daffine.into_iter().unzip();
        // SAFETY: the tasks above wrote every channel's plane of every image, of dx and (when
        // there is one) of dskip.
        let (dx, dskip) = unsafe { (dx.assume_written(), dskip.assume_written()) };
        let dskip = if skip {
            Some(tensor(dskip, &shape)?)
        } else {
            None
        };
        Ok((
            tensor(dx, &shape)?,
            tensor([d_gamma, d_beta].concat(), &[2 * self.c])?,
            dskip,
        ))
    }
}

/// Running sums per plane: sixteen f32 lanes (one AVX-512 register, four SSE ones) over at most
/// a plane — a few hundred values each — then the plane's total in f64; a fixed order, so the
/// same bits for any thread count.
const LANES: usize = 16;

/// Σ f(a, b, c) over the elements of three equally long planes (every caller passes one plane
/// of each operand), in [`LANES`] f32 running sums (whole blocks of LANES against the
/// fixed-size lane array, so that the loop vectorises), returned in f64.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f64 {
    let mut lanes = [0f32; LANES];
    let (ab, bb, cb) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f64 = ab
        .remainder()
        .iter()
        .zip(bb.remainder())
        .zip(cb.remainder())
        .map(|((&a, &b), &c)| f(a, b, c) as f64)
        .sum();
    for ((a, b), c) in ab.zip(bb).zip(cb) {
        for (((lane, &a), &b), &c) in lanes.iter_mut().zip(a).zip(b).zip(c) {
            *lane += f(a, b, c);
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// Σ x over a plane.
fn sum_f64(values: &[f32]) -> f64 {
    lane_sum(values, values, values, |x, _, _| x)
}

/// Σ (x − mean)² over a plane (the two-pass variance: no cancellation).
fn squared_deviations(values: &[f32], mean: f64) -> f64 {
    let mean = mean as f32;
    lane_sum(values, values, values, |x, _, _| (x - mean) * (x - mean))
}

/// (Σ g, Σ g·(x − mean)) over one plane, g the gradient below the ReLU.
fn gradient_sums(x: &[f32], dy: &[f32], y: &[f32], mean: f32, relu: bool) -> (f64, f64) {
    let below = move |dy: f32, y: f32| if relu && y <= 0.0 { 0.0 } else { dy };
    (
        lane_sum(x, dy, y, |_, dy, y| below(dy, y)),
        lane_sum(x, dy, y, |x, dy, y| below(dy, y) * (x - mean)),
    )
}

struct NoSkip(Kernel);

impl CustomOp2 for NoSkip {
    fn name(&self) -> &'static str {
        "exp-cpu-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.forward_op(self.name(), (xs, xl), (a, al), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        span(BACKWARD, x.device(), || {
            let (dx, da, _) = self.0.backward(x, affine, res, grad, false)?;
            Ok((Some(dx), Some(da)))
        })
    }
}

struct WithSkip(Kernel);

impl CustomOp3 for WithSkip {
    fn name(&self) -> &'static str {
        "exp-cpu-batch-norm-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        s: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0
            .forward_op(self.name(), (xs, xl), (a, al), Some((s, sl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        _skip: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        span(BACKWARD, x.device(), || {
            let (dx, da, ds) = self.0.backward(x, affine, res, grad, true)?;
            Ok((Some(dx), Some(da), ds))
        })
    }
}

/// `running ← (1 − momentum)·running + momentum·values`, in place (candle-nn's and PyTorch's
/// rule, in f32 as theirs).
struct RunningUpdate {
    values: Vec<f64>,
    momentum: f64,
}

impl InplaceOp1 for RunningUpdate {
    fn name(&self) -> &'static str {
        "exp-cpu-batch-norm-running-update"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 running statistics only", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: running statistics not contiguous", self.name())
        };
        let running = &mut data[start..end];
        if running.len() != self.values.len() {
            candle_core::bail!(
                "{}: {} features, {} values",
                self.name(),
                running.len(),
                self.values.len()
            )
        }
        let m = self.momentum as f32;
        for (r, &v) in running.iter_mut().zip(&self.values) {
            *r = *r * (1.0 - m) + v as f32 * m;
        }
        Ok(())
    }
}
