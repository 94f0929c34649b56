//! Convolution as im2col + GEMM, with every gradient a GEMM or col2im.
//!
//! candle 0.11.1's conv2d backward computes the input gradient with a direct
//! `conv_transpose2d` kernel and the kernel gradient as a convolution over the transposed,
//! non-contiguous input; on a GPU both are far slower than the matrix products they amount to.
//! Here the convolution is written as `im2col(x) · Wᵀ`: the forward is one GEMM, and candle's
//! autograd turns the backward into two GEMMs (the kernel gradient `colᵀ · dY`, the column
//! gradient `dY · W`) plus col2im, the adjoint of im2col, which is this op's backward. col2im
//! is a gather, so the input gradient is deterministic. The first layer's image batch tracks no
//! gradient, so its col2im never runs.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use crate::kernel_args::ConvGeometry;
use crate::profile::span;

/// `conv2d(xs, weight) + bias` as im2col + GEMM (see the module docs). `xs`, `weight` and
/// `bias` share a dtype.
pub fn conv2d_gemm(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
    names: &'static super::ConvNames,
) -> Result<Tensor> {
    let (c_out, c_in, kh, kw) = weight.dims4()?;
    let g = ConvGeometry::new(xs.dims(), (kh, kw), stride, padding, dilation)?;
    if g.c != c_in {
        candle_core::bail!("conv2d: input has {} channels, the kernel {c_in}", g.c)
    }
    let device = xs.device();
    let taps = c_in * kh * kw;
    let kernel = weight.reshape((c_out, taps))?;
    // With a bias, the columns end in a 1 and the bias is the kernel matrix's last column:
    // the GEMM adds it, and its gradient falls out of the GEMM's backward.
    let (ld, kernel) = match bias {
        Some(bias) => (
            taps + 1,
            Tensor::cat(&[&kernel, &bias.reshape((c_out, 1))?], 1)?,
        ),
        None => (taps, kernel),
    };
    span(names.forward, device, || {
        let col = xs.contiguous()?.apply_op1(Im2Col {
            geometry: g,
            ld,
            names,
        })?;
        // (n·oh·ow, ld) · (ld, c_out): one GEMM; the gradients are GEMMs too.
        let ys = col.matmul(&kernel.t()?)?;
        ys.reshape((g.n, g.oh, g.ow, c_out))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    })
}

/// im2col into rows of `ld` values (the taps, then ones up to `ld`); its backward is col2im.
struct Im2Col {
    geometry: ConvGeometry,
    ld: usize,
    names: &'static super::ConvNames,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "exp-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let x = super::cpu_f32(storage, layout, "im2col")?;
        let g = self.geometry;
        let (taps, ld) = (g.c * g.kh * g.kw, self.ld);
        let mut col = vec![0f32; g.n * g.oh * g.ow * ld];
        col.par_chunks_mut(g.oh * g.ow * ld)
            .enumerate()
            .for_each(|(b, image_rows)| {
                for (pixel, row) in image_rows.chunks_mut(ld).enumerate() {
                    let (oy, ox) = (pixel / g.ow, pixel % g.ow);
                    row[taps..].fill(1.0);
                    for ci in 0..g.c {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                if let Some((iy, ix)) = g.source(oy, ox, ky, kx) {
                                    row[(ci * g.kh + ky) * g.kw + kx] =
                                        x[((b * g.c + ci) * g.h + iy) * g.w + ix];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(col), Shape::from((g.n * g.oh * g.ow, ld))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::im2col(storage, layout, &self.geometry, self.ld, false)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        span(self.names.input_grad, arg.device(), || {
            Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&Col2Im {
                geometry: self.geometry,
                ld: self.ld,
            })?))
        })
    }
}

/// col2im, the adjoint of im2col: each pixel sums the column entries it was copied to (rows
/// of `ld`; entries past the taps, the ones column, belong to no pixel).
struct Col2Im {
    geometry: ConvGeometry,
    ld: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "exp-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let col = super::cpu_f32(storage, layout, "col2im")?;
        let g = self.geometry;
        let ld = self.ld;
        let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
        // Accumulated per image, output pixel by output pixel: the same order on every run.
        dx.par_chunks_mut(g.c * g.h * g.w)
            .enumerate()
            .for_each(|(b, image)| {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let row = &col[((b * g.oh + oy) * g.ow + ox) * ld..][..ld];
                        for ci in 0..g.c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    if let Some((iy, ix)) = g.source(oy, ox, ky, kx) {
                                        image[(ci * g.h + iy) * g.w + ix] +=
                                            row[(ci * g.kh + ky) * g.kw + kx];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::im2col(storage, layout, &self.geometry, self.ld, true)
    }
}

/// Whether the im2col path handles this dtype on this device.
pub fn supported(xs: &Tensor) -> bool {
    match xs.device() {
        candle_core::Device::Cpu => xs.dtype() == DType::F32,
        candle_core::Device::Cuda(_) => {
            matches!(xs.dtype(), DType::F32 | DType::F16 | DType::BF16)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::conv_testing::{Case, NAMES};
    use super::*;
    use crate::rng::{ExpRng, Purpose};

    /// Output and all gradients agree with candle's conv2d (GEMM summation order differs from
    /// candle's direct kernels, so within f32 rounding), over padding, stride and dilation.
    #[test]
    fn matches_candles_conv2d_and_its_gradients() -> Result<()> {
        let mut rng = ExpRng::new(11, Purpose::Init);
        for (input, c_out, k, padding, stride, dilation) in [
            ((4, 1, 28, 28), 8, 3, 0, 1, 1),
            ((3, 3, 13, 11), 5, 3, 1, 1, 1),
            ((2, 2, 9, 9), 4, 5, 2, 2, 1),
            ((2, 3, 12, 10), 4, 3, 2, 1, 2),
        ] {
            let case = Case::random(&mut rng, input, c_out, k)?;
            let x = case.x.as_tensor();
            let ours = conv2d_gemm(
                x,
                case.weight.as_tensor(),
                Some(case.bias.as_tensor()),
                stride,
                padding,
                dilation,
                &NAMES,
            )?;
            let theirs = case.reference(x, padding, stride, dilation)?;
            case.assert_matches(&mut rng, ours, theirs, 1e-5)?;
        }
        Ok(())
    }
}
