//! The argument structs shared by the layers that compute (`model/`, `train/optim`) and the
//! CUDA kernels they call (`cuda/`): a leaf, so the kernels need not import their callers
//! (docs/design.md §1).

use candle_core::Result;

/// The shape of one convolution: input `(n, c, h, w)`, kernel `kh × kw`, output `oh × ow`.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeometry {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Dilation.
    pub dilation: usize,
}

impl ConvGeometry {
    /// The geometry of a convolution of an NCHW `input` by a `kernel` (kh, kw).
    pub fn new(
        input: &[usize],
        kernel: (usize, usize),
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<ConvGeometry> {
        let &[n, c, h, w] = input else {
            candle_core::bail!("conv2d: expected an NCHW input, got {input:?}")
        };
        let (kh, kw) = kernel;
        let span_h = dilation * (kh - 1) + 1;
        let span_w = dilation * (kw - 1) + 1;
        if h + 2 * padding < span_h || w + 2 * padding < span_w || stride == 0 {
            candle_core::bail!("conv2d: a {kh}×{kw} kernel does not fit a {h}×{w} input")
        }
        Ok(ConvGeometry {
            n,
            c,
            h,
            w,
            kh,
            kw,
            oh: (h + 2 * padding - span_h) / stride + 1,
            ow: (w + 2 * padding - span_w) / stride + 1,
            stride,
            padding,
            dilation,
        })
    }

    /// Input row and column of output pixel `(oy, ox)`'s kernel tap `(ky, kx)`, if inside.
    #[inline]
    pub fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.stride + ky * self.dilation).checked_sub(self.padding)?;
        let ix = (ox * self.stride + kx * self.dilation).checked_sub(self.padding)?;
        (iy < self.h && ix < self.w).then_some((iy, ix))
    }
}

/// The scalars of one Adam/AdamW step, as f32 the way candle's `affine` applies them.
pub struct AdamHyper {
    /// β1.
    pub beta1: f32,
    /// 1 − β1.
    pub one_minus_beta1: f32,
    /// β2.
    pub beta2: f32,
    /// 1 − β2.
    pub one_minus_beta2: f32,
    /// lr / (1 − β1ᵗ).
    pub step_size: f32,
    /// 1 / √(1 − β2ᵗ).
    pub inv_sqrt_bias2: f32,
    /// ε.
    pub eps: f32,
    /// Adam's L2 weight decay, added to the gradient (0 for AdamW).
    pub l2: f32,
    /// AdamW's decoupled decay factor 1 − lr·wd (1 for Adam).
    pub decay_factor: f32,
}

/// How a batch norm's running statistic is updated from one training batch (PyTorch's rule).
#[derive(Debug, Clone, Copy)]
pub struct RunningStats {
    /// The running variance (true) or the running mean (false).
    pub variance: bool,
    /// Weight of the batch: running ← (1 - momentum)·running + momentum·batch.
    pub momentum: f32,
    /// count / (count - 1): the running variance is the unbiased one.
    pub unbias: f32,
    /// The epsilon the inverse standard deviation was computed with.
    pub eps: f32,
}
