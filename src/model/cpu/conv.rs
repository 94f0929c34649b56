//! 2-D convolution with its bias, ReLU and 2×2 max-pool fused, on the CPU.
//!
//! Forward, per image: im2col into a per-thread buffer (`taps × pixels`, taps = c·kh·kw), one
//! GEMM `Z = W · col` into a buffer pre-filled with the bias, then the epilogue: ReLU in place,
//! or ReLU and max-pool into the output with each window's first maximum recorded (one byte
//! per pooled value) for the backward. Backward, per image: the pooled gradient routed to its
//! window's maximum (or masked by the ReLU), the bias gradient as row sums, the kernel gradient
//! `dZ · colᵀ` (im2col recomputed: cheaper than keeping a batch of columns in memory), and —
//! only when the input tracks a gradient, so never for the image batch — the input gradient
//! `col2im(Wᵀ · dZ)`. Kernel and bias gradients are summed over fixed chunks of the batch in
//! order (see the parent module), so they do not depend on the thread count.
//!
//! The pooling follows PyTorch's `MaxPool2d(2)` (floor, first maximum, NaN wins), the ReLU
//! PyTorch's (gradient where the output is > 0).

use std::sync::Mutex;

use candle_core::{CpuStorage, Result, Shape, Tensor};
use candle_nn::Conv2d;
use rayon::prelude::*;

use super::{
    apply, gemm, reduction_chunk_len, slice, tensor, with_scratch, LayerKernel, Mat, PhaseClock,
    Threads,
};
use crate::model::{ConvGeometry, ConvNames};

/// What the op applies after the convolution and bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epilogue {
    /// ReLU.
    pub relu: bool,
    /// 2×2 max-pool, stride 2, floor (after the ReLU).
    pub max_pool: bool,
}

/// Window position recorded for a pooled value whose maximum the ReLU zeroed: no gradient.
const NO_GRADIENT: u8 = u8::MAX;

/// `epilogue(layer(xs))` as one op (see the module docs); `xs` is NCHW f32 on the CPU.
pub fn conv2d(
    layer: &Conv2d,
    xs: &Tensor,
    epilogue: Epilogue,
    names: &'static ConvNames,
) -> Result<Tensor> {
    let config = layer.config();
    if config.groups != 1 {
        candle_core::bail!("exp's conv2d supports groups = 1 only")
    }
    let (c_out, c_in, kh, kw) = layer.weight().dims4()?;
    let geometry = ConvGeometry::new(
        xs.dims(),
        (kh, kw),
        config.stride,
        config.padding,
        config.dilation,
    )?;
    if geometry.c != c_in {
        candle_core::bail!(
            "conv2d: input has {} channels, the kernel {c_in}",
            geometry.c
        )
    }
    if epilogue.max_pool && (geometry.oh < 2 || geometry.ow < 2) {
        candle_core::bail!(
            "max-pool 2×2 needs at least a 2×2 map, the convolution gives {}×{}",
            geometry.oh,
            geometry.ow
        )
    }
    let kernel = Kernel {
        g: geometry,
        c_out,
        epilogue,
        input_grad: xs.track_op(),
        argmax: Mutex::new(Vec::new()),
        names,
    };
    apply(kernel, xs, layer.weight(), layer.bias(), names.forward)
}

/// One fused convolution: geometry, epilogue, and the forward's pooling decisions.
struct Kernel {
    g: ConvGeometry,
    c_out: usize,
    epilogue: Epilogue,
    input_grad: bool,
    /// Per pooled value, the position (0..4, row-major) of its window's first maximum, or
    /// [`NO_GRADIENT`]; written by the forward, read by the backward.
    argmax: Mutex<Vec<u8>>,
    names: &'static ConvNames,
}

impl Kernel {
    fn taps(&self) -> usize {
        self.g.c * self.g.kh * self.g.kw
    }

    fn pixels(&self) -> usize {
        self.g.oh * self.g.ow
    }

    /// Output height and width: the convolution's, halved by the pool.
    fn out_hw(&self) -> (usize, usize) {
        if self.epilogue.max_pool {
            (self.g.oh / 2, self.g.ow / 2)
        } else {
            (self.g.oh, self.g.ow)
        }
    }

    fn per_input(&self) -> usize {
        self.g.c * self.g.h * self.g.w
    }

    fn per_output(&self) -> usize {
        let (h, w) = self.out_hw();
        self.c_out * h * w
    }

    /// A 1×1 kernel at stride 1 without padding: the image is its own column matrix.
    fn im2col_is_identity(&self) -> bool {
        self.g.kh == 1 && self.g.kw == 1 && self.g.stride == 1 && self.g.padding == 0
    }

    fn check_operands(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<()> {
        let g = &self.g;
        if x.len() != g.n * self.per_input()
            || w.len() != self.c_out * self.taps()
            || bias.is_some_and(|b| b.len() != self.c_out)
        {
            candle_core::bail!("conv2d: operand sizes do not match the geometry {g:?}")
        }
        Ok(())
    }
}

impl LayerKernel for Kernel {
    const NAME: &'static str = "exp-cpu-conv2d";

    fn backward_label(&self) -> &'static str {
        self.names.backward
    }

    fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        self.check_operands(x, w, bias)?;
        let (taps, pixels, c_out) = (self.taps(), self.pixels(), self.c_out);
        let (per_in, per_out) = (self.per_input(), self.per_output());
        let pool = self.epilogue.max_pool;
        let identity = self.im2col_is_identity();
        let clock = PhaseClock::new();
        let image = |b: usize, y_b: &mut [f32], argmax_b: &mut [u8]| {
            let x_b = &x[b * per_in..(b + 1) * per_in];
            let lens = [
                if identity { 0 } else { taps * pixels },
                if pool { c_out * pixels } else { 0 },
                0,
            ];
            with_scratch(lens, |col, z_buf, _| {
                let col: &[f32] = if identity {
                    x_b
                } else {
                    clock.time("im2col", || im2col(x_b, &self.g, col));
                    col
                };
                let convolve = |z: &mut [f32]| {
                    clock.time("gemm", || {
                        if let Some(bias) = bias {
                            for (row, &b) in z.chunks_exact_mut(pixels).zip(bias) {
                                row.fill(b);
                            }
                        }
                        gemm(
                            z,
                            Mat::row_major(c_out, pixels),
                            bias.is_some(),
                            w,
                            Mat::row_major(c_out, taps),
                            col,
                            Mat::row_major(taps, pixels),
                            Threads::One,
                        );
                    })
                };
                if pool {
                    convolve(z_buf);
                    clock.time("relu + max-pool", || {
                        pool_forward(z_buf, &self.g, self.epilogue.relu, y_b, argmax_b)
                    });
                } else {
                    convolve(y_b);
                    if self.epilogue.relu {
                        clock.time("relu", || relu_in_place(y_b));
                    }
                }
            });
        };
        let mut y = vec![0f32; self.g.n * per_out];
        let mut argmax = Vec::new();
        if pool {
            argmax = vec![0u8; self.g.n * per_out];
            y.par_chunks_mut(per_out)
                .zip(argmax.par_chunks_mut(per_out))
                .enumerate()
                .for_each(|(b, (y_b, a_b))| image(b, y_b, a_b));
        } else {
            y.par_chunks_mut(per_out)
                .enumerate()
                .for_each(|(b, y_b)| image(b, y_b, &mut []));
        }
        *self.argmax.lock().unwrap_or_else(|e| e.into_inner()) = argmax;
        clock.report(self.names.forward);
        let (oh, ow) = self.out_hw();
        Ok((CpuStorage::F32(y), Shape::from((self.g.n, c_out, oh, ow))))
    }

    /// Gradients of input (when it tracks one), kernel and bias.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let g = self.g;
        let (taps, pixels, c_out) = (self.taps(), self.pixels(), self.c_out);
        let (per_in, per_out) = (self.per_input(), self.per_output());
        let Epilogue { relu, max_pool } = self.epilogue;
        let identity = self.im2col_is_identity();
        let what = "conv2d backward";
        let grad = grad.contiguous()?;
        let (x_store, x_layout) = x.storage_and_layout();
        let (w_store, w_layout) = w.storage_and_layout();
        let (g_store, g_layout) = grad.storage_and_layout();
        let (r_store, r_layout) = res.storage_and_layout();
        let (x, w) = (
            slice(&x_store, x_layout, what)?,
            slice(&w_store, w_layout, what)?,
        );
        let grad = slice(&g_store, g_layout, what)?;
        // The ReLU mask without a pool comes from the output (> 0 where the gradient passes).
        let res = if relu && !max_pool {
            slice(&r_store, r_layout, what)?
        } else {
            &[]
        };
        self.check_operands(x, w, None)?;
        let argmax = self.argmax.lock().unwrap_or_else(|e| e.into_inner());
        if grad.len() != g.n * per_out || (max_pool && argmax.len() != g.n * per_out) {
            candle_core::bail!("{what}: the gradient does not match the forward pass")
        }
        let clock = PhaseClock::new();
        let chunk = reduction_chunk_len(g.n);
        let mut dx = if self.input_grad {
            vec![0f32; g.n * per_in]
        } else {
            Vec::new()
        };
        let dx_chunks: Vec<Option<&mut [f32]>> = if self.input_grad {
            dx.chunks_mut(chunk * per_in).map(Some).collect()
        } else {
            (0..g.n.div_ceil(chunk)).map(|_| None).collect()
        };
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(index, mut dx_chunk)| {
                let mut dw = vec![0f32; c_out * taps];
                let mut db = vec![0f32; c_out];
                let first = index * chunk;
                for b in first..(first + chunk).min(g.n) {
                    let x_b = &x[b * per_in..(b + 1) * per_in];
                    let g_b = &grad[b * per_out..(b + 1) * per_out];
                    let routed = max_pool || relu;
                    let lens = [
                        if identity { 0 } else { taps * pixels },
                        if routed { c_out * pixels } else { 0 },
                        if self.input_grad && !identity {
                            taps * pixels
                        } else {
                            0
                        },
                    ];
                    with_scratch(lens, |col, dz_buf, dcol| {
                        let dz: &[f32] = if max_pool {
                            let a_b = &argmax[b * per_out..(b + 1) * per_out];
                            clock.time("route through max-pool", || {
                                pool_backward(g_b, a_b, &g, dz_buf)
                            });
                            dz_buf
                        } else if relu {
                            let r_b = &res[b * per_out..(b + 1) * per_out];
                            clock.time("route through relu", || relu_backward(g_b, r_b, dz_buf));
                            dz_buf
                        } else {
                            g_b
                        };
                        clock.time("bias grad", || {
                            for (acc, row) in db.iter_mut().zip(dz.chunks_exact(pixels)) {
                                *acc += sum(row);
                            }
                        });
                        let col: &[f32] = if identity {
                            x_b
                        } else {
                            clock.time("im2col", || im2col(x_b, &g, col));
                            col
                        };
                        clock.time("kernel grad gemm", || {
                            gemm(
                                &mut dw,
                                Mat::row_major(c_out, taps),
                                true,
                                dz,
                                Mat::row_major(c_out, pixels),
                                col,
                                Mat::row_major(taps, pixels).t(),
                                Threads::One,
                            )
                        });
                        if let Some(dx_chunk) = dx_chunk.as_deref_mut() {
                            let dx_b =
                                &mut dx_chunk[(b - first) * per_in..(b - first + 1) * per_in];
                            let input_gemm = |dst: &mut [f32]| {
                                clock.time("input grad gemm", || {
                                    gemm(
                                        dst,
                                        Mat::row_major(taps, pixels),
                                        false,
                                        w,
                                        Mat::row_major(c_out, taps).t(),
                                        dz,
                                        Mat::row_major(c_out, pixels),
                                        Threads::One,
                                    )
                                })
                            };
                            if identity {
                                // The column gradient is the input gradient.
                                input_gemm(dx_b);
                            } else {
                                input_gemm(dcol);
                                clock.time("col2im", || col2im(dcol, &g, dx_b));
                            }
                        }
                    });
                }
                (dw, db)
            })
            .collect();
        drop(argmax);
        clock.report(self.names.backward);
        let mut parts = partials.into_iter();
        // An empty batch has no chunks: zero gradients.
        let (mut dw, mut db) = parts
            .next()
            .unwrap_or_else(|| (vec![0f32; c_out * taps], vec![0f32; c_out]));
        for (pw, pb) in parts {
            dw.iter_mut().zip(&pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(&pb).for_each(|(a, b)| *a += b);
        }
        let dx = if self.input_grad {
            Some(tensor(dx, &[g.n, g.c, g.h, g.w])?)
        } else {
            None
        };
        Ok((
            dx,
            tensor(dw, &[c_out, g.c, g.kh, g.kw])?,
            tensor(db, &[c_out])?,
        ))
    }
}

/// Output positions `o` (a half-open range) whose tap at offset `tap` (kernel index ×
/// dilation) reads inside an input of `len`: `0 ≤ o·stride + tap − padding < len`.
fn inside(out_len: usize, len: usize, stride: usize, tap: usize, padding: usize) -> (usize, usize) {
    let lo = padding.saturating_sub(tap).div_ceil(stride).min(out_len);
    let hi = (len + padding)
        .saturating_sub(tap)
        .div_ceil(stride)
        .min(out_len);
    (lo, hi.max(lo))
}

/// One image's columns, `taps × pixels`: row (c, ky, kx) holds input channel c shifted by the
/// tap, zero where the tap falls in the padding.
fn im2col(x: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    let pixels = g.oh * g.ow;
    let mut rows = col.chunks_exact_mut(pixels);
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            let (y_lo, y_hi) = inside(g.oh, g.h, g.stride, ky * g.dilation, g.padding);
            for kx in 0..g.kw {
                let Some(row) = rows.next() else { return };
                let (x_lo, x_hi) = inside(g.ow, g.w, g.stride, kx * g.dilation, g.padding);
                for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
                    if oy < y_lo || oy >= y_hi || x_lo == x_hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = oy * g.stride + ky * g.dilation - g.padding;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let ix0 = x_lo * g.stride + kx * g.dilation - g.padding;
                    dst[..x_lo].fill(0.0);
                    dst[x_hi..].fill(0.0);
                    let dst = &mut dst[x_lo..x_hi];
                    if g.stride == 1 {
                        dst.copy_from_slice(&src[ix0..ix0 + dst.len()]);
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = src[ix0 + j * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// col2im, im2col's adjoint: adds each column entry to the input pixel it was copied from.
/// `dx` must start zeroed.
fn col2im(dcol: &[f32], g: &ConvGeometry, dx: &mut [f32]) {
    let pixels = g.oh * g.ow;
    let mut rows = dcol.chunks_exact(pixels);
    for c in 0..g.c {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            let (y_lo, y_hi) = inside(g.oh, g.h, g.stride, ky * g.dilation, g.padding);
            for kx in 0..g.kw {
                let Some(row) = rows.next() else { return };
                let (x_lo, x_hi) = inside(g.ow, g.w, g.stride, kx * g.dilation, g.padding);
                if x_lo == x_hi {
                    continue;
                }
                for oy in y_lo..y_hi {
                    let iy = oy * g.stride + ky * g.dilation - g.padding;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let src = &row[oy * g.ow + x_lo..oy * g.ow + x_hi];
                    let ix0 = x_lo * g.stride + kx * g.dilation - g.padding;
                    if g.stride == 1 {
                        for (d, s) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (j, s) in src.iter().enumerate() {
                            dst[ix0 + j * g.stride] += s;
                        }
                    }
                }
            }
        }
    }
}

/// ReLU that keeps NaN (so a diverging run is caught, as in PyTorch).
fn relu_in_place(values: &mut [f32]) {
    for v in values {
        if *v < 0.0 {
            *v = 0.0;
        }
    }
}

/// The gradient except where the ReLU's output is ≤ 0 (PyTorch's `threshold_backward`: a NaN
/// output passes its gradient, so the NaN reaches the parameters).
fn relu_backward(grad: &[f32], output: &[f32], dz: &mut [f32]) {
    for ((d, &g), &y) in dz.iter_mut().zip(grad).zip(output) {
        *d = if y <= 0.0 { 0.0 } else { g };
    }
}

/// Pools each channel plane of `z` (the convolution's `oh × ow` output) into `out`, recording
/// the window position of each maximum; with `relu`, a maximum ≤ 0 becomes 0 and passes no
/// gradient.
fn pool_forward(z: &[f32], g: &ConvGeometry, relu: bool, out: &mut [f32], argmax: &mut [u8]) {
    let (ph, pw) = (g.oh / 2, g.ow / 2);
    let planes = z.chunks_exact(g.oh * g.ow).zip(
        out.chunks_exact_mut(ph * pw)
            .zip(argmax.chunks_exact_mut(ph * pw)),
    );
    for (plane, (out, argmax)) in planes {
        for i in 0..ph {
            let top = &plane[2 * i * g.ow..(2 * i + 1) * g.ow];
            let bottom = &plane[(2 * i + 1) * g.ow..(2 * i + 2) * g.ow];
            let out = &mut out[i * pw..(i + 1) * pw];
            let argmax = &mut argmax[i * pw..(i + 1) * pw];
            for j in 0..pw {
                let window = [top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]];
                let (mut k, mut v) = (0, window[0]);
                for (at, &candidate) in window.iter().enumerate().skip(1) {
                    if candidate > v {
                        (k, v) = (at, candidate);
                    }
                }
                // A NaN anywhere (rare: a diverging run) takes the slow path, where NaN wins.
                if window.iter().sum::<f32>().is_nan() {
                    (k, v) =
                        crate::model::pool::window_first_max(plane, g.ow, 2 * i * g.ow + 2 * j);
                }
                if relu && v <= 0.0 {
                    out[j] = 0.0;
                    argmax[j] = NO_GRADIENT;
                } else {
                    out[j] = v;
                    argmax[j] = k as u8;
                }
            }
        }
    }
}

/// Routes each pooled gradient to its window's recorded maximum in `dz` (`oh × ow` planes),
/// zero elsewhere (including a last row or column no window covers).
fn pool_backward(grad: &[f32], argmax: &[u8], g: &ConvGeometry, dz: &mut [f32]) {
    let (ph, pw) = (g.oh / 2, g.ow / 2);
    let planes = dz
        .chunks_exact_mut(g.oh * g.ow)
        .zip(grad.chunks_exact(ph * pw).zip(argmax.chunks_exact(ph * pw)));
    for (plane, (grad, argmax)) in planes {
        for i in 0..ph {
            let (top, bottom) = plane[2 * i * g.ow..(2 * i + 2) * g.ow].split_at_mut(g.ow);
            for j in 0..pw {
                let (k, v) = (argmax[i * pw + j], grad[i * pw + j]);
                let pick = |at: u8| if k == at { v } else { 0.0 };
                top[2 * j] = pick(0);
                top[2 * j + 1] = pick(1);
                bottom[2 * j] = pick(2);
                bottom[2 * j + 1] = pick(3);
            }
            top[2 * pw..].fill(0.0);
            bottom[2 * pw..].fill(0.0);
        }
        plane[2 * ph * g.ow..].fill(0.0);
    }
}

/// The sum of `values` in a fixed order that vectorises (eight running sums).
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}
