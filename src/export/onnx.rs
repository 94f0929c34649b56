//! ONNX export: the model's layers (`Model::layers`) as a standard ONNX graph. The protobuf
//! messages are those `candle-onnx` generates from the ONNX project's own `onnx.proto` with
//! `prost`, so the writer and the reader exp's tests check it with share one schema.
//!
//! The graph uses only operators every runtime has had since opset 14 (Sub, Div, Conv,
//! BatchNormalization, Relu, MaxPool, AveragePool, Flatten, Gemm, Add), with their opset-14
//! attributes, so one graph is valid from opset 14 to 21. The global average pool is an
//! AveragePool over the whole (static) feature map: GlobalAveragePool is not in candle-onnx.

use std::ops::RangeInclusive;

use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

use super::{f32_tensor, metadata, ExportError};
use crate::artifact::Artifact;
use crate::model::Layer;

/// The opset `exp export` writes unless `--opset` says otherwise.
pub const DEFAULT_OPSET: i64 = 17;
/// The opsets the graph is valid in (see the module comment).
pub const OPSETS: RangeInclusive<i64> = 14..=21;
/// The graph's input: float32 `[N, C, H, W]`, pixels / 255.
pub const INPUT: &str = "pixels";
/// The graph's output: float32 `[N, classes]` logits.
pub const OUTPUT: &str = "logits";

/// The IR version that goes with an opset (onnx/helper.py's VERSION_TABLE).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// The serialised ONNX model of `artifact` at `opset`.
pub fn to_onnx(artifact: &Artifact, opset: i64) -> Result<Vec<u8>, ExportError> {
    if !OPSETS.contains(&opset) {
        return Err(ExportError::Option(format!(
            "--opset {opset}: exp writes opsets {}–{} (the graph's operators have had their present form since opset 14)",
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    let s = artifact.input;
    let mut graph = Graph {
        artifact,
        proto: GraphProto {
            name: artifact.provenance.experiment.clone(),
            ..Default::default()
        },
        next: 0,
    };
    // The run's normalisation, folded in: the graph takes pixels / 255 as every runtime's
    // image loader gives them.
    let channel_constant = |values: &[f64]| -> (Vec<i64>, Vec<f32>) {
        (
            vec![1, s.channels as i64, 1, 1],
            values.iter().map(|&v| v as f32).collect(),
        )
    };
    let (dims, mean) = channel_constant(&artifact.normalisation.mean);
    graph.constant("normalize.mean", dims.clone(), &mean);
    let (_, std) = channel_constant(&artifact.normalisation.std);
    graph.constant("normalize.std", dims, &std);
    let centred = graph.node("Sub", &[INPUT, "normalize.mean"], vec![]);
    let normalised = graph.node("Div", &[&centred, "normalize.std"], vec![]);
    let layers = super::layers(artifact)?;
    let input = [s.channels, s.height, s.width];
    let last = graph.layers(&layers, normalised, &input)?;
    graph.proto.node.push(NodeProto {
        op_type: "Identity".into(),
        name: "output".into(),
        input: vec![last],
        output: vec![OUTPUT.into()],
        ..Default::default()
    });
    let classes = artifact.record.eval.classes;
    graph.proto.input = vec![value_info(
        INPUT,
        vec![
            Dim::Param("N"),
            Dim::Value(s.channels),
            Dim::Value(s.height),
            Dim::Value(s.width),
        ],
    )];
    graph.proto.output = vec![value_info(
        OUTPUT,
        vec![Dim::Param("N"), Dim::Value(classes)],
    )];
    let model = ModelProto {
        ir_version: ir_version(opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "exp".into(),
        producer_version: crate::VERSION.into(),
        doc_string: format!(
            "{} model of experiment {}, run {} (commit {}): float32 [N, C, H, W] = pixels / 255 in, logits out",
            artifact.record.model.architecture,
            artifact.provenance.experiment,
            artifact.provenance.run_id,
            artifact.provenance.commit
        ),
        graph: Some(graph.proto),
        metadata_props: metadata(artifact)
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

enum Dim {
    Param(&'static str),
    Value(usize),
}

fn value_info(name: &str, dims: Vec<Dim>) -> ValueInfoProto {
    let dim = dims
        .into_iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Param(p) => tensor_shape_proto::dimension::Value::DimParam(p.into()),
                Dim::Value(v) => tensor_shape_proto::dimension::Value::DimValue(v as i64),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

struct Graph<'a> {
    artifact: &'a Artifact,
    proto: GraphProto,
    next: usize,
}

impl Graph<'_> {
    /// Adds a float32 initializer.
    fn constant(&mut self, name: &str, dims: Vec<i64>, values: &[f32]) {
        self.proto.initializer.push(TensorProto {
            name: name.into(),
            dims,
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
    }

    /// Adds the weights tensor `name` as an initializer of the same name.
    fn weight(&mut self, name: &str) -> Result<String, ExportError> {
        let (dims, values) = f32_tensor(self.artifact, name)?;
        let dims = dims.iter().map(|&d| d as i64).collect();
        self.constant(name, dims, &values);
        Ok(name.to_string())
    }

    /// Adds a node and returns the name of its output.
    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.next += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.next);
        self.proto.node.push(NodeProto {
            op_type: op.into(),
            name: output.clone(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            attribute,
            ..Default::default()
        });
        output
    }

    /// Adds `layers` after the value `x` of shape `shape` (without the batch dimension);
    /// returns the last value's name.
    fn layers(
        &mut self,
        layers: &[Layer],
        mut x: String,
        shape: &[usize],
    ) -> Result<String, ExportError> {
        let mut shape = shape.to_vec();
        for layer in layers {
            x = match layer {
                Layer::Conv {
                    name,
                    stride,
                    padding,
                    bias,
                } => {
                    let w = self.weight(&format!("{name}.weight"))?;
                    let k = self.artifact.tensors[&w].dims()[2];
                    let mut inputs = vec![x.clone(), w];
                    if *bias {
                        inputs.push(self.weight(&format!("{name}.bias"))?);
                    }
                    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                    self.node(
                        "Conv",
                        &inputs,
                        vec![
                            ints("kernel_shape", &[k, k]),
                            ints("strides", &[*stride, *stride]),
                            ints("pads", &[*padding; 4]),
                        ],
                    )
                }
                Layer::BatchNorm { name, eps } => {
                    let inputs = ["weight", "bias", "running_mean", "running_var"]
                        .iter()
                        .map(|t| self.weight(&format!("{name}.{t}")))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut all = vec![x.as_str()];
                    all.extend(inputs.iter().map(String::as_str));
                    self.node(
                        "BatchNormalization",
                        &all,
                        vec![float("epsilon", *eps as f32)],
                    )
                }
                Layer::Relu => self.node("Relu", &[&x], vec![]),
                Layer::MaxPool2x2 => self.node(
                    "MaxPool",
                    &[&x],
                    vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
                ),
                Layer::GlobalAvgPool => {
                    let pooled = self.node(
                        "AveragePool",
                        &[&x],
                        vec![ints("kernel_shape", &[shape[1], shape[2]])],
                    );
                    self.node("Flatten", &[&pooled], vec![int("axis", 1)])
                }
                Layer::Flatten => self.node("Flatten", &[&x], vec![int("axis", 1)]),
                // The identity outside training: nothing in the graph.
                Layer::Dropout { .. } => x,
                Layer::Dense { name } => {
                    let w = self.weight(&format!("{name}.weight"))?;
                    let b = self.weight(&format!("{name}.bias"))?;
                    self.node("Gemm", &[&x, &w, &b], vec![int("transB", 1)])
                }
                Layer::Residual { body, shortcut, .. } => {
                    let main = self.layers(body, x.clone(), &shape)?;
                    let skip = if shortcut.is_empty() {
                        x
                    } else {
                        self.layers(shortcut, x, &shape)?
                    };
                    let sum = self.node("Add", &[&main, &skip], vec![]);
                    self.node("Relu", &[&sum], vec![])
                }
            };
            shape = shape_after(std::slice::from_ref(layer), &shape, self.artifact);
        }
        Ok(x)
    }
}

/// The shape `[C, H, W]` (or `[features]` once flattened) of the activations after `layers`,
/// starting from `input`.
fn shape_after(layers: &[Layer], input: &[usize], artifact: &Artifact) -> Vec<usize> {
    let mut shape = input.to_vec();
    for layer in layers {
        shape = match layer {
            Layer::Conv {
                name,
                stride,
                padding,
                ..
            } => {
                let w = artifact.tensors[&format!("{name}.weight")].dims().to_vec();
                let out = |x: usize| (x + 2 * padding - w[2]) / stride + 1;
                vec![w[0], out(shape[1]), out(shape[2])]
            }
            Layer::MaxPool2x2 => vec![shape[0], shape[1] / 2, shape[2] / 2],
            Layer::GlobalAvgPool => vec![shape[0]],
            Layer::Flatten => vec![shape.iter().product()],
            Layer::Dense { name } => vec![artifact.tensors[&format!("{name}.weight")].dims()[0]],
            Layer::Residual { body, .. } => shape_after(body, &shape, artifact),
            Layer::BatchNorm { .. } | Layer::Relu | Layer::Dropout { .. } => shape,
        };
    }
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ir_versions_follow_the_onnx_table() {
        assert_eq!(ir_version(14), 7);
        assert_eq!(ir_version(17), 8);
        assert_eq!(ir_version(19), 9);
        assert_eq!(ir_version(21), 10);
    }
}
