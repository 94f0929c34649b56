//! The computation of a model as a list of layers, for the exporters (src/export): what
//! `Model::forward` computes in evaluation mode, named by the tensors the weights file holds.
//! The exporters' tests check that the exported graphs reproduce `forward`'s logits, so this
//! description cannot drift from the code it describes.
//!
//! resnet50, vit and the ImageNet stem are not described (yet): their bottleneck blocks,
//! attention and 3×3 max-pool have no `Layer`, and the exporters would need a module for each.
//! [`Model::layers`] says so with `None`, and `exp export` refuses them by name.

use candle_nn::Conv2d;

use super::resnet::ResNet;
use super::{Architecture, Model};

/// One step of a model's evaluation-mode forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// A 2-D convolution with weights `<name>.weight` (`[out, in, k, k]`) and, when `bias`,
    /// `<name>.bias`.
    Conv {
        /// Tensor name prefix.
        name: String,
        /// Stride in both directions.
        stride: usize,
        /// Zero padding on every side.
        padding: usize,
        /// Whether `<name>.bias` exists.
        bias: bool,
    },
    /// Batch normalisation with running statistics (`<name>.weight`, `.bias`, `.running_mean`,
    /// `.running_var`).
    BatchNorm {
        /// Tensor name prefix.
        name: String,
        /// The ε added to the variance.
        eps: f64,
    },
    /// max(x, 0).
    Relu,
    /// 2×2 max-pooling with stride 2, rounding the output size down.
    MaxPool2x2,
    /// The mean over the spatial dimensions: `[N, C, H, W]` becomes `[N, C]`.
    GlobalAvgPool,
    /// `[N, …]` becomes `[N, features]`.
    Flatten,
    /// Dropout with probability `p` in training; the identity here, kept so that a module
    /// written out for training has it.
    Dropout {
        /// The drop probability.
        p: f64,
    },
    /// `x · Wᵀ + b` with `<name>.weight` (`[out, in]`) and `<name>.bias`.
    Dense {
        /// Tensor name prefix.
        name: String,
    },
    /// A residual block: `relu(body(x) + shortcut(x))`, the shortcut the identity when empty.
    Residual {
        /// Tensor name prefix of the block (e.g. `layer2.0`).
        name: String,
        /// The main path.
        body: Vec<Layer>,
        /// The projection of the input, or nothing for the identity.
        shortcut: Vec<Layer>,
    },
}

fn conv(name: &str, layer: &Conv2d) -> Layer {
    let config = layer.config();
    Layer::Conv {
        name: name.to_string(),
        stride: config.stride,
        padding: config.padding,
        bias: layer.bias().is_some(),
    }
}

impl Model {
    /// The model's evaluation-mode computation, layer by layer; None for the models `Layer`
    /// does not describe (resnet50, vit, a ResNet with the ImageNet stem).
    pub fn layers(&self) -> Option<Vec<Layer>> {
        Some(match &self.architecture {
            Architecture::Mlp { layers, dropout } => {
                let mut out = vec![Layer::Flatten];
                let names = self.dense_names();
                for (i, name) in names.iter().enumerate() {
                    if i > 0 {
                        out.push(Layer::Dropout { p: *dropout });
                    }
                    out.push(Layer::Dense { name: name.clone() });
                    if i + 1 < layers.len() {
                        out.push(Layer::Relu);
                    }
                }
                out
            }
            Architecture::SeedCnn { conv: c, .. } => vec![
                conv("conv", c),
                Layer::Relu,
                Layer::MaxPool2x2,
                Layer::Flatten,
                Layer::Dense { name: "fc".into() },
            ],
            Architecture::Cnn {
                conv1,
                conv2,
                conv_dropout,
                dropout,
                ..
            } => vec![
                conv("conv1", conv1),
                Layer::Relu,
                conv("conv2", conv2),
                Layer::Relu,
                Layer::MaxPool2x2,
                Layer::Dropout { p: *conv_dropout },
                Layer::Flatten,
                Layer::Dense { name: "fc1".into() },
                Layer::Relu,
                Layer::Dropout { p: *dropout },
                Layer::Dense { name: "fc2".into() },
            ],
            Architecture::ResNet(net) => return net.layers(),
            Architecture::ResNet50(_) | Architecture::Vit(_) => return None,
        })
    }

    /// The names of an MLP's dense layers, in order: `fc1`, `fc2`, …, `out`.
    fn dense_names(&self) -> Vec<String> {
        let Architecture::Mlp { layers, .. } = &self.architecture else {
            return Vec::new();
        };
        (1..layers.len())
            .map(|i| format!("fc{i}"))
            .chain(["out".to_string()])
            .collect()
    }
}

impl ResNet {
    fn layers(&self) -> Option<Vec<Layer>> {
        if self.stem.max_pool {
            return None;
        }
        let bn = |name: String| Layer::BatchNorm {
            name,
            eps: super::resnet::BN_EPS,
        };
        let mut out = vec![
            conv("conv1", &self.stem.conv1),
            bn("bn1".into()),
            Layer::Relu,
        ];
        for (name, block) in &self.blocks {
            out.push(Layer::Residual {
                name: name.clone(),
                body: vec![
                    conv(&format!("{name}.conv1"), &block.conv1),
                    bn(format!("{name}.bn1")),
                    Layer::Relu,
                    conv(&format!("{name}.conv2"), &block.conv2),
                    bn(format!("{name}.bn2")),
                ],
                shortcut: match &block.shortcut {
                    Some((c, _)) => vec![
                        conv(&format!("{name}.shortcut.0"), c),
                        bn(format!("{name}.shortcut.1")),
                    ],
                    None => Vec::new(),
                },
            });
        }
        out.extend([Layer::GlobalAvgPool, Layer::Dense { name: "fc".into() }]);
        Some(out)
    }
}
