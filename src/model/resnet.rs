//! ResNet-18 (He et al. 2016, as in the common CIFAR recipes): a stem (CIFAR's 3×3
//! convolution without max-pool, or ImageNet's 7×7 stride-2 convolution and 3×3 max-pool), four stages of two BasicBlocks (widths w, 2w, 4w, 8w; w = 64 by
//! default), global average pooling and a linear classifier. Batch norm normalises with the
//! batch's statistics in training and with running statistics (momentum 0.1, as PyTorch) in
//! evaluation; the running statistics are buffers saved with the weights.
//!
//! candle-transformers' ResNet is an inference model with an ImageNet stem and frozen batch
//! norm; this one borrows its layout only. Convolutions go through exp's conv2d (its CPU
//! backward and CUDA kernels), batch norm is candle-nn's, built on exp's own variables so the
//! running statistics it updates are the ones saved.

use candle_core::{DType, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear};

use super::cpu::{self, conv::Epilogue};
use super::{conv2d, linear, ConvNames, ParamBuilder};
use crate::profile::span;
use crate::spec::Stem;

pub(super) static RESNET_CONV: ConvNames = ConvNames {
    forward: "fwd resnet conv",
    bias: "fwd resnet conv bias",
    kernel_grad: "bwd resnet conv kernel grad",
    input_grad: "bwd resnet conv input grad",
    backward: "bwd resnet conv",
    relu: "fwd resnet conv relu",
};

/// PyTorch's BatchNorm2d defaults.
pub(super) const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

impl ParamBuilder {
    /// A bias-free conv layer `name` with `stride` and `padding`, PyTorch's `Conv2d` init.
    pub(super) fn conv2d_no_bias(
        &mut self,
        name: &str,
        (in_channels, out_channels): (usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv2d> {
        let bound = 1.0 / ((in_channels * kernel * kernel) as f32).sqrt();
        let w = self.uniform(
            &format!("{name}.weight"),
            &[out_channels, in_channels, kernel, kernel],
            bound,
        )?;
        let config = Conv2dConfig {
            stride,
            padding,
            ..Conv2dConfig::default()
        };
        Ok(Conv2d::new(w, None, config))
    }

    /// A batch-norm layer `name`: weight 1 and bias 0 (trained), running mean 0 and variance
    /// 1 (buffers, updated in training mode).
    pub(super) fn batch_norm(&mut self, name: &str, features: usize) -> Result<BatchNorm> {
        let ones = Tensor::ones(features, DType::F32, &self.device)?;
        let zeros = Tensor::zeros(features, DType::F32, &self.device)?;
        let weight = self.parameter(&format!("{name}.weight"), &ones)?;
        let bias = self.parameter(&format!("{name}.bias"), &zeros)?;
        let mean = self.buffer(&format!("{name}.running_mean"), &zeros)?;
        let var = self.buffer(&format!("{name}.running_var"), &ones)?;
        // Tensors that are variables are taken as they are: candle's batch norm updates the
        // very buffers the store saves.
        BatchNorm::new_with_momentum(features, mean, var, weight, bias, BN_EPS, BN_MOMENTUM)
    }
}

pub(super) struct BasicBlock {
    pub(super) conv1: Conv2d,
    bn1: BatchNorm,
    pub(super) conv2: Conv2d,
    bn2: BatchNorm,
    pub(super) shortcut: Option<(Conv2d, BatchNorm)>,
}

/// Batch norm computed in f32 (candle's keeps f32 parameters), returned in `x`'s dtype.
pub(super) fn bn(layer: &BatchNorm, x: &Tensor, training: bool) -> Result<Tensor> {
    // Training on a GPU: cuDNN's batch norm, on x in its own dtype (model/cudnn.rs).
    #[cfg(feature = "cuda")]
    if training && x.device().is_cuda() && gpu_batch_norm()? == GpuBatchNorm::Cudnn {
        return span("fwd batch-norm", x.device(), || {
            // bf16 runs in f32: not every cuDNN supports bf16 batch norm, and the statistics are
            // f32 either way.
            if x.dtype() == DType::BF16 {
                super::cudnn::batch_norm_train(layer, &x.to_dtype(DType::F32)?)?
                    .to_dtype(DType::BF16)
            } else {
                super::cudnn::batch_norm_train(layer, x)
            }
        });
    }
    let dtype = x.dtype();
    let y = span("fwd batch-norm", x.device(), || {
        layer.forward_t(&x.to_dtype(DType::F32)?, training)
    })?;
    y.to_dtype(dtype)
}

/// Batch norm in training on a GPU, `EXP_CUDA_BN`: cuDNN (`cudnn`, the default) or candle-nn's
/// composition of ops (`candle`), for side-by-side benchmarks.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBatchNorm {
    /// `cudnn`.
    Cudnn,
    /// `candle`.
    Candle,
}

/// `EXP_CUDA_BN`, read once; an unknown value is an error at the first batch norm.
#[cfg(feature = "cuda")]
pub fn gpu_batch_norm() -> Result<GpuBatchNorm> {
    static PATH: std::sync::OnceLock<std::result::Result<GpuBatchNorm, String>> =
        std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        super::env_switch(
            "EXP_CUDA_BN",
            &[
                ("cudnn", GpuBatchNorm::Cudnn),
                ("candle", GpuBatchNorm::Candle),
            ],
        )
    })
    .clone()
    .map_err(candle_core::Error::Msg)
}

/// A block's projection shortcut — a 1×1 convolution with the block's stride and a batch norm,
/// named `<prefix>.0` and `<prefix>.1` — when the block changes the size or the channels;
/// none when the input passes through as it is.
pub(super) fn projection(
    pb: &mut ParamBuilder,
    prefix: &str,
    c_in: usize,
    c_out: usize,
    stride: usize,
) -> Result<Option<(Conv2d, BatchNorm)>> {
    if stride == 1 && c_in == c_out {
        return Ok(None);
    }
    Ok(Some((
        pb.conv2d_no_bias(&format!("{prefix}.0"), (c_in, c_out), 1, stride, 0)?,
        pb.batch_norm(&format!("{prefix}.1"), c_out)?,
    )))
}

/// `relu(bn(conv(x)) + skip)`: the residual add when `skip` is given, the ReLU when `relu`.
/// On exp's CPU kernels (src/model/cpu) the convolution is one op and batch norm with the add
/// and the ReLU another in training; in evaluation batch norm is folded into the
/// convolution's weights and bias. Elsewhere each step is its own op.
pub(super) fn conv_bn(
    conv: &Conv2d,
    norm: &BatchNorm,
    x: &Tensor,
    training: bool,
    skip: Option<&Tensor>,
    relu: bool,
) -> Result<Tensor> {
    if cpu::applies(x) {
        if training {
            let y = cpu::conv::conv2d(conv, x, Epilogue::NONE, &RESNET_CONV)?;
            return cpu::batch_norm::batch_norm_train(norm, &y, skip, relu);
        }
        let epilogue = Epilogue {
            relu: relu && skip.is_none(),
            max_pool: false,
        };
        let y = cpu::conv::conv2d(&fold_batch_norm(conv, norm)?, x, epilogue, &RESNET_CONV)?;
        return match skip {
            Some(skip) if relu => (y + skip)?.relu(),
            Some(skip) => y + skip,
            None => Ok(y),
        };
    }
    let y = bn(norm, &conv2d(conv, x, training, &RESNET_CONV)?, training)?;
    let y = match skip {
        Some(skip) => (y + skip)?,
        None => y,
    };
    if relu {
        y.relu()
    } else {
        Ok(y)
    }
}

/// The convolution that computes `bn(conv(x))` with `norm`'s running statistics (evaluation
/// mode): each output channel's kernel scaled by `γ/√(running var + ε)`, and the bias
/// `β − running mean·γ/√(running var + ε)` (plus the scaled bias of `conv`, if it has one).
pub(super) fn fold_batch_norm(conv: &Conv2d, norm: &BatchNorm) -> Result<Conv2d> {
    let (gamma, beta) = norm
        .weight_and_bias()
        .ok_or_else(|| candle_core::Error::Msg("batch norm without weight and bias".into()))?;
    let scale = (gamma / (norm.running_var() + norm.eps())?.sqrt()?)?;
    let c_out = scale.dim(0)?;
    let weight = conv
        .weight()
        .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
    let mut bias = (beta - (norm.running_mean() * &scale)?)?;
    if let Some(b) = conv.bias() {
        bias = (bias + (b * &scale)?)?;
    }
    Ok(Conv2d::new(weight, Some(bias), *conv.config()))
}

/// The skip path of a residual block: the input, or its projection (1×1 convolution and batch
/// norm) when the block has one.
pub(super) fn skip(
    x: &Tensor,
    projection: Option<&(Conv2d, BatchNorm)>,
    training: bool,
) -> Result<Tensor> {
    match projection {
        Some((conv, norm)) => conv_bn(conv, norm, x, training, None, false),
        None => Ok(x.clone()),
    }
}

impl BasicBlock {
    fn new(
        pb: &mut ParamBuilder,
        name: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<Self> {
        let shortcut = projection(pb, &format!("{name}.shortcut"), c_in, c_out, stride)?;
        Ok(BasicBlock {
            conv1: pb.conv2d_no_bias(&format!("{name}.conv1"), (c_in, c_out), 3, stride, 1)?,
            bn1: pb.batch_norm(&format!("{name}.bn1"), c_out)?,
            conv2: pb.conv2d_no_bias(&format!("{name}.conv2"), (c_out, c_out), 3, 1, 1)?,
            bn2: pb.batch_norm(&format!("{name}.bn2"), c_out)?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let y = conv_bn(&self.conv1, &self.bn1, x, training, None, true)?;
        let skip = skip(x, self.shortcut.as_ref(), training)?;
        conv_bn(&self.conv2, &self.bn2, &y, training, Some(&skip), true)
    }
}

/// A ResNet's stem: `conv1`, `bn1`, ReLU and, for the ImageNet stem, 3×3 max pooling with
/// stride 2 and padding 1 (torchvision's names and layout).
pub(super) struct ResNetStem {
    pub(super) conv1: Conv2d,
    bn1: BatchNorm,
    /// Whether the 3×3 max pool follows (the ImageNet stem).
    pub(super) max_pool: bool,
}

impl ResNetStem {
    pub(super) fn new(
        pb: &mut ParamBuilder,
        channels: usize,
        width: usize,
        stem: Stem,
    ) -> Result<Self> {
        let (conv1, max_pool) = match stem {
            Stem::Cifar => (
                pb.conv2d_no_bias("conv1", (channels, width), 3, 1, 1)?,
                false,
            ),
            Stem::Imagenet => (
                pb.conv2d_no_bias("conv1", (channels, width), 7, 2, 3)?,
                true,
            ),
        };
        Ok(ResNetStem {
            conv1,
            bn1: pb.batch_norm("bn1", width)?,
            max_pool,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, training: bool) -> Result<Tensor> {
        let x = conv_bn(&self.conv1, &self.bn1, xs, training, None, true)?;
        if self.max_pool {
            span("fwd max-pool", xs.device(), || max_pool_3x3_s2(&x))
        } else {
            Ok(x)
        }
    }
}

/// The smallest image side a ResNet with `stem` takes: its stride-2 steps (three stages, and
/// the ImageNet stem's convolution and pool) leave a 1×1 map at the average pool.
pub(super) fn min_side(stem: Stem) -> usize {
    match stem {
        Stem::Cifar => 8,
        Stem::Imagenet => 32,
    }
}

/// torchvision's `MaxPool2d(3, stride=2, padding=1)` on a ReLU's output, differentiable.
/// candle 0.11.1's max-pool has a backward pass only when kernel = stride; here the pool is
/// the element-wise maximum of the nine strided views of the padded map, each a plain candle
/// op with a backward pass. Zero padding is -∞ padding here: the input is ≥ 0 and every
/// window holds at least one real element.
pub(super) fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    // One row and column more at the end than torch pads, so every view is 2·o long; the
    // extra ones are never picked.
    let padded = x.pad_with_zeros(2, 1, 2)?.pad_with_zeros(3, 1, 2)?;
    let (n, c) = (padded.dim(0)?, padded.dim(1)?);
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = padded
            .narrow(2, dy, 2 * oh)?
            .reshape((n, c, oh, 2, w + 3))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for dx in 0..3 {
            let view = rows
                .narrow(3, dx, 2 * ow)?
                .reshape((n, c, oh, ow, 2))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            out = Some(match out {
                None => view,
                Some(m) => m.maximum(&view)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("max pool over no window".into()))
}

/// ResNet-18 for small images (or, with the ImageNet stem, larger ones).
pub(super) struct ResNet {
    pub(super) stem: ResNetStem,
    /// Each block with its tensor name prefix (`layer2.0`).
    pub(super) blocks: Vec<(String, BasicBlock)>,
    fc: Linear,
}

impl ResNet {
    /// Tensor names: `conv1.`, `bn1.`, `layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}.`,
    /// `fc.` (torchvision's and the CIFAR recipes' names).
    pub(super) fn new(
        pb: &mut ParamBuilder,
        channels: usize,
        width: usize,
        classes: usize,
        stem: Stem,
    ) -> Result<Self> {
        let stem = ResNetStem::new(pb, channels, width, stem)?;
        let mut blocks = Vec::new();
        let mut c_in = width;
        for (stage, (mult, stride)) in [(1, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
            let c_out = width * mult;
            for i in 0..2 {
                let s = if i == 0 { stride } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let block = BasicBlock::new(pb, &name, c_in, c_out, s)?;
                blocks.push((name, block));
                c_in = c_out;
            }
        }
        let fc = pb.linear("fc", c_in, classes)?;
        Ok(ResNet { stem, blocks, fc })
    }

    pub(super) fn forward(&self, xs: &Tensor, training: bool) -> Result<Tensor> {
        let mut x = self.stem.forward(xs, training)?;
        for (_, block) in &self.blocks {
            x = block.forward(&x, training)?;
        }
        let x = span("fwd avg-pool", xs.device(), || x.mean((2, 3)))?;
        span("fwd fc", xs.device(), || linear(&self.fc, &x))
    }
}
