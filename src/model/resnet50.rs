//! ResNet-50 (He et al. 2016, as torchvision builds it, "v1.5"): a stem (see
//! [`super::resnet::ResNetStem`]), four stages of 3, 4, 6 and 3 bottleneck blocks — 1×1
//! convolution down to the stage's width, 3×3 convolution carrying the stage's stride, 1×1
//! convolution up to 4× the width, each followed by batch norm — global average pooling and a
//! linear classifier. With the default width 64 the stages are 256, 512, 1024 and 2048
//! channels wide, and the tensors are torchvision's (`layer1.0.conv1.weight`,
//! `layer1.0.downsample.0.weight`, `layer1.0.bn3.running_var`, `fc.weight`, …): a torchvision
//! or timm `resnet50` state dict saved as safetensors loads with `init.from`.
//!
//! Batch norm is resnet18's (src/model/resnet.rs): batch statistics in training, running
//! statistics (momentum 0.1, ε 1e-5) in evaluation, the running statistics buffers saved with
//! the weights. candle-transformers' ResNet-50 builds the same graph but runs batch norm in
//! evaluation mode only and fixes the ImageNet stem, so it cannot train; only its layout is
//! reused.

use candle_core::{Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Linear};

use super::resnet::{conv_bn, projection, skip, ResNetStem};
use super::{linear, ParamBuilder};
use crate::profile::span;
use crate::spec::Stem;

/// How much a bottleneck block widens its input: its output has 4× the stage's width.
pub(super) const EXPANSION: usize = 4;
/// Blocks per stage.
const BLOCKS: [usize; 4] = [3, 4, 6, 3];

/// torchvision's `Bottleneck`.
pub(super) struct Bottleneck {
    pub(super) conv1: Conv2d,
    bn1: BatchNorm,
    pub(super) conv2: Conv2d,
    bn2: BatchNorm,
    pub(super) conv3: Conv2d,
    bn3: BatchNorm,
    /// `downsample.0` (1×1 convolution with the block's stride) and `downsample.1`.
    pub(super) downsample: Option<(Conv2d, BatchNorm)>,
}

impl Bottleneck {
    fn new(
        pb: &mut ParamBuilder,
        name: &str,
        c_in: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let c_out = width * EXPANSION;
        let downsample = projection(pb, &format!("{name}.downsample"), c_in, c_out, stride)?;
        Ok(Bottleneck {
            conv1: pb.conv2d_no_bias(&format!("{name}.conv1"), (c_in, width), 1, 1, 0)?,
            bn1: pb.batch_norm(&format!("{name}.bn1"), width)?,
            conv2: pb.conv2d_no_bias(&format!("{name}.conv2"), (width, width), 3, stride, 1)?,
            bn2: pb.batch_norm(&format!("{name}.bn2"), width)?,
            conv3: pb.conv2d_no_bias(&format!("{name}.conv3"), (width, c_out), 1, 1, 0)?,
            bn3: pb.batch_norm(&format!("{name}.bn3"), c_out)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let y = conv_bn(&self.conv1, &self.bn1, x, training, None, true)?;
        let y = conv_bn(&self.conv2, &self.bn2, &y, training, None, true)?;
        let skip = skip(x, self.downsample.as_ref(), training)?;
        conv_bn(&self.conv3, &self.bn3, &y, training, Some(&skip), true)
    }
}

/// ResNet-50.
pub(super) struct ResNet50 {
    pub(super) stem: ResNetStem,
    /// Each block with its tensor name prefix (`layer3.5`).
    pub(super) blocks: Vec<(String, Bottleneck)>,
    fc: Linear,
}

impl ResNet50 {
    /// `width` is the first stage's inner width (torchvision: 64).
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
        for (stage, &count) in BLOCKS.iter().enumerate() {
            let stage_width = width << stage;
            for i in 0..count {
                // torchvision v1.5: the stage's stride is on the 3×3 convolution.
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                let block = Bottleneck::new(pb, &name, c_in, stage_width, stride)?;
                blocks.push((name, block));
                c_in = stage_width * EXPANSION;
            }
        }
        let fc = pb.linear("fc", c_in, classes)?;
        Ok(ResNet50 { stem, blocks, fc })
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
