//! Direct convolution for layers with few taps per output on an input that needs no gradient:
//! the first layer on grey images (1 channel × 3×3 = 9 taps). As im2col + GEMM that layer is a
//! GEMM with K = 9, a shape cuBLAS runs at a small fraction of its speed (measured on an H200:
//! 2.1 ms per forward at batch 256, more than the 60× larger second layer); one thread per
//! output with the bias fused takes a few microseconds. Its backward is the kernel and bias
//! gradient only, as a deterministic per-(channel, tap) reduction.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{cpu_f32, ConvGeometry};
use crate::profile::span;

/// Layers with at most this many taps per output (c·kh·kw) use the direct kernel.
pub const MAX_TAPS: usize = 64;

/// `conv2d(xs, weight) + bias` directly; `xs` must not need a gradient.
pub fn conv2d_direct(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    geometry: ConvGeometry,
    names: &'static super::ConvNames,
) -> Result<Tensor> {
    let c_out = weight.dim(0)?;
    span(names.forward, xs.device(), || {
        xs.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            DirectConv {
                geometry,
                c_out,
                names,
            },
        )
    })
}

struct DirectConv {
    geometry: ConvGeometry,
    c_out: usize,
    names: &'static super::ConvNames,
}

impl CustomOp3 for DirectConv {
    fn name(&self) -> &'static str {
        "exp-conv2d-direct"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "direct conv2d";
        let (x, wt, bias) = (
            cpu_f32(x, xl, op)?,
            cpu_f32(w, wl, op)?,
            cpu_f32(b, bl, op)?,
        );
        let g = self.geometry;
        let mut y = Vec::with_capacity(g.n * self.c_out * g.oh * g.ow);
        for n in 0..g.n {
            for oc in 0..self.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = bias[oc];
                        for ci in 0..g.c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    if let Some((iy, ix)) = g.source(oy, ox, ky, kx) {
                                        acc += wt[((oc * g.c + ci) * g.kh + ky) * g.kw + kx]
                                            * x[((n * g.c + ci) * g.h + iy) * g.w + ix];
                                    }
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.n, self.c_out, g.oh, g.ow)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv_direct(
            &[(x, xl), (w, wl), (b, bl)],
            &self.geometry,
            self.c_out,
            false,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if x.track_op() {
            candle_core::bail!(
                "direct conv2d: the input needs a gradient, which this op does not compute"
            )
        }
        let taps = self.geometry.c * self.geometry.kh * self.geometry.kw;
        let both = span(self.names.kernel_grad, x.device(), || {
            x.apply_op2_no_bwd(
                &grad.contiguous()?,
                &DirectConvWeightGrad {
                    geometry: self.geometry,
                    c_out: self.c_out,
                },
            )
        })?;
        let grad_w = both.narrow(1, 0, taps)?.reshape(w.shape())?;
        let grad_b = both.narrow(1, taps, 1)?.flatten_all()?;
        Ok((None, Some(grad_w), Some(grad_b)))
    }
}

/// `(c_out, taps + 1)`: the kernel gradient, then the bias gradient as the last column.
struct DirectConvWeightGrad {
    geometry: ConvGeometry,
    c_out: usize,
}

impl CustomOp2 for DirectConvWeightGrad {
    fn name(&self) -> &'static str {
        "exp-conv2d-direct-weight-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "direct conv2d gradient";
        let (x, grad) = (cpu_f32(x, xl, op)?, cpu_f32(g, gl, op)?);
        let geo = self.geometry;
        let taps = geo.c * geo.kh * geo.kw;
        let mut out = vec![0f32; self.c_out * (taps + 1)];
        for (oc, row) in out.chunks_mut(taps + 1).enumerate() {
            for n in 0..geo.n {
                for oy in 0..geo.oh {
                    for ox in 0..geo.ow {
                        let gv = grad[((n * self.c_out + oc) * geo.oh + oy) * geo.ow + ox];
                        row[taps] += gv;
                        for ci in 0..geo.c {
                            for ky in 0..geo.kh {
                                for kx in 0..geo.kw {
                                    if let Some((iy, ix)) = geo.source(oy, ox, ky, kx) {
                                        row[(ci * geo.kh + ky) * geo.kw + kx] +=
                                            gv * x[((n * geo.c + ci) * geo.h + iy) * geo.w + ix];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.c_out, taps + 1))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv_direct(&[(x, xl), (g, gl)], &self.geometry, self.c_out, true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv_testing::{Case, NAMES};
    use super::*;
    use crate::rng::{ExpRng, Purpose};

    /// Output, kernel and bias gradients agree with candle's conv2d; the image input has none.
    #[test]
    fn matches_candles_conv2d_and_its_parameter_gradients() -> Result<()> {
        let mut rng = ExpRng::new(5, Purpose::Init);
        for ((n, c_in, h, w), c_out, k, padding, stride) in
            [((4, 1, 28, 28), 8, 3, 0, 1), ((2, 3, 11, 9), 4, 3, 1, 2)]
        {
            let case = Case::random(&mut rng, (n, c_in, h, w), c_out, k)?;
            let image = case.x.as_tensor().detach();
            let geometry = ConvGeometry::new(image.dims(), (k, k), stride, padding, 1)?;
            let ours = conv2d_direct(
                &image,
                case.weight.as_tensor(),
                case.bias.as_tensor(),
                geometry,
                &NAMES,
            )?;
            let theirs = case.reference(&image, padding, stride, 1)?;
            case.assert_matches(&mut rng, ours, theirs, 1e-5)?;
        }
        Ok(())
    }
}
