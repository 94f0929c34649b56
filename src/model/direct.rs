//! Direct convolution for layers with few taps per output on an input that needs no gradient:
//! the first layer on grey images (1 channel × 3×3 = 9 taps). As im2col + GEMM that layer is a
//! GEMM with K = 9, a shape cuBLAS runs at a small fraction of its speed (measured on an H200:
//! 2.1 ms per forward at batch 256, more than the 60× larger second layer); one thread per
//! output with the bias fused takes a few microseconds. Its backward is the kernel and bias
//! gradient only, as a deterministic per-(channel, tap) reduction.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::ConvGeometry;
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

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!(
            "direct conv2d on the CPU: f32 only, got {:?}",
            storage.dtype()
        )
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("direct conv2d: operand is not contiguous"),
    }
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
        let (x, wt, bias) = (f32_slice(x, xl)?, f32_slice(w, wl)?, f32_slice(b, bl)?);
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
        let (x, grad) = (f32_slice(x, xl)?, f32_slice(g, gl)?);
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
    use super::*;
    use crate::rng::{ExpRng, Purpose};
    use candle_core::{Device, Var};

    static NAMES: super::super::ConvNames = super::super::ConvNames {
        forward: "test fwd",
        bias: "test bias",
        kernel_grad: "test kernel grad",
        input_grad: "test input grad",
    };

    #[test]
    fn matches_candles_conv2d_and_its_parameter_gradients() -> Result<()> {
        let mut rng = ExpRng::new(5, Purpose::Init);
        let dev = Device::Cpu;
        for (n, c_in, c_out, h, w, k, padding, stride) in
            [(4, 1, 8, 28, 28, 3, 0, 1), (2, 3, 4, 11, 9, 3, 1, 2)]
        {
            let x = Tensor::from_vec(rng.uniform(n * c_in * h * w, 1.0), (n, c_in, h, w), &dev)?;
            let wv = Var::from_tensor(&Tensor::from_vec(
                rng.uniform(c_out * c_in * k * k, 0.5),
                (c_out, c_in, k, k),
                &dev,
            )?)?;
            let bv = Var::from_tensor(&Tensor::from_vec(rng.uniform(c_out, 0.5), c_out, &dev)?)?;
            let geometry = ConvGeometry::new(x.dims(), (k, k), stride, padding, 1)?;
            let ours = conv2d_direct(&x, wv.as_tensor(), bv.as_tensor(), geometry, &NAMES)?;
            let theirs = x
                .conv2d(wv.as_tensor(), padding, stride, 1, 1)?
                .broadcast_add(&bv.as_tensor().reshape((1, c_out, 1, 1))?)?;
            let probe =
                Tensor::from_vec(rng.uniform(theirs.elem_count(), 1.0), theirs.shape(), &dev)?;
            let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= 1e-5 * scale, "{what}: {diff} (scale {scale})");
                Ok(())
            };
            close(&ours, &theirs, "output")?;
            let g_ours = (ours * &probe)?.sum_all()?.backward()?;
            let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
            for (v, what) in [(&wv, "kernel"), (&bv, "bias")] {
                let (Some(a), Some(b)) = (g_ours.get(v), g_theirs.get(v)) else {
                    panic!("missing {what} gradient")
                };
                close(a, b, what)?;
            }
        }
        Ok(())
    }
}
