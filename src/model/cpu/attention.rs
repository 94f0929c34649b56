//! The attention block of `vit` on the CPU: scaled dot-product attention, layer norm and the
//! exact GELU, each one op with its backward pass.
//!
//! candle 0.11.1 composes each from generic ops whose backward passes keep every intermediate:
//! attention is a matmul, a scale, five softmax ops (max, subtract, exp, sum, divide) and a
//! matmul; layer norm seven ops; GELU one op whose backward is five. Here:
//! - attention, per (image, head): `S = Q·Kᵀ` (one GEMM), the scaled row softmax in place,
//!   `O = P·V` (one GEMM), keeping only `P` for the backward, which is four GEMMs
//!   (`dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dQ = dS·K`, `dK = dSᵀ·Q`) around the softmax's
//!   `dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale`;
//! - layer norm, per row: mean and biased variance (f64), `(x − mean)/√(var + ε)·w + b`;
//!   backward `dx = (g − mean(g) − x̂·mean(g·x̂))/√(var + ε)` with `g = dy·w`, and the weight
//!   and bias gradients summed over fixed chunks of rows in order;
//! - GELU, `x·Φ(x)` with candle's erf (candle's forward to the bit), backward
//!   `dy·(Φ(x) + x·φ(x))`.
//!
//! Work splits over (image, head) pairs, rows or elements, never inside a sum, and the one
//! reduction across tasks (layer norm's parameter gradients) uses chunks fixed by the shape:
//! the bits do not depend on the thread count.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{gemm, reduction_chunk_len, slice, tensor, Mat, Threads};
use crate::profile::span;

/// `softmax(Q·Kᵀ·scale)·V` over the last two dimensions of `(batch, heads, tokens, head
/// size)` f32 tensors on the CPU.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let op = Attention {
        pairs: b * h,
        n,
        d,
        scale,
        probs: Mutex::new(Vec::new()),
    };
    span("fwd attention", q.device(), || {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
    })
}

struct Attention {
    /// (image, head) pairs.
    pairs: usize,
    /// Tokens.
    n: usize,
    /// Head size.
    d: usize,
    scale: f32,
    /// The softmax probabilities, `pairs × n × n`: written by the forward, read by the backward.
    probs: Mutex<Vec<f32>>,
}

impl Attention {
    fn per_pair(&self) -> usize {
        self.n * self.d
    }
}

/// Each row of the `n × n` matrix `s` replaced by `softmax(row·scale)` (the maximum
/// subtracted first, as candle's and PyTorch's softmax do).
fn softmax_rows(s: &mut [f32], n: usize, scale: f32) {
    for row in s.chunks_exact_mut(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v * scale - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "exp-cpu-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f32s = super::super::cpu_f32;
        let (q, k, v) = (
            f32s(qs, ql, self.name())?,
            f32s(ks, kl, self.name())?,
            f32s(vs, vl, self.name())?,
        );
        let (n, d, per) = (self.n, self.d, self.per_pair());
        if q.len() != self.pairs * per || k.len() != q.len() || v.len() != q.len() {
            candle_core::bail!("attention: operand sizes do not match the shape")
        }
        let mut out = vec![0f32; q.len()];
        let mut probs = vec![0f32; self.pairs * n * n];
        out.par_chunks_mut(per.max(1))
            .zip(probs.par_chunks_mut((n * n).max(1)))
            .enumerate()
            .for_each(|(i, (o, p))| {
                let (q, k, v) = (
                    &q[i * per..(i + 1) * per],
                    &k[i * per..(i + 1) * per],
                    &v[i * per..(i + 1) * per],
                );
                let (qm, pm) = (Mat::row_major(n, d), Mat::row_major(n, n));
                gemm(p, pm, false, q, qm, k, qm.t(), Threads::One);
                softmax_rows(p, n, self.scale);
                gemm(o, qm, false, p, pm, v, qm, Threads::One);
            });
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = probs;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        span("bwd attention", q.device(), || {
            let what = "attention backward";
            let grad = grad.contiguous()?;
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (qv, kv, vv, dout) = (
                slice(&qs, ql, what)?,
                slice(&ks, kl, what)?,
                slice(&vs, vl, what)?,
                slice(&gs, gl, what)?,
            );
            let probs = self.probs.lock().unwrap_or_else(|e| e.into_inner());
            let (n, d, per) = (self.n, self.d, self.per_pair());
            if dout.len() != self.pairs * per || probs.len() != self.pairs * n * n {
                candle_core::bail!("{what}: the gradient does not match the forward pass")
            }
            let mut dq = vec![0f32; qv.len()];
            let mut dk = vec![0f32; qv.len()];
            let mut dv = vec![0f32; qv.len()];
            let chunk = per.max(1);
            dq.par_chunks_mut(chunk)
                .zip(dk.par_chunks_mut(chunk).zip(dv.par_chunks_mut(chunk)))
                .enumerate()
                .for_each(|(i, (dq, (dk, dv)))| {
                    let at = i * per..(i + 1) * per;
                    let (q, k, v, d_o) =
                        (&qv[at.clone()], &kv[at.clone()], &vv[at.clone()], &dout[at]);
                    let p = &probs[i * n * n..(i + 1) * n * n];
                    let (qm, pm) = (Mat::row_major(n, d), Mat::row_major(n, n));
                    // dV = Pᵀ·dO
                    gemm(dv, qm, false, p, pm.t(), d_o, qm, Threads::One);
                    // dP = dO·Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P))·scale in place.
                    let mut ds = vec![0f32; n * n];
                    gemm(&mut ds, pm, false, d_o, qm, v, qm.t(), Threads::One);
                    for (ds, p) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                        let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                        for (g, &p) in ds.iter_mut().zip(p) {
                            *g = p * (*g - dot) * self.scale;
                        }
                    }
                    // dQ = dS·K, dK = dSᵀ·Q
                    gemm(dq, qm, false, &ds, pm, k, qm, Threads::One);
                    gemm(dk, qm, false, &ds, pm.t(), q, qm, Threads::One);
                });
            let shape = q.dims();
            Ok((
                Some(tensor(dq, shape)?),
                Some(tensor(dk, shape)?),
                Some(tensor(dv, shape)?),
            ))
        })
    }
}

/// Layer norm over the last dimension of an f32 tensor on the CPU, as torch.nn.LayerNorm:
/// `(x − mean)/√(var + eps)·weight + bias`, biased variance.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let features = xs.dim(candle_core::D::Minus1)?;
    if weight.dims() != [features] || bias.dims() != [features] {
        candle_core::bail!(
            "layer norm over {features} features with weight {:?} and bias {:?}",
            weight.dims(),
            bias.dims()
        )
    }
    let op = LayerNorm {
        features,
        eps,
        stats: Mutex::new(Vec::new()),
    };
    span("fwd layer-norm", xs.device(), || {
        xs.contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
    })
}

struct LayerNorm {
    features: usize,
    eps: f64,
    /// Per row, the mean and 1/√(var + ε): written by the forward, read by the backward.
    stats: Mutex<Vec<(f32, f32)>>,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "exp-cpu-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f32s = super::super::cpu_f32;
        let (x, w, b) = (
            f32s(xs, xl, self.name())?,
            f32s(ws, wl, self.name())?,
            f32s(bs, bl, self.name())?,
        );
        let f = self.features.max(1);
        let mut y = vec![0f32; x.len()];
        let mut stats = vec![(0f32, 0f32); x.len() / f];
        y.par_chunks_mut(f)
            .zip(stats.par_iter_mut())
            .zip(x.par_chunks(f))
            .for_each(|((y, stat), x)| {
                let mean = x.iter().map(|&v| v as f64).sum::<f64>() / f as f64;
                let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / f as f64;
                let rstd = 1.0 / (var + self.eps).sqrt();
                let (mean, rstd) = (mean as f32, rstd as f32);
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
                    *y = (x - mean) * rstd * w + b;
                }
                *stat = (mean, rstd);
            });
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        span("bwd layer-norm", x.device(), || {
            let what = "layer norm backward";
            let grad = grad.contiguous()?;
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (xv, wv, dy) = (
                slice(&xs, xl, what)?,
                slice(&ws, wl, what)?,
                slice(&gs, gl, what)?,
            );
            let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            let f = self.features.max(1);
            if dy.len() != xv.len() || stats.len() != xv.len() / f {
                candle_core::bail!("{what}: the gradient does not match the forward pass")
            }
            let rows = stats.len();
            let mut dx = vec![0f32; xv.len()];
            let chunk = reduction_chunk_len(rows);
            // Per chunk of rows: the input gradient, and the chunk's sums of dy·x̂ and dy.
            let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(chunk * f)
                .enumerate()
                .map(|(c, dx)| {
                    let (mut dw, mut db) = (vec![0f32; f], vec![0f32; f]);
                    for (j, dx) in dx.chunks_exact_mut(f).enumerate() {
                        let r = c * chunk + j;
                        let (mean, rstd) = stats[r];
                        let (x, dy) = (&xv[r * f..(r + 1) * f], &dy[r * f..(r + 1) * f]);
                        let (mut g_mean, mut gx_mean) = (0f32, 0f32);
                        for (((&x, &dy), &w), (dw, db)) in x
                            .iter()
                            .zip(dy)
                            .zip(wv)
                            .zip(dw.iter_mut().zip(db.iter_mut()))
                        {
                            let xhat = (x - mean) * rstd;
                            let g = dy * w;
                            g_mean += g;
                            gx_mean += g * xhat;
                            *dw += dy * xhat;
                            *db += dy;
                        }
                        g_mean /= f as f32;
                        gx_mean /= f as f32;
                        for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(wv) {
                            let xhat = (x - mean) * rstd;
                            *dx = (dy * w - g_mean - xhat * gx_mean) * rstd;
                        }
                    }
                    (dw, db)
                })
                .collect();
            let (mut dw, mut db) = (vec![0f32; f], vec![0f32; f]);
            for (pw, pb) in &partials {
                dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
            }
            Ok((
                Some(tensor(dx, x.dims())?),
                Some(tensor(dw, &[self.features])?),
                Some(tensor(db, &[self.features])?),
            ))
        })
    }
}

/// The exact GELU, `x·Φ(x)` (Hugging Face's `"gelu"`, candle's `gelu_erf`), of an f32 tensor on
/// the CPU.
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    span("fwd gelu", xs.device(), || xs.contiguous()?.apply_op1(Gelu))
}

struct Gelu;

/// Φ(x), the standard normal CDF, with candle's f32 erf, as candle's `gelu_erf` computes it
/// (so the forward is candle's to the bit).
fn normal_cdf(x: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5
}

/// Elements per task of the element-wise GELU.
const GELU_CHUNK: usize = 1 << 14;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "exp-cpu-gelu"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::super::cpu_f32(xs, xl, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(GELU_CHUNK)
            .zip(x.par_chunks(GELU_CHUNK))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = normal_cdf(x) * x;
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        span("bwd gelu", x.device(), || {
            let what = "gelu backward";
            let grad = grad.contiguous()?;
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (xv, dy) = (slice(&xs, xl, what)?, slice(&gs, gl, what)?);
            if dy.len() != xv.len() {
                candle_core::bail!("{what}: the gradient does not match the forward pass")
            }
            // φ(x), the standard normal density.
            let density =
                |x: f32| (-0.5 * x * x).exp() * (1.0 / (2.0 * std::f32::consts::PI).sqrt());
            let mut dx = vec![0f32; xv.len()];
            dx.par_chunks_mut(GELU_CHUNK)
                .zip(xv.par_chunks(GELU_CHUNK).zip(dy.par_chunks(GELU_CHUNK)))
                .for_each(|(dx, (x, dy))| {
                    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                        *dx = dy * (normal_cdf(x) + x * density(x));
                    }
                });
            Ok(Some(tensor(dx, x.dims())?))
        })
    }
}
