//! Inverted dropout as one op on the CPU, with the mask from exp's dropout stream.
//!
//! As `xs * mask` in candle, autograd also computes the (unused) gradient of the constant mask
//! and accumulates both into fresh zero tensors: four passes over the activation per step
//! instead of one. Here the op keeps the mask and its backward is `grad * mask`. The mask is
//! the same draw as before (`ExpRng::dropout_mask`), so results are unchanged.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{slice, tensor};
use crate::rng::ExpRng;

/// `xs` with each element zeroed with probability `p` and the rest scaled by 1/(1−p).
pub fn dropout(xs: &Tensor, p: f32, rng: &mut ExpRng) -> Result<Tensor> {
    let mask = rng.dropout_mask(xs.elem_count(), p);
    xs.contiguous()?.apply_op1(Dropout { mask })
}

struct Dropout {
    /// 0 or 1/(1−p) per element.
    mask: Vec<f32>,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "exp-cpu-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::model::cpu_f32(storage, layout, "dropout")?;
        if x.len() != self.mask.len() {
            candle_core::bail!(
                "dropout: {} values for a mask of {}",
                x.len(),
                self.mask.len()
            )
        }
        let y = x.iter().zip(&self.mask).map(|(x, m)| x * m).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        crate::profile::span("bwd dropout", arg.device(), || {
            let grad = grad.contiguous()?;
            let (store, layout) = grad.storage_and_layout();
            let g = slice(&store, layout, "dropout backward")?;
            if g.len() != self.mask.len() {
                candle_core::bail!("dropout backward: the gradient does not match the mask")
            }
            let dx = g.iter().zip(&self.mask).map(|(g, m)| g * m).collect();
            Ok(Some(tensor(dx, arg.dims())?))
        })
    }
}
