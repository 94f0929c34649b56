//! Convolution on cuDNN (the default GPU path; see `cuda/cudnn.rs` for the why): the forward
//! with the bias added in place, and a backward that computes the filter and bias gradients
//! and the input gradient only when the input tracks one, each one cuDNN call timed under
//! `EXP_PROFILE_OPS=1`. CUDA builds only: the CPU never gets here.

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
        cudnn::bias_grad((dy, layout))
    }
}
