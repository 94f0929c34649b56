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

impl Epilogue {
    /// The convolution alone.
    pub const NONE: Epilogue = Epilogue {
        relu: false,
        max_pool: false,
    };
}

/// Columns below which a GEMM is too thin to run at speed (a ResNet's 4×4 maps give 16 per
/// image: `W · col` ran at 113 GFLOP/s per core there, at 213 with 16 images side by side, the
/// input gradient at 36 and 190; scripts/bench, docs/benchmarks.md). Smaller maps group
/// several images per GEMM. gemm splits a sum differently for a thin matrix, so an image in a
/// short last group may differ in its last bits from the same image in a full group: results
/// follow the batch's composition (as `exp verify` rebuilds it), never the thread count.
const MIN_GROUP_COLUMNS: usize = 256;

/// Columns (images × pixels) a reduction chunk of the backward covers at least: its GEMMs then
/// outweigh the kernel-sized partial sum the chunk adds (resnet50's layer4: 16 chunks of 4
/// images spent more time summing partials than multiplying). 256, 512 and 1,024 measured
/// alike on resnet18 and resnet50 (2 cores); 512 keeps the partial sums few.
const MIN_CHUNK_COLUMNS: usize = 512;

/// Below this many chunks the backward's GEMMs run on all threads (see `backward`).
const FEW_CHUNKS: usize = 4;

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

    /// Images one GEMM takes side by side: enough for [`MIN_GROUP_COLUMNS`] columns, at most
    /// the batch. Follows the shapes only, so results do not depend on the thread count.
    fn group(&self) -> usize {
        MIN_GROUP_COLUMNS
            .div_ceil(self.pixels().max(1))
            .clamp(1, self.g.n.max(1))
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
        let group = self.group();
        let identity = self.im2col_is_identity() && group == 1;
        let clock = PhaseClock::new();
        // The images `first..` whose outputs are `y_g` (a group, the last one maybe short).
        let run_group = |first: usize, y_g: &mut [f32], argmax_g: &mut [u8]| {
            let images = y_g.len() / per_out;
            let width = images * pixels;
            let direct = images == 1 && !pool;
            let lens = [
                if identity { 0 } else { taps * width },
                if direct { 0 } else { c_out * width },
                0,
            ];
            with_scratch(lens, |col, z_buf, _| {
                let col: &[f32] = if identity {
                    &x[first * per_in..(first + 1) * per_in]
                } else {
                    clock.time("im2col", || {
                        for j in 0..images {
                            let x_b = &x[(first + j) * per_in..(first + j + 1) * per_in];
                            im2col(x_b, &self.g, col, width, j * pixels);
                        }
                    });
                    col
                };
                let convolve = |z: &mut [f32]| {
                    clock.time("gemm", || {
                        if let Some(bias) = bias {
                            for (row, &b) in z.chunks_exact_mut(width).zip(bias) {
                                row.fill(b);
                            }
                        }
                        gemm(
                            z,
                            Mat::row_major(c_out, width),
                            bias.is_some(),
                            w,
                            Mat::row_major(c_out, taps),
                            col,
                            Mat::row_major(taps, width),
                            Threads::One,
                        );
                    })
                };
                if direct {
                    convolve(y_g);
                    if self.epilogue.relu {
                        clock.time("relu", || relu_in_place(y_g));
                    }
                    return;
                }
                convolve(z_buf);
                for (j, y_b) in y_g.chunks_exact_mut(per_out).enumerate() {
                    let z = &z_buf[j * pixels..];
                    if pool {
                        let a_b = &mut argmax_g[j * per_out..(j + 1) * per_out];
                        clock.time("relu + max-pool", || {
                            pool_forward(z, width, &self.g, self.epilogue.relu, y_b, a_b)
                        });
                    } else {
                        clock.time("ungroup", || {
                            for (c, plane) in y_b.chunks_exact_mut(pixels).enumerate() {
                                plane.copy_from_slice(&z[c * width..c * width + pixels]);
                            }
                        });
                        if self.epilogue.relu {
                            clock.time("relu", || relu_in_place(y_b));
                        }
                    }
                }
            });
        };
        let mut y = vec![0f32; self.g.n * per_out];
        let mut argmax = Vec::new();
        if pool {
            argmax = vec![0u8; self.g.n * per_out];
            y.par_chunks_mut(group * per_out)
                .zip(argmax.par_chunks_mut(group * per_out))
                .enumerate()
                .for_each(|(i, (y_g, a_g))| run_group(i * group, y_g, a_g));
        } else {
            y.par_chunks_mut(group * per_out)
                .enumerate()
                .for_each(|(i, y_g)| run_group(i * group, y_g, &mut []));
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
        let group = self.group();
        let identity = self.im2col_is_identity() && group == 1;
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
        // Whole groups per reduction chunk, and at least MIN_CHUNK_COLUMNS columns: each chunk
        // adds a kernel-sized partial sum, which for a wide layer on a small map (512 × 4608
        // weights, 16 pixels per image) cost more than the chunk's products. Where that leaves
        // fewer chunks than cores, the chunk's products use every thread instead (gemm splits
        // the output, so the sums, and the bits, stay the same). Like the grouping, all of this
        // follows the shapes only, never the thread count.
        let chunk = reduction_chunk_len(g.n)
            .max(MIN_CHUNK_COLUMNS.div_ceil(pixels.max(1)))
            .div_ceil(group)
            * group;
        let threads = if g.n.div_ceil(chunk) < FEW_CHUNKS {
            Threads::All
        } else {
            Threads::One
        };
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
        let routed = max_pool || relu;
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(index, mut dx_chunk)| {
                let mut dw = vec![0f32; c_out * taps];
                let mut db = vec![0f32; c_out];
                let first = index * chunk;
                let end = (first + chunk).min(g.n);
                for start in (first..end).step_by(group) {
                    let images = group.min(end - start);
                    let width = images * pixels;
                    let lens = [
                        if identity { 0 } else { taps * width },
                        if routed || images > 1 {
                            c_out * width
                        } else {
                            0
                        },
                        if self.input_grad && !identity {
                            taps * width
                        } else {
                            0
                        },
                    ];
                    with_scratch(lens, |col, dz_buf, dcol| {
                        // The gradient below the epilogue, the group's images side by side.
                        let dz: &[f32] = if !routed && images == 1 {
                            &grad[start * per_out..(start + 1) * per_out]
                        } else {
                            for j in 0..images {
                                let b = start + j;
                                let g_b = &grad[b * per_out..(b + 1) * per_out];
                                let dz_b = &mut dz_buf[j * pixels..];
                                if max_pool {
                                    let a_b = &argmax[b * per_out..(b + 1) * per_out];
                                    clock.time("route through max-pool", || {
                                        pool_backward(g_b, a_b, &g, dz_b, width)
                                    });
                                } else {
                                    let r_b = if relu {
                                        &res[b * per_out..(b + 1) * per_out]
                                    } else {
                                        &[]
                                    };
                                    clock.time("route through relu", || {
                                        for c in 0..c_out {
                                            let plane = c * pixels..(c + 1) * pixels;
                                            let dst = &mut dz_b[c * width..c * width + pixels];
                                            if relu {
                                                relu_backward(
                                                    &g_b[plane.clone()],
                                                    &r_b[plane],
                                                    dst,
                                                );
                                            } else {
                                                dst.copy_from_slice(&g_b[plane]);
                                            }
                                        }
                                    });
                                }
                            }
                            dz_buf
                        };
                        clock.time("bias grad", || {
                            for (acc, row) in db.iter_mut().zip(dz.chunks_exact(width)) {
                                *acc += sum(row);
                            }
                        });
                        let col: &[f32] = if identity {
                            &x[start * per_in..(start + 1) * per_in]
                        } else {
                            clock.time("im2col", || {
                                for j in 0..images {
                                    let x_b = &x[(start + j) * per_in..(start + j + 1) * per_in];
                                    im2col(x_b, &g, col, width, j * pixels);
                                }
                            });
                            col
                        };
                        clock.time("kernel grad gemm", || {
                            gemm(
                                &mut dw,
                                Mat::row_major(c_out, taps),
                                true,
                                dz,
                                Mat::row_major(c_out, width),
                                col,
                                Mat::row_major(taps, width).t(),
                                threads,
                            )
                        });
                        if let Some(dx_chunk) = dx_chunk.as_deref_mut() {
                            let dx_g = &mut dx_chunk
                                [(start - first) * per_in..(start - first + images) * per_in];
                            let input_gemm = |dst: &mut [f32]| {
                                clock.time("input grad gemm", || {
                                    gemm(
                                        dst,
                                        Mat::row_major(taps, width),
                                        false,
                                        w,
                                        Mat::row_major(c_out, taps).t(),
                                        dz,
                                        Mat::row_major(c_out, width),
                                        threads,
                                    )
                                })
                            };
                            if identity {
                                // The column gradient is the input gradient.
                                input_gemm(dx_g);
                            } else {
                                input_gemm(dcol);
                                clock.time("col2im", || {
                                    for (j, dx_b) in dx_g.chunks_exact_mut(per_in).enumerate() {
                                        col2im(dcol, width, j * pixels, &g, dx_b);
                                    }
                                });
                            }
                        }
                    });
                }
                (dw, db)
            })
            .collect();
        drop(argmax);
        let (dw, db) = clock.time("sum of chunks", || {
            sum_partials(&partials, c_out * taps, c_out)
        });
        clock.report(self.names.backward);
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

/// The chunks' kernel and bias gradients summed in chunk order (each element by one task, so
/// the order, and the result, does not depend on the thread count); zeros for no chunks (an
/// empty batch).
fn sum_partials(
    partials: &[(Vec<f32>, Vec<f32>)],
    dw_len: usize,
    db_len: usize,
) -> (Vec<f32>, Vec<f32>) {
    const BLOCK: usize = 1 << 14;
    let mut dw = vec![0f32; dw_len];
    dw.par_chunks_mut(BLOCK).enumerate().for_each(|(i, block)| {
        for (part, _) in partials {
            for (a, b) in block.iter_mut().zip(&part[i * BLOCK..]) {
                *a += b;
            }
        }
    });
    let mut db = vec![0f32; db_len];
    for (_, part) in partials {
        db.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    (dw, db)
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

/// One image's columns, `taps × pixels`, into columns `offset..offset + pixels` of `col`, a
/// matrix `width` wide (a group's images side by side): row (c, ky, kx) holds input channel
/// c shifted by the tap, zero where the tap falls in the padding.
fn im2col(x: &[f32], g: &ConvGeometry, col: &mut [f32], width: usize, offset: usize) {
    let pixels = g.oh * g.ow;
    let mut rows = col
        .chunks_mut(width)
        .map(|row| &mut row[offset..offset + pixels]);
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ky in 0..g.kh {
            let (y_lo, y_hi) = inside(g.oh, g.h, g.stride, ky * g.dilation, g.padding);
            for kx in 0..g.kw {
                let Some(row) = rows.next() else { return };
                let (x_lo, x_hi) = inside(g.ow, g.w, g.stride, kx * g.dilation, g.padding);
                if let Some(shift) = same_size_shift(g, ky, kx) {
                    // One copy of the whole shifted plane, then the taps that fell in the left
                    // or right padding (they wrapped onto the neighbouring row) zeroed.
                    let (lo, hi) = shifted_range(g, y_lo, y_hi, shift);
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                    if lo < hi {
                        let src = lo.wrapping_add_signed(shift)..hi.wrapping_add_signed(shift);
                        row[lo..hi].copy_from_slice(&plane[src]);
                    }
                    for dst in row[y_lo * g.w..y_hi * g.w].chunks_exact_mut(g.w) {
                        dst[..x_lo].fill(0.0);
                        dst[x_hi..].fill(0.0);
                    }
                    continue;
                }
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

/// For a stride-1 convolution whose output is as large as its input ("same" padding), the
/// offset from an output pixel to the input pixel tap (ky, kx) reads: `(ky − p)·w + (kx − p)`,
/// the same for every pixel, so a tap's row of the column matrix is the plane shifted.
fn same_size_shift(g: &ConvGeometry, ky: usize, kx: usize) -> Option<isize> {
    let same = g.stride == 1 && g.dilation == 1 && g.oh == g.h && g.ow == g.w;
    same.then(|| {
        let p = g.padding as isize;
        (ky as isize - p) * g.w as isize + (kx as isize - p)
    })
}

/// The output pixels `lo..hi` whose shifted input pixel lies in the plane, within the rows
/// `y_lo..y_hi` whose tap row does.
fn shifted_range(g: &ConvGeometry, y_lo: usize, y_hi: usize, shift: isize) -> (usize, usize) {
    let plane = (g.h * g.w) as isize;
    let (first, end) = ((y_lo * g.w) as isize, (y_hi * g.w) as isize);
    let lo = first.max(-shift).min(end);
    let hi = end.min(plane - shift).max(lo);
    (lo as usize, hi as usize)
}

/// col2im, im2col's adjoint: adds each column entry (columns `offset..offset + pixels` of a
/// matrix `width` wide) to the input pixel it was copied from. `dx` must start zeroed; `dcol`
/// is scratch (entries that fall in the padding are zeroed on the way).
fn col2im(dcol: &mut [f32], width: usize, offset: usize, g: &ConvGeometry, dx: &mut [f32]) {
    let pixels = g.oh * g.ow;
    let mut rows = dcol
        .chunks_mut(width)
        .map(|row| &mut row[offset..offset + pixels]);
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
                if let Some(shift) = same_size_shift(g, ky, kx) {
                    // im2col's shortcut backwards: the wrapped taps zeroed, then one long add.
                    for src in row[y_lo * g.w..y_hi * g.w].chunks_exact_mut(g.w) {
                        src[..x_lo].fill(0.0);
                        src[x_hi..].fill(0.0);
                    }
                    let (lo, hi) = shifted_range(g, y_lo, y_hi, shift);
                    if lo < hi {
                        let dst = lo.wrapping_add_signed(shift)..hi.wrapping_add_signed(shift);
                        for (d, s) in plane[dst].iter_mut().zip(&row[lo..hi]) {
                            *d += s;
                        }
                    }
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
        // A select, not a conditional store, so that it vectorises.
        *v = if *v < 0.0 { 0.0 } else { *v };
    }
}

/// The gradient except where the ReLU's output is ≤ 0 (PyTorch's `threshold_backward`: a NaN
/// output passes its gradient, so the NaN reaches the parameters).
fn relu_backward(grad: &[f32], output: &[f32], dz: &mut [f32]) {
    for ((d, &g), &y) in dz.iter_mut().zip(grad).zip(output) {
        *d = if y <= 0.0 { 0.0 } else { g };
    }
}

/// Pools each channel plane of `z` (the convolution's `oh × ow` output, planes `stride` apart)
/// into `out`, recording the window position of each maximum; with `relu`, a maximum ≤ 0
/// becomes 0 and passes no gradient.
fn pool_forward(
    z: &[f32],
    stride: usize,
    g: &ConvGeometry,
    relu: bool,
    out: &mut [f32],
    argmax: &mut [u8],
) {
    let (ph, pw) = (g.oh / 2, g.ow / 2);
    let planes = z.chunks(stride).map(|p| &p[..g.oh * g.ow]).zip(
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

/// Routes each pooled gradient to its window's recorded maximum in `dz` (`oh × ow` planes,
/// `stride` apart), zero elsewhere (including a last row or column no window covers).
fn pool_backward(grad: &[f32], argmax: &[u8], g: &ConvGeometry, dz: &mut [f32], stride: usize) {
    let (ph, pw) = (g.oh / 2, g.ow / 2);
    let channels = grad.len() / (ph * pw).max(1);
    let planes = dz
        .chunks_mut(stride)
        .take(channels)
        .map(|p| &mut p[..g.oh * g.ow])
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
