//! 2-D convolution whose backward pass skips the input gradient when nothing needs it.
//!
//! candle 0.11.1's conv2d backward always computes the gradient of the input (a full
//! `conv_transpose2d`), even when the input is the image batch, which no parameter depends
//! on. For the first convolution of every model that is wasted work as large as the
//! convolution itself. Here, when the input does not track gradients, the forward runs candle's
//! conv2d on the detached weight and a custom op re-attaches the weight with a backward that
//! computes the kernel gradient alone (with candle's own formula, so values are unchanged).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use candle_nn::{Conv2d, Module};

/// `layer(xs)` in `xs`'s dtype; `training` says whether a backward pass may follow.
pub fn conv2d(layer: &Conv2d, xs: &Tensor, training: bool) -> Result<Tensor> {
    let weight = if layer.weight().dtype() == xs.dtype() {
        layer.weight().clone()
    } else {
        // f32 master weights cast to the compute dtype: autograd returns f32 gradients.
        layer.weight().to_dtype(xs.dtype())?
    };
    let bias = layer.bias().map(|b| b.to_dtype(xs.dtype())).transpose()?;
    let config = *layer.config();
    if config.groups != 1 {
        candle_core::bail!("exp's conv2d supports groups = 1 only")
    }
    let ys = if training && !xs.track_op() {
        let ys = xs.conv2d(
            &weight.detach(),
            config.padding,
            config.stride,
            config.dilation,
            1,
        )?;
        weight.apply_op2(
            &ys,
            KernelGradOnly {
                input: xs.clone(),
                padding: config.padding,
                stride: config.stride,
                dilation: config.dilation,
            },
        )?
    } else {
        return Conv2d::new(weight, bias, config).forward(xs);
    };
    match bias {
        Some(bias) => ys.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
        None => Ok(ys),
    }
}

/// Forward: passes the precomputed convolution through (one copy). Backward: the kernel
/// gradient only.
struct KernelGradOnly {
    input: Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
}

impl CustomOp2 for KernelGradOnly {
    fn name(&self) -> &'static str {
        "exp-conv2d-kernel-grad-only"
    }

    fn cpu_fwd(
        &self,
        _weight: &CpuStorage,
        _weight_layout: &Layout,
        ys: &CpuStorage,
        ys_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((ys.try_clone(ys_layout)?, ys_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _weight: &candle_core::CudaStorage,
        _weight_layout: &Layout,
        ys: &candle_core::CudaStorage,
        ys_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((ys.try_clone(ys_layout)?, ys_layout.shape().clone()))
    }

    fn bwd(
        &self,
        weight: &Tensor,
        _ys: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // candle's Conv2D backward, kernel half (backprop.rs): stride and dilation swap roles.
        let grad_kernel = self
            .input
            .transpose(0, 1)?
            .conv2d(
                &grad.transpose(0, 1)?,
                self.padding,
                self.dilation,
                self.stride,
                1,
            )?
            .transpose(0, 1)?;
        let (_, _, k0, k1) = weight.dims4()?;
        let (_, _, g0, g1) = grad_kernel.dims4()?;
        let grad_kernel = if (g0, g1) != (k0, k1) {
            grad_kernel.narrow(2, 0, k0)?.narrow(3, 0, k1)?
        } else {
            grad_kernel
        };
        Ok((Some(grad_kernel), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{ExpRng, Purpose};
    use candle_core::{Device, Var};
    use candle_nn::Conv2dConfig;

    /// Same output and the same weight and bias gradients as candle's own conv2d, bit for bit,
    /// over shapes with odd sizes, padding and stride.
    #[test]
    fn gradients_equal_candles_conv2d() -> Result<()> {
        let mut rng = ExpRng::new(9, Purpose::Init);
        for (n, c_in, c_out, h, w, k, padding, stride) in [
            (4, 1, 8, 28, 28, 3, 0, 1),
            (3, 3, 5, 13, 11, 3, 1, 1),
            (2, 2, 4, 9, 9, 5, 2, 2),
        ] {
            let x = Tensor::from_vec(
                rng.uniform(n * c_in * h * w, 1.0),
                (n, c_in, h, w),
                &Device::Cpu,
            )?;
            let wv = Var::from_tensor(&Tensor::from_vec(
                rng.uniform(c_out * c_in * k * k, 0.5),
                (c_out, c_in, k, k),
                &Device::Cpu,
            )?)?;
            let bv = Var::from_tensor(&Tensor::from_vec(
                rng.uniform(c_out, 0.5),
                c_out,
                &Device::Cpu,
            )?)?;
            let config = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let layer = Conv2d::new(wv.as_tensor().clone(), Some(bv.as_tensor().clone()), config);
            let probe = Tensor::from_vec(
                rng.uniform(
                    n * c_out
                        * ((h + 2 * padding - k) / stride + 1)
                        * ((w + 2 * padding - k) / stride + 1),
                    1.0,
                ),
                layer.forward(&x)?.shape(),
                &Device::Cpu,
            )?;
            let ours = conv2d(&layer, &x, true)?;
            let theirs = layer.forward(&x)?;
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            assert_eq!(bits(&ours)?, bits(&theirs)?);
            let g_ours = (ours * &probe)?.sum_all()?.backward()?;
            let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
            for v in [&wv, &bv] {
                let a = g_ours.get(v).expect("gradient");
                let b = g_theirs.get(v).expect("gradient");
                assert_eq!(bits(a)?, bits(b)?, "{n} {c_in} {c_out} {h} {w} {k}");
            }
        }
        Ok(())
    }
}
