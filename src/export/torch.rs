//! PyTorch export: the weights as a safetensors file under PyTorch's own state-dict names (exp
//! names its tensors as torch.nn does, plus batch norm's `num_batches_tracked`), and a `.py`
//! file with the module that takes them, written from the model's layers (`Model::layers`), so
//! `load_state_dict(strict=True)` accepts the file and the module computes what exp computes.

use std::collections::HashMap;
use std::fmt::Write as _;

use safetensors::tensor::{Dtype, TensorView};

use super::{f32_tensor, metadata, ExportError};
use crate::artifact::Artifact;
use crate::model::Layer;

/// The safetensors bytes (with the `exp.*` metadata) and the Python source of the module.
pub fn to_torch(artifact: &Artifact) -> Result<(Vec<u8>, String), ExportError> {
    let mut buffers: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    let mut names: Vec<&String> = artifact.tensors.keys().collect();
    names.sort();
    for name in names {
        let (dims, values) = f32_tensor(artifact, name)?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), dims, Dtype::F32, bytes));
    }
    // torch.nn.BatchNorm2d keeps a step counter beside its running statistics; it only matters
    // with momentum=None, which exp does not use, so it holds the number of training batches.
    let batches = training_batches(artifact);
    let layers = super::layers(artifact)?;
    for bn in batch_norms(&layers) {
        buffers.push((
            format!("{bn}.num_batches_tracked"),
            Vec::new(),
            Dtype::I64,
            batches.to_le_bytes().to_vec(),
        ));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| ExportError::Tensor(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta: HashMap<String, String> = metadata(artifact).into_iter().collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| ExportError::Tensor(format!("safetensors: {e}")))?;
    Ok((bytes, module_source(artifact, &layers)))
}

/// Batches the run trained on: epochs × ⌈training examples / batch size⌉.
fn training_batches(artifact: &Artifact) -> i64 {
    let r = &artifact.record;
    let per_epoch = r
        .data
        .train
        .examples
        .div_ceil(r.params.train.batch_size.max(1));
    (r.training.epochs * per_epoch) as i64
}

/// The name prefix of every batch norm in `layers`, in order.
fn batch_norms(layers: &[Layer]) -> Vec<String> {
    let mut out = Vec::new();
    for layer in layers {
        match layer {
            Layer::BatchNorm { name, .. } => out.push(name.clone()),
            Layer::Residual { body, shortcut, .. } => {
                out.extend(batch_norms(body));
                out.extend(batch_norms(shortcut));
            }
            _ => {}
        }
    }
    out
}

/// A Python literal for a string.
fn py_str(s: &str) -> String {
    // JSON string syntax is a subset of Python's.
    serde_json::Value::String(s.to_string()).to_string()
}

/// The constructor call of a layer that is a module; None for the others.
fn module_of(layer: &Layer, artifact: &Artifact) -> Option<String> {
    let dims = |name: &str| artifact.tensors[&format!("{name}.weight")].dims().to_vec();
    match layer {
        Layer::Conv {
            name,
            stride,
            padding,
            bias,
        } => {
            let w = dims(name);
            Some(format!(
                "nn.Conv2d({}, {}, {}, stride={stride}, padding={padding}, bias={})",
                w[1],
                w[0],
                w[2],
                if *bias { "True" } else { "False" }
            ))
        }
        Layer::BatchNorm { name, eps } => Some(format!(
            "nn.BatchNorm2d({}, eps={eps:e}, momentum=0.1)",
            dims(name)[0]
        )),
        Layer::Dense { name } => {
            let w = dims(name);
            Some(format!("nn.Linear({}, {})", w[1], w[0]))
        }
        Layer::Dropout { p } => Some(format!("nn.Dropout({p})")),
        _ => None,
    }
}

/// The attribute a named layer lives under: its name's last component (`layer1.0.conv1` →
/// `conv1`).
fn attribute(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The module's `__init__` assignments and `forward` statements (one per line, without
/// indentation) for a list of layers applied to `x`.
struct Emitter<'a> {
    artifact: &'a Artifact,
    init: Vec<String>,
    forward: Vec<String>,
    dropouts: usize,
}

impl Emitter<'_> {
    fn layers(&mut self, layers: &[Layer]) {
        let mut i = 0;
        while i < layers.len() {
            let layer = &layers[i];
            i += 1;
            let attr = match layer {
                Layer::Conv { name, .. }
                | Layer::BatchNorm { name, .. }
                | Layer::Dense { name } => attribute(name).to_string(),
                Layer::Dropout { .. } => {
                    self.dropouts += 1;
                    format!("dropout{}", self.dropouts)
                }
                Layer::Relu => {
                    self.forward.push("x = torch.relu(x)".into());
                    continue;
                }
                Layer::MaxPool2x2 => {
                    self.forward.push("x = F.max_pool2d(x, 2)".into());
                    continue;
                }
                Layer::GlobalAvgPool => {
                    self.forward.push("x = x.mean((2, 3))".into());
                    continue;
                }
                Layer::Flatten => {
                    self.forward.push("x = torch.flatten(x, 1)".into());
                    continue;
                }
                Layer::Residual { name, .. } => {
                    // Consecutive blocks `<group>.0`, `<group>.1`, … become one nn.Sequential
                    // named `<group>`, as torchvision's ResNet names them.
                    let group = name.rsplit_once('.').map_or(name.as_str(), |(g, _)| g);
                    let mut blocks = vec![self.block(layer)];
                    while let Some(next @ Layer::Residual { name, .. }) = layers.get(i) {
                        if name.rsplit_once('.').map(|(g, _)| g) != Some(group) {
                            break;
                        }
                        blocks.push(self.block(next));
                        i += 1;
                    }
                    self.init.push(format!(
                        "self.{group} = nn.Sequential(\n            {},\n        )",
                        blocks.join(",\n            ")
                    ));
                    self.forward.push(format!("x = self.{group}(x)"));
                    continue;
                }
            };
            let module = module_of(layer, self.artifact).unwrap_or_default();
            self.init.push(format!("self.{attr} = {module}"));
            self.forward.push(format!("x = self.{attr}(x)"));
        }
    }

    /// `BasicBlock(c_in, c_out, stride, projection)` for a residual block: the channels and
    /// stride of its first convolution.
    fn block(&self, block: &Layer) -> String {
        let Layer::Residual { body, shortcut, .. } = block else {
            return String::new();
        };
        let Some(Layer::Conv { name, stride, .. }) = body.first() else {
            return String::new();
        };
        let w = self.artifact.tensors[&format!("{name}.weight")].dims();
        format!(
            "BasicBlock({}, {}, {stride}, {})",
            w[1],
            w[0],
            if shortcut.is_empty() { "False" } else { "True" }
        )
    }
}

/// The residual block of exp's ResNet (src/model/resnet.rs), in PyTorch.
const BASIC_BLOCK: &str = r#"
class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), as exp's ResNet computes it."""

    def __init__(self, c_in, c_out, stride, projection):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)
        self.shortcut = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, padding=0, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1),
        ) if projection else nn.Identity()

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))
"#;

/// The Python source of the module for `artifact`.
fn module_source(artifact: &Artifact, layers: &[Layer]) -> String {
    let s = artifact.input;
    let mut emitter = Emitter {
        artifact,
        init: Vec::new(),
        forward: Vec::new(),
        dropouts: 0,
    };
    emitter.layers(layers);
    let residual = layers.iter().any(|l| matches!(l, Layer::Residual { .. }));
    let p = &artifact.provenance;
    let floats = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#""""The {architecture} model of exp experiment {experiment}, run {run_id} (commit {commit}).

Written by `exp export --format torch` (exp {version}). The weights are in the safetensors file
beside this one; `load()` reads them (`pip install safetensors`) with
`load_state_dict(strict=True)`. The module takes float32 [N, {c}, {h}, {w}] = pixels / 255 and
returns logits; the run's normalisation is folded in.
"""

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

INPUT_SHAPE = ({c}, {h}, {w})
MEAN = [{mean}]
STD = [{std}]
CLASS_NAMES = {class_names}
METADATA = {metadata}
"#,
        architecture = artifact.record.model.architecture,
        experiment = p.experiment,
        run_id = p.run_id,
        commit = p.commit,
        version = crate::VERSION,
        c = s.channels,
        h = s.height,
        w = s.width,
        mean = floats(&artifact.normalisation.mean),
        std = floats(&artifact.normalisation.std),
        class_names = serde_json::Value::from(artifact.class_names.clone()),
        metadata = {
            let entries: Vec<String> = metadata(artifact)
                .iter()
                .map(|(k, v)| format!("    {}: {},", py_str(k), py_str(v)))
                .collect();
            format!("{{\n{}\n}}", entries.join("\n"))
        },
    );
    if residual {
        out.push_str(BASIC_BLOCK);
    }
    let _ = write!(
        out,
        r#"

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        # The normalisation is not state: persistent=False keeps it out of the state dict.
        self.register_buffer("mean", torch.tensor(MEAN).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, -1, 1, 1), persistent=False)
        {init}

    def forward(self, x):
        x = (x - self.mean) / self.std
        {forward}
        return x


def load(path=None, device="cpu"):
    """The model with the exported weights, in evaluation mode."""
    from safetensors.torch import load_file

    path = Path(path) if path else Path(__file__).with_suffix(".safetensors")
    model = Model()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval()
"#,
        init = emitter.init.join("\n        "),
        forward = emitter.forward.join("\n        "),
    );
    out
}
