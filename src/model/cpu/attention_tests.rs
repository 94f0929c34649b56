//! The attention block's CPU ops (src/model/cpu/attention.rs) against candle's compositions
//! (vit.rs's `softmax_last_dim` and `layer_norm`, candle's `gelu_erf`), forward and every
//! gradient, against finite differences, and across thread counts (bit-identical).

use candle_core::{Result, Tensor, Var};

use super::attention::{attention, gelu, layer_norm};
use super::tests::{
    assert_finite_differences, assert_same, assert_thread_count_invariant, max_relative_difference,
    uniform,
};
use crate::model::vit::{layer_norm as candle_layer_norm, softmax_last_dim};
use crate::rng::{ExpRng, Purpose};

/// vit.rs's attention on candle's ops: `softmax(q·kᵀ / √d)·v`.
fn candle_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(3)?;
    let scores = (q.matmul(&k.t()?.contiguous()?)? / (d as f64).sqrt())?;
    softmax_last_dim(&scores)?.matmul(v)
}

fn vars(rng: &mut ExpRng, shape: &[usize], count: usize) -> Result<Vec<Var>> {
    (0..count)
        .map(|_| Var::from_tensor(&uniform(rng, shape, 1.5)?))
        .collect()
}

/// (images, heads, tokens, head size): one token, ViT's 50 tokens of 16, odd sizes.
#[test]
fn attention_matches_candle_forward_and_backward() -> Result<()> {
    let mut rng = ExpRng::new(31, Purpose::Init);
    for shape in [[2, 3, 5, 4], [1, 1, 1, 8], [3, 2, 50, 16], [2, 1, 7, 3]] {
        let qkv = vars(&mut rng, &shape, 3)?;
        let (q, k, v) = (qkv[0].as_tensor(), qkv[1].as_tensor(), qkv[2].as_tensor());
        let scale = 1.0 / (shape[3] as f32).sqrt();
        let ours = attention(q, k, v, scale)?;
        let theirs = candle_attention(q, k, v)?;
        let named = [(&qkv[0], "q"), (&qkv[1], "k"), (&qkv[2], "v")];
        assert_same(&mut rng, &ours, &theirs, &named, &format!("{shape:?}"))?;
    }
    Ok(())
}

/// Rows of one feature (the variance is 0), ViT's 64, odd sizes.
#[test]
fn layer_norm_matches_candle_forward_and_backward() -> Result<()> {
    let mut rng = ExpRng::new(32, Purpose::Init);
    for shape in [vec![7, 64], vec![1, 5], vec![2, 65, 33], vec![3, 1]] {
        let features = *shape.last().expect("a last dimension");
        let x = Var::from_tensor(&(uniform(&mut rng, &shape, 2.0)? + 0.5)?)?;
        let w = Var::from_tensor(&uniform(&mut rng, &[features], 1.5)?)?;
        let b = Var::from_tensor(&uniform(&mut rng, &[features], 1.0)?)?;
        let ours = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12)?;
        let theirs = candle_layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12)?;
        let named = [(&x, "input"), (&w, "weight"), (&b, "bias")];
        assert_same(&mut rng, &ours, &theirs, &named, &format!("{shape:?}"))?;
    }
    Ok(())
}

/// candle's `gelu_erf` to the bit forward; its gradient within rounding.
#[test]
fn gelu_matches_candle_forward_and_backward() -> Result<()> {
    let mut rng = ExpRng::new(33, Purpose::Init);
    let x = Var::from_tensor(&uniform(&mut rng, &[5, 40_000], 4.0)?)?;
    let ours = gelu(x.as_tensor())?;
    let theirs = x.as_tensor().gelu_erf()?;
    assert_eq!(max_relative_difference(&ours, &theirs)?, 0.0);
    assert_same(&mut rng, &ours, &theirs, &[(&x, "input")], "gelu")
}

#[test]
fn attention_block_gradients_match_finite_differences() -> Result<()> {
    let mut rng = ExpRng::new(34, Purpose::Init);
    let qkv = vars(&mut rng, &[1, 2, 4, 3], 3)?;
    let probe = uniform(&mut rng, &[1, 2, 4, 3], 1.0)?;
    let loss = || {
        let y = attention(
            qkv[0].as_tensor(),
            qkv[1].as_tensor(),
            qkv[2].as_tensor(),
            0.7,
        )?;
        (y * &probe)?.sum_all()
    };
    for (var, what) in qkv.iter().zip(["q", "k", "v"]) {
        assert_finite_differences(var, &[0, 5, 13, 23], &loss, what)?;
    }
    let x = Var::from_tensor(&uniform(&mut rng, &[3, 6], 2.0)?)?;
    let w = Var::from_tensor(&uniform(&mut rng, &[6], 1.5)?)?;
    let b = Var::from_tensor(&uniform(&mut rng, &[6], 1.0)?)?;
    let probe = uniform(&mut rng, &[3, 6], 1.0)?;
    let loss =
        || (layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)? * &probe)?.sum_all();
    assert_finite_differences(&x, &[0, 7, 17], &loss, "layer norm input")?;
    assert_finite_differences(&w, &[0, 3, 5], &loss, "layer norm weight")?;
    assert_finite_differences(&b, &[1, 4], &loss, "layer norm bias")?;
    let loss = || (gelu(x.as_tensor())? * &probe)?.sum_all();
    assert_finite_differences(&x, &[0, 7, 17], &loss, "gelu input")
}

#[test]
fn attention_block_results_do_not_depend_on_the_thread_count() -> Result<()> {
    let mut rng = ExpRng::new(35, Purpose::Init);
    let qkv = vars(&mut rng, &[5, 4, 17, 8], 3)?;
    let refs: Vec<&Var> = qkv.iter().collect();
    assert_thread_count_invariant(&refs, &|| {
        attention(
            qkv[0].as_tensor(),
            qkv[1].as_tensor(),
            qkv[2].as_tensor(),
            0.35,
        )
    })?;
    // Enough rows for several reduction chunks of the weight and bias gradients.
    let x = Var::from_tensor(&uniform(&mut rng, &[37, 50, 24], 2.0)?)?;
    let w = Var::from_tensor(&uniform(&mut rng, &[24], 1.5)?)?;
    let b = Var::from_tensor(&uniform(&mut rng, &[24], 1.0)?)?;
    assert_thread_count_invariant(&[&x, &w, &b], &|| {
        layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-12)
    })?;
    let big = Var::from_tensor(&uniform(&mut rng, &[3, 50_000], 3.0)?)?;
    assert_thread_count_invariant(&[&big], &|| gelu(big.as_tensor()))
}
