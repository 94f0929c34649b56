//! Convolution and batch norm on cuDNN (the default GPU paths; see `cuda/cudnn.rs` for the
//! why). The convolution: the forward with the bias added in place, and a backward that
//! computes the filter and bias gradients and the input gradient only when the input tracks
//! one, each one call timed under `EXP_PROFILE_OPS=1`. Batch norm in training mode: one cuDNN
//! call forward (batch statistics), one backward (input, weight and bias gradients), and one
//! small kernel per running statistic — where candle-nn composes a dozen ops each way. CUDA
//! builds only: the CPU never gets here.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::cuda::cudnn::{self, Pass};
use crate::kernel_args::ConvGeometry;
use crate::profile::span;

/// `conv2d(xs, weight) + bias` on cuDNN; `xs`, `weight` and `bias` share a dtype.
pub fn conv2d_cudnn(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: ConvGeometry,
    names: &'static super::ConvNames,
) -> Result<Tensor> {
    let op = CudnnConv {
        geometry,
        c_out: weight.dim(0)?,
        names,
    };
    span(names.forward, xs.device(), || {
        let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
        match bias {
            Some(bias) => xs.apply_op3(&weight, &bias.contiguous()?, op),
            None => xs.apply_op2(&weight, op),
        }
    })
}

struct CudnnConv {
    geometry: ConvGeometry,
    c_out: usize,
    names: &'static super::ConvNames,
}

fn cpu_never(op: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{op}: cuDNN runs on CUDA devices only")
}

impl CudnnConv {
    /// The gradients of x (when it tracks one), the weight and, with a bias, the bias.
    fn gradients(
        &self,
        x: &Tensor,
        w: &Tensor,
        with_bias: bool,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let device = grad.device();
        let grad = grad.contiguous()?;
        let pass = |pass| CudnnPass {
            pass,
            geometry: self.geometry,
            c_out: self.c_out,
        };
        let grad_x = if x.track_op() {
            Some(span(self.names.input_grad, device, || {
                grad.apply_op2_no_bwd(w, &pass(Pass::BackwardData))
            })?)
        } else {
            None
        };
        let grad_w = span(self.names.kernel_grad, device, || {
            x.apply_op2_no_bwd(&grad, &pass(Pass::BackwardFilter))
        })?;
        let grad_b = if with_bias {
            Some(span(self.names.bias, device, || {
                grad.apply_op1_no_bwd(&BiasGrad)
            })?)
        } else {
            None
        };
        Ok((grad_x, grad_w, grad_b))
    }
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "exp-conv2d-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_never(CustomOp2::name(self))
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cudnn::conv(
            Pass::Forward,
            (x, xl),
            (w, wl),
            None,
            &self.geometry,
            self.c_out,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w, _) = self.gradients(x, w, false, grad)?;
        Ok((grad_x, Some(grad_w)))
    }
}

impl CustomOp3 for CudnnConv {
    fn name(&self) -> &'static str {
        "exp-conv2d-cudnn-bias"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_never(CustomOp3::name(self))
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cudnn::conv(
            Pass::Forward,
            (x, xl),
            (w, wl),
            Some((b, bl)),
            &self.geometry,
            self.c_out,
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
        let (grad_x, grad_w, grad_b) = self.gradients(x, w, true, grad)?;
        Ok((grad_x, Some(grad_w), grad_b))
    }
}

/// One backward pass as an op of its two operands (dy, w) or (x, dy).
struct CudnnPass {
    pass: Pass,
    geometry: ConvGeometry,
    c_out: usize,
}

impl CustomOp2 for CudnnPass {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "exp-conv2d-cudnn",
            Pass::BackwardData => "exp-conv2d-cudnn-data-grad",
            Pass::BackwardFilter => "exp-conv2d-cudnn-filter-grad",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_never(self.name())
    }

    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        al: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cudnn::conv(
            self.pass,
            (a, al),
            (b, bl),
            None,
            &self.geometry,
            self.c_out,
        )
    }
}

/// The bias gradient: dy summed over batch, height and width.
struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "exp-conv2d-cudnn-bias-grad"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_never(self.name())
    }

    fn cuda_fwd(
        &self,
        dy: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::bias_grad(dy, layout)
    }
}

/// Batch norm of `x` (NCHW, any float dtype) in training mode on cuDNN: normalised with the
/// batch's statistics, the layer's f32 weight and bias applied, the running mean and variance
/// updated in place with the layer's momentum (PyTorch's rule: the unbiased variance).
pub fn batch_norm_train(layer: &candle_nn::BatchNorm, x: &Tensor) -> Result<Tensor> {
    let (weight, bias) = layer.weight_and_bias().ok_or_else(|| {
        candle_core::Error::Msg("batch norm without weight and bias is not on cuDNN".into())
    })?;
    let (n, _, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        candle_core::bail!("batch norm in training needs more than one value per channel")
    }
    let saved: Saved = std::sync::Arc::new(std::sync::Mutex::new(None));
    let op = BatchNormTrain {
        eps: layer.eps(),
        saved: saved.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let stats = x.apply_op1_no_bwd(&TakeSaved { saved, keep: true })?;
    for (running, variance) in [(layer.running_mean(), false), (layer.running_var(), true)] {
        running.inplace_op2(
            &stats,
            &RunningUpdate(crate::kernel_args::RunningStats {
                variance,
                momentum: layer.momentum() as f32,
                unbias: count as f32 / (count - 1) as f32,
                eps: layer.eps() as f32,
            }),
        )?;
    }
    Ok(y)
}

/// Statistics one cuDNN call leaves for the next op: a forward's [mean; inverse std], a
/// backward's [dweight; dbias] (`(2, c)` f32). An op returns one tensor; this carries the other.
type Saved = std::sync::Arc<std::sync::Mutex<Option<candle_core::CudaStorage>>>;

struct BatchNormTrain {
    eps: f64,
    saved: Saved,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "exp-batch-norm-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_never(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
        b: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (y, stats) = cudnn::batch_norm_train((x, xl), (w, wl), (b, bl), self.eps)?;
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm: poisoned".into()))? = Some(stats);
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let params: Saved = std::sync::Arc::new(std::sync::Mutex::new(None));
        let dx = x.apply_op3_no_bwd(
            &grad.contiguous()?,
            w,
            &BatchNormBackward {
                eps: self.eps,
                forward: self.saved.clone(),
                params: params.clone(),
            },
        )?;
        let dparams = x.apply_op1_no_bwd(&TakeSaved {
            saved: params,
            keep: false,
        })?;
        let c = w.dim(0)?;
        let (dw, db) = (
            dparams.narrow(0, 0, 1)?.reshape(c)?,
            dparams.narrow(0, 1, 1)?.reshape(c)?,
        );
        Ok((x.track_op().then_some(dx), Some(dw), Some(db)))
    }
}

/// dx of batch norm; [dweight; dbias] go to `params`.
struct BatchNormBackward {
    eps: f64,
    forward: Saved,
    params: Saved,
}

impl CustomOp3 for BatchNormBackward {
    fn name(&self) -> &'static str {
        "exp-batch-norm-cudnn-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_never(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        dy: &candle_core::CudaStorage,
        dyl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        // The forward's statistics are read where they are, not copied.
        let forward = self
            .forward
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm backward: poisoned".into()))?;
        let Some(stats) = forward.as_ref() else {
            candle_core::bail!(
                "batch norm backward: the statistics of the forward pass are missing"
            )
        };
        let (dx, dparams) =
            cudnn::batch_norm_backward((x, xl), (dy, dyl), (w, wl), stats, self.eps)?;
        *self
            .params
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm: poisoned".into()))? = Some(dparams);
        Ok((dx, xl.shape().clone()))
    }
}

/// Returns what the previous op saved, `(2, c)` f32; its operand only orders it after that op.
/// `keep`: a copy, leaving the saved statistics for a later op (the forward's, which the
/// backward pass reads); else they are taken.
struct TakeSaved {
    saved: Saved,
    keep: bool,
}

impl CustomOp1 for TakeSaved {
    fn name(&self) -> &'static str {
        "exp-batch-norm-cudnn-saved"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_never(self.name())
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let mut guard = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch norm: poisoned".into()))?;
        let stats = match (self.keep, guard.as_ref()) {
            (true, Some(stats)) => {
                let len = stats.as_cuda_slice::<f32>()?.len();
                stats.try_clone(&Layout::contiguous(len))?
            }
            _ => guard.take().ok_or_else(|| {
                candle_core::Error::Msg(
                    "batch norm: the statistics of the previous op are missing".into(),
                )
            })?,
        };
        let c2 = stats.as_cuda_slice::<f32>()?.len();
        Ok((stats, Shape::from((2, c2 / 2))))
    }
}

/// One running statistic updated in place from a forward's saved statistics.
struct RunningUpdate(crate::kernel_args::RunningStats);

impl candle_core::InplaceOp2 for RunningUpdate {
    fn name(&self) -> &'static str {
        "exp-batch-norm-running-update"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{}: cuDNN runs on CUDA devices only", self.name())
    }

    fn cuda_fwd(
        &self,
        running: &mut candle_core::CudaStorage,
        rl: &Layout,
        stats: &candle_core::CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        crate::cuda::bn_running_update(running, rl, stats, sl, &self.0)
    }
}
