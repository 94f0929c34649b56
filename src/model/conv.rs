//! 2-D convolution with a backward pass that computes only the gradients something needs.
//!
//! candle 0.11.1's conv2d backward always computes the gradient of the input (a full
//! `conv_transpose2d`), even when the input is the image batch, which no parameter depends
//! on: for the first convolution of every model, wasted work as large as the convolution
//! itself. Here the forward runs candle's conv2d on detached operands and a custom op
//! re-attaches weight and input with a backward that computes the kernel gradient, and the
//! input gradient only when the input tracks one, each with candle's own formula (values are
//! unchanged) and each timed separately under `EXP_PROFILE_OPS=1`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use candle_nn::{Conv2d, Module};

use super::ConvNames;
use crate::profile::span;

/// `layer(xs)` in `xs`'s dtype; `training` says whether a backward pass may follow. `name`
/// labels the layer in profiles.
pub fn conv2d(
    layer: &Conv2d,
    xs: &Tensor,
    training: bool,
    name: &'static ConvNames,
) -> Result<Tensor> {
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
    // On a GPU: cuDNN (see cuda/cudnn.rs), or exp's im2col + GEMM, whose backward is GEMMs
    // and col2im (im2col.rs); EXP_CUDA_CONV picks (`cudnn`, `im2col`, `candle`) for
    // side-by-side benchmarks. It is read on GPUs only: a CPU run never depends on it.
    let gpu_path = if xs.device().is_cpu() {
        None
    } else {
        Some(gpu_conv_path()?)
    };
    if let Some(path) = gpu_path.filter(|&p| p != GpuConv::Candle && super::im2col::supported(xs)) {
        // A first layer (few taps, an input that needs no gradient): a direct kernel.
        let (_, c_in, kh, kw) = weight.dims4()?;
        let geometry = super::ConvGeometry::new(
            xs.dims(),
            (kh, kw),
            config.stride,
            config.padding,
            config.dilation,
        )?;
        if let (false, true, Some(bias)) = (
            xs.track_op(),
            c_in * kh * kw <= super::direct::MAX_TAPS,
            bias.as_ref(),
        ) {
            return super::direct::conv2d_direct(xs, &weight, bias, geometry, name);
        }
        #[cfg(feature = "cuda")]
        if path == GpuConv::Cudnn {
            return super::cudnn::conv2d_cudnn(xs, &weight, bias.as_ref(), geometry, name);
        }
        #[cfg(not(feature = "cuda"))]
        let _ = path; // a build without CUDA has im2col only
        return super::im2col::conv2d_gemm(
            xs,
            &weight,
            bias.as_ref(),
            config.stride,
            config.padding,
            config.dilation,
            name,
        );
    }
    if !training {
        return span(name.forward, xs.device(), || {
            Conv2d::new(weight, bias, config).forward(xs)
        });
    }
    let ys = span(name.forward, xs.device(), || {
        xs.detach().conv2d(
            &weight.detach(),
            config.padding,
            config.stride,
            config.dilation,
            1,
        )
    })?;
    let ys = weight.apply_op3(
        xs,
        &ys,
        ConvGradients {
            padding: config.padding,
            stride: config.stride,
            dilation: config.dilation,
            names: name,
        },
    )?;
    match bias {
        Some(bias) => span(name.bias, ys.device(), || {
            ys.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?)
        }),
        None => Ok(ys),
    }
}

/// The GPU convolution, `EXP_CUDA_CONV`: cuDNN (the default), exp's im2col + GEMM, or
/// candle's own conv2d (what exp used before either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuConv {
    /// `cudnn` (default).
    Cudnn,
    /// `im2col`.
    Im2col,
    /// `candle`.
    Candle,
}

/// `EXP_CUDA_CONV`, read once; an unknown value is an error at the first convolution.
pub fn gpu_conv_path() -> Result<GpuConv> {
    static PATH: std::sync::OnceLock<std::result::Result<GpuConv, String>> =
        std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        super::env_switch(
            "EXP_CUDA_CONV",
            &[
                ("cudnn", GpuConv::Cudnn),
                ("im2col", GpuConv::Im2col),
                ("candle", GpuConv::Candle),
            ],
        )
    })
    .clone()
    .map_err(candle_core::Error::Msg)
}

/// Forward: passes the precomputed convolution through (one device copy). Backward: the
/// kernel gradient, and the input gradient when the input tracks one.
struct ConvGradients {
    padding: usize,
    stride: usize,
    dilation: usize,
    names: &'static ConvNames,
}

impl CustomOp3 for ConvGradients {
    fn name(&self) -> &'static str {
        "exp-conv2d-gradients"
    }

    fn cpu_fwd(
        &self,
        _weight: &CpuStorage,
        _weight_layout: &Layout,
        _input: &CpuStorage,
        _input_layout: &Layout,
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
        _input: &candle_core::CudaStorage,
        _input_layout: &Layout,
        ys: &candle_core::CudaStorage,
        ys_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        Ok((ys.try_clone(ys_layout)?, ys_layout.shape().clone()))
    }

    fn bwd(
        &self,
        weight: &Tensor,
        input: &Tensor,
        _ys: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let device = grad.device();
        // candle's Conv2D backward (backprop.rs): stride and dilation swap roles here.
        let grad_kernel = span(self.names.kernel_grad, device, || {
            let g = input
                .detach()
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
            let (_, _, g0, g1) = g.dims4()?;
            if (g0, g1) != (k0, k1) {
                g.narrow(2, 0, k0)?.narrow(3, 0, k1)
            } else {
                Ok(g)
            }
        })?;
        let grad_input = if input.track_op() {
            Some(span(self.names.input_grad, device, || {
                let k_h = weight.dim(2)?;
                let out_size = (grad.dim(2)? - 1) * self.stride + self.dilation * (k_h - 1) + 1
                    - 2 * self.padding;
                let out_padding = input.dim(2)? - out_size;
                grad.conv_transpose2d(
                    &weight.detach(),
                    self.padding,
                    out_padding,
                    self.stride,
                    self.dilation,
                )
            })?)
        } else {
            None
        };
        Ok((Some(grad_kernel), grad_input, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{ExpRng, Purpose};
    use candle_core::{Device, Var};
    use candle_nn::Conv2dConfig;

    static TEST_NAMES: ConvNames = ConvNames {
        forward: "test fwd",
        bias: "test bias",
        kernel_grad: "test kernel grad",
        input_grad: "test input grad",
        backward: "test",
        relu: "test relu",
    };

    /// Same output and the same weight, bias and input gradients as candle's own conv2d, bit
    /// for bit, over shapes with odd sizes, padding and stride; no input gradient for an input
    /// that tracks none.
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
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            // An untracked input (the image batch), then one that tracks a gradient.
            let xv = Var::from_tensor(&x)?;
            for input in [&x, xv.as_tensor()] {
                let ours = conv2d(&layer, input, true, &TEST_NAMES)?;
                let theirs = layer.forward(input)?;
                assert_eq!(bits(&ours)?, bits(&theirs)?);
                let g_ours = (ours * &probe)?.sum_all()?.backward()?;
                let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
                for v in [wv.as_tensor(), bv.as_tensor(), xv.as_tensor()] {
                    match (g_ours.get(v), g_theirs.get(v)) {
                        (Some(a), Some(b)) => {
                            assert_eq!(bits(a)?, bits(b)?, "{n} {c_in} {c_out} {h} {w} {k}")
                        }
                        (None, None) => {}
                        (a, b) => panic!(
                            "gradient presence differs: {:?} vs {:?}",
                            a.is_some(),
                            b.is_some()
                        ),
                    }
                }
            }
        }
        Ok(())
    }
}
