//! Inverted dropout as one op on GPUs: the keep mask is a pure function of a seed and the
//! element's index (SplitMix64, see `cuda/kernels.cu`), so the forward is one kernel, the
//! backward is the same kernel on the gradient, and no mask tensor is ever stored. The seed
//! of each call is drawn from the run's dropout stream: a GPU run's masks are reproducible.
//! The CPU implementation of the same op is the reference `exp device --check` compares the
//! kernel with (training on the CPU uses exp's CPU kernels, `model/cpu/dropout.rs`).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Keeps element `i` of the mask of `seed` when `keep_hash(seed, i) >= threshold(p)`: the
/// upper 32 bits of SplitMix64's output at position `i` of the stream seeded with `seed`.
pub fn keep_hash(seed: u64, i: u64) -> u32 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

/// The hash threshold of drop probability `p`: p·2³², so P(keep) = 1 - p.
fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// `xs` with each element dropped with probability `p` (mask of `seed`), the rest scaled by
/// 1/(1-p).
pub fn fused_dropout(xs: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout: p = {p} is outside [0, 1)")
    }
    xs.contiguous()?.apply_op1(FusedDropout {
        seed,
        threshold: threshold(p),
        scale: (1.0 / (1.0 - p)) as f32,
    })
}

#[derive(Debug, Clone, Copy)]
struct FusedDropout {
    seed: u64,
    threshold: u32,
    scale: f32,
}

impl CustomOp1 for FusedDropout {
    fn name(&self) -> &'static str {
        "exp-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(storage, layout, "dropout")?;
        let y = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if keep_hash(self.seed, i as u64) >= self.threshold {
                    v * self.scale
                } else {
                    0.0
                }
            })
            .collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::dropout(storage, layout, self.seed, self.threshold, self.scale)
    }

    /// Dropout is linear for a fixed mask: the gradient goes through the same mask and scale.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Pinned: the first hashes of seed 0 are SplitMix64's published outputs' upper halves
    /// (0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f).
    #[test]
    fn hash_is_splitmix64() {
        assert_eq!(keep_hash(0, 0), 0xe220a839);
        assert_eq!(keep_hash(0, 1), 0x6e789e6a);
        assert_eq!(keep_hash(0, 2), 0x06c45d18);
    }

    /// The kept share is 1 - p, kept values are scaled, and the gradient goes through the
    /// same mask.
    #[test]
    fn keeps_one_minus_p_and_backward_uses_the_mask() -> Result<()> {
        let n = 100_000;
        let x = Var::new(vec![1f32; n], &Device::Cpu)?;
        let y = fused_dropout(x.as_tensor(), 0.25, 42)?;
        let values = y.to_vec1::<f32>()?;
        let kept = values.iter().filter(|&&v| v != 0.0).count();
        assert!((kept as f64 / n as f64 - 0.75).abs() < 0.005, "kept {kept}");
        assert!(values.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        let grads = y.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .to_vec1::<f32>()?;
        assert_eq!(g, values);
        // Another seed, another mask.
        let other = fused_dropout(x.as_tensor(), 0.25, 43)?.to_vec1::<f32>()?;
        assert_ne!(other, values);
        Ok(())
    }
}
