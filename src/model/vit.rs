//! Vision Transformer (Dosovitskiy et al. 2021) as Hugging Face's `ViTForImageClassification`
//! computes it and candle-transformers 0.11.1 (`models::vit`) re-implements it for inference:
//! the image cut into square patches by a strided convolution, a learned `[CLS]` token and
//! position embeddings, pre-norm encoder layers (multi-head self-attention, then a GELU MLP,
//! each with a residual connection), layer norm on the `[CLS]` token and a linear classifier.
//!
//! Reused from candle-transformers: the configuration type ([`Config`], filled from the spec)
//! and the tensor names, which are Hugging Face's (`vit.embeddings.cls_token`,
//! `vit.encoder.layer.0.attention.attention.query.weight`, `classifier.bias`, …), so a
//! `ViTForImageClassification` state dict saved as safetensors loads with `init.from`, and the
//! GELU (`candle_nn::Activation::Gelu`, the exact erf form, as Hugging Face's `"gelu"`).
//! Not reused: its modules. Its attention softmax (`softmax_last_dim`) and layer norm
//! (`candle_nn::ops::layer_norm`) are fused ops without a backward pass, it has no dropout,
//! and it keeps its parameters private behind a `VarBuilder`; here the same computation is
//! written with differentiable candle ops ([`softmax_last_dim`], [`layer_norm`]) on exp's own
//! seeded parameters, and the patch projection is exp's convolution (its backward skips the
//! image's gradient). On the CPU in f32, attention, layer norm and the GELU are exp's fused ops
//! instead (src/model/cpu/attention.rs), which compute the same within rounding. A unit test
//! checks that candle-transformers' model, given these tensors, computes the same logits.
//!
//! Dropout (`model.dropout`) is Hugging Face's `hidden_dropout_prob`: after the embeddings,
//! the attention output and the MLP output, in training only; attention probabilities are not
//! dropped.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, Linear};
pub use candle_transformers::models::vit::Config;

use super::{conv2d, cpu, dropout, linear, ConvNames, Mode, ParamBuilder};
use crate::profile::span;

/// Hugging Face's `ViTConfig.layer_norm_eps` default (candle-transformers' too).
pub(super) const LAYER_NORM_EPS: f64 = 1e-12;
/// The standard deviation Hugging Face initialises the `[CLS]` token and the position
/// embeddings with (`initializer_range`); here drawn uniformly with that deviation.
const EMBEDDING_STD: f32 = 0.02;

static PATCH_CONV: ConvNames = ConvNames {
    forward: "fwd vit patch conv",
    bias: "fwd vit patch conv bias",
    kernel_grad: "bwd vit patch conv kernel grad",
    input_grad: "bwd vit patch conv input grad",
    backward: "bwd vit patch conv",
    relu: "fwd vit patch conv relu",
};

/// Softmax over the last dimension from candle's differentiable primitives (max, sub, exp,
/// sum, div: `candle_nn::ops::softmax`), computed in f32 for half-precision inputs. The fused
/// `candle_nn::ops::softmax_last_dim` has no backward pass.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    if dtype == DType::F32 || dtype == DType::F64 {
        return candle_nn::ops::softmax(xs, D::Minus1);
    }
    candle_nn::ops::softmax(&xs.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)
}

/// Layer norm over the last dimension, `(x − mean) / √(var + eps) · weight + bias` with the
/// biased variance, as torch.nn.LayerNorm; statistics in f32 for half-precision inputs, the
/// result in `xs`'s dtype. Differentiable candle primitives: the fused
/// `candle_nn::ops::layer_norm` (what `candle_nn::LayerNorm` runs on contiguous inputs) has no
/// backward pass.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let internal = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let x = xs.to_dtype(internal)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)?
        .broadcast_add(&bias.to_dtype(dtype)?)
}

/// A layer norm's weight and bias (`<name>.weight`, `<name>.bias`).
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(pb: &mut ParamBuilder, name: &str, features: usize) -> Result<Self> {
        let ones = Tensor::ones(features, DType::F32, &pb.device)?;
        let zeros = Tensor::zeros(features, DType::F32, &pb.device)?;
        Ok(Norm {
            weight: pb.parameter(&format!("{name}.weight"), &ones)?,
            bias: pb.parameter(&format!("{name}.bias"), &zeros)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if cpu::applies(xs) {
            return cpu::attention::layer_norm(xs, &self.weight, &self.bias, LAYER_NORM_EPS);
        }
        span("fwd layer-norm", xs.device(), || {
            layer_norm(xs, &self.weight, &self.bias, LAYER_NORM_EPS)
        })
    }
}

/// `layer` applied to the last dimension of `xs` (`[.., in]` to `[.., out]`) as one 2-D
/// matrix product.
fn dense(layer: &Linear, xs: &Tensor) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let (rows, last) = dims.split_at(dims.len() - 1);
    let flat = xs.reshape((rows.iter().product::<usize>(), last[0]))?;
    let ys = span("fwd vit linear", xs.device(), || linear(layer, &flat))?;
    let mut out = rows.to_vec();
    out.push(ys.dim(1)?);
    ys.reshape(out)
}

/// One encoder layer (`vit.encoder.layer.N`).
struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    intermediate: Linear,
    output: Linear,
    layernorm_before: Norm,
    layernorm_after: Norm,
}

impl EncoderLayer {
    fn new(pb: &mut ParamBuilder, name: &str, cfg: &Config) -> Result<Self> {
        let (d, mlp) = (cfg.hidden_size, cfg.intermediate_size);
        let attention = format!("{name}.attention.attention");
        Ok(EncoderLayer {
            query: pb.linear(&format!("{attention}.query"), d, d)?,
            key: pb.linear(&format!("{attention}.key"), d, d)?,
            value: pb.linear(&format!("{attention}.value"), d, d)?,
            attention_output: pb.linear(&format!("{name}.attention.output.dense"), d, d)?,
            intermediate: pb.linear(&format!("{name}.intermediate.dense"), d, mlp)?,
            output: pb.linear(&format!("{name}.output.dense"), mlp, d)?,
            layernorm_before: Norm::new(pb, &format!("{name}.layernorm_before"), d)?,
            layernorm_after: Norm::new(pb, &format!("{name}.layernorm_after"), d)?,
        })
    }

    fn attention(&self, xs: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let head_size = d / heads;
        let split = |layer: &Linear| -> Result<Tensor> {
            dense(layer, xs)?
                .reshape((b, n, heads, head_size))?
                .permute((0, 2, 1, 3))?
                .contiguous()
        };
        let (q, k, v) = (split(&self.query)?, split(&self.key)?, split(&self.value)?);
        let dev = xs.device();
        if cpu::applies(&q) {
            // One fused op (src/model/cpu/attention.rs).
            let scale = 1.0 / (head_size as f32).sqrt();
            return cpu::attention::attention(&q, &k, &v, scale)?
                .permute((0, 2, 1, 3))?
                .contiguous()?
                .reshape((b, n, d));
        }
        let scores = span("fwd attention scores", dev, || {
            q.matmul(&k.t()?.contiguous()?)? / (head_size as f64).sqrt()
        })?;
        let probs = span("fwd attention softmax", dev, || softmax_last_dim(&scores))?;
        span("fwd attention values", dev, || {
            probs
                .matmul(&v)?
                .permute((0, 2, 1, 3))?
                .contiguous()?
                .reshape((b, n, d))
        })
    }

    fn forward(&self, xs: &Tensor, cfg: &Config, p: f64, mode: &mut Mode) -> Result<Tensor> {
        let dev = xs.device();
        let h = self.layernorm_before.forward(xs)?;
        let h = self.attention(&h, cfg.num_attention_heads)?;
        let h = dense(&self.attention_output, &h)?;
        let h = span("fwd dropout", dev, || dropout(&h, p, mode))?;
        let xs = (h + xs)?;
        let h = self.layernorm_after.forward(&xs)?;
        let h = dense(&self.intermediate, &h)?;
        let h = if cpu::applies(&h) && matches!(cfg.hidden_act, candle_nn::Activation::Gelu) {
            cpu::attention::gelu(&h)?
        } else {
            span("fwd gelu", dev, || cfg.hidden_act.forward(&h))?
        };
        let h = dense(&self.output, &h)?;
        let h = span("fwd dropout", dev, || dropout(&h, p, mode))?;
        h + xs
    }
}

/// A ViT classifier.
pub(super) struct Vit {
    pub(super) config: Config,
    /// Patches down and across.
    grid: (usize, usize),
    projection: Conv2d,
    cls_token: Tensor,
    position_embeddings: Tensor,
    layers: Vec<EncoderLayer>,
    layernorm: Norm,
    classifier: Linear,
    dropout: f64,
}

impl Vit {
    /// The model `cfg` describes for `height × width` images and `classes` classes.
    /// `cfg.image_size` is the height (Hugging Face's square images; exp also takes
    /// rectangular ones, with `(height / patch) · (width / patch)` patches).
    pub(super) fn new(
        pb: &mut ParamBuilder,
        cfg: Config,
        (height, width): (usize, usize),
        classes: usize,
        dropout: f64,
    ) -> Result<Self> {
        let (d, p) = (cfg.hidden_size, cfg.patch_size);
        if p == 0 || height % p != 0 || width % p != 0 {
            return Err(candle_core::Error::Msg(format!(
                "model vit: model.patch_size = {p} must divide the image's height and width, the data has {height}×{width}"
            )));
        }
        if cfg.num_attention_heads == 0 || d % cfg.num_attention_heads != 0 {
            return Err(candle_core::Error::Msg(format!(
                "model vit: model.heads = {} must divide model.width = {d}",
                cfg.num_attention_heads
            )));
        }
        let grid = (height / p, width / p);
        let embeddings = "vit.embeddings";
        let projection = pb.conv2d(
            &format!("{embeddings}.patch_embeddings.projection"),
            cfg.num_channels,
            d,
            p,
        )?;
        let projection = Conv2d::new(
            projection.weight().clone(),
            projection.bias().cloned(),
            Conv2dConfig {
                stride: p,
                ..Conv2dConfig::default()
            },
        );
        // Uniform on ±√3·σ has standard deviation σ.
        let bound = EMBEDDING_STD * 3f32.sqrt();
        let cls_token = pb.uniform(&format!("{embeddings}.cls_token"), &[1, 1, d], bound)?;
        let position_embeddings = pb.uniform(
            &format!("{embeddings}.position_embeddings"),
            &[1, grid.0 * grid.1 + 1, d],
            bound,
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(pb, &format!("vit.encoder.layer.{i}"), &cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Vit {
            layernorm: Norm::new(pb, "vit.layernorm", d)?,
            classifier: pb.linear("classifier", d, classes)?,
            config: cfg,
            grid,
            projection,
            cls_token,
            position_embeddings,
            layers,
            dropout,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let training = matches!(mode, Mode::Train(_));
        let (b, _, _, _) = xs.dims4()?;
        let (dtype, dev, d) = (xs.dtype(), xs.device(), self.config.hidden_size);
        let patches = conv2d(&self.projection, xs, training, &PATCH_CONV)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let cls = self.cls_token.to_dtype(dtype)?.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?
            .broadcast_add(&self.position_embeddings.to_dtype(dtype)?)?;
        debug_assert_eq!(x.dim(1)?, self.grid.0 * self.grid.1 + 1);
        let mut x = span("fwd dropout", dev, || dropout(&x, self.dropout, mode))?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.config, self.dropout, mode)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        let cls = self.layernorm.forward(&cls)?;
        span("fwd classifier", dev, || linear(&self.classifier, &cls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{ExpRng, Purpose};
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(
            ExpRng::new(seed, Purpose::Init).uniform(n, scale),
            shape,
            &Device::Cpu,
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// exp's differentiable softmax and layer norm compute what candle's fused forward-only
    /// ops compute, within 1e-5, and have a backward pass (the fused ones have none).
    #[test]
    fn softmax_and_layer_norm_match_candles_fused_ops() -> Result<()> {
        let x = random(&[2, 3, 17, 24], 1, 6.0)?;
        let fused = candle_nn::ops::softmax_last_dim(&x)?;
        let ours = softmax_last_dim(&x)?;
        assert!(max_diff(&ours, &fused)? < 1e-5);

        let w = random(&[24], 2, 1.0)?;
        let b = random(&[24], 3, 1.0)?;
        for eps in [1e-12, 1e-5] {
            let fused = candle_nn::ops::layer_norm(&x, &w, &b, eps as f32)?;
            let ours = layer_norm(&x, &w, &b, eps)?;
            assert!(max_diff(&ours, &fused)? < 1e-5, "layer norm, eps {eps}");
        }

        // The fused ops refuse a backward pass; ours give gradients.
        let v = Var::from_tensor(&x)?;
        let fused = candle_nn::ops::softmax_last_dim(v.as_tensor())?.sum_all()?;
        assert!(fused.backward()?.get(v.as_tensor()).is_none());
        let loss = (softmax_last_dim(v.as_tensor())? * &x)?.sum_all()?;
        assert!(loss.backward()?.get(v.as_tensor()).is_some());
        let loss = (layer_norm(v.as_tensor(), &w, &b, 1e-5)? * &x)?.sum_all()?;
        assert!(loss.backward()?.get(v.as_tensor()).is_some());
        Ok(())
    }

    /// The gradients of the softmax and the layer norm agree with central finite differences
    /// (in f64, where the differences are exact enough to compare).
    #[test]
    fn softmax_and_layer_norm_gradients_match_finite_differences() -> Result<()> {
        let x = random(&[3, 7], 4, 2.0)?.to_dtype(DType::F64)?;
        let c = random(&[3, 7], 5, 1.0)?.to_dtype(DType::F64)?;
        let w = random(&[7], 6, 1.0)?.to_dtype(DType::F64)?;
        let b = random(&[7], 7, 1.0)?.to_dtype(DType::F64)?;
        type Op<'a> = Box<dyn Fn(&Tensor) -> Result<Tensor> + 'a>;
        let ops: [(&str, Op); 2] = [
            ("softmax", Box::new(softmax_last_dim)),
            ("layer norm", Box::new(|t| layer_norm(t, &w, &b, 1e-5))),
        ];
        for (name, op) in ops {
            let f = |t: &Tensor| -> Result<f64> { (op(t)? * &c)?.sum_all()?.to_scalar::<f64>() };
            let v = Var::from_tensor(&x)?;
            let grads = (op(v.as_tensor())? * &c)?.sum_all()?.backward()?;
            let analytic = grads
                .get(v.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg(format!("{name}: no gradient")))?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let values = x.flatten_all()?.to_vec1::<f64>()?;
            let h = 1e-6;
            for i in 0..values.len() {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = values.clone();
                    v[i] += delta;
                    f(&Tensor::from_vec(v, x.dims(), &Device::Cpu)?)
                };
                let numeric = (at(h)? - at(-h)?) / (2.0 * h);
                assert!(
                    (numeric - analytic[i]).abs() < 1e-6,
                    "{name}: d/dx[{i}] {numeric} vs {}",
                    analytic[i]
                );
            }
        }
        Ok(())
    }
}
