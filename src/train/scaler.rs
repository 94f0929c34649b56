//! Dynamic loss scaling for f16 training, with PyTorch's `GradScaler` defaults.
//!
//! f16 gradients below ~6e-8 flush to zero; multiplying the loss by a large scale keeps them
//! representable, and the update divides it back out. When a scaled gradient overflows, the
//! update is skipped and the scale halved; after 2,000 clean steps it doubles again. bf16 has
//! f32's exponent range and needs none of this.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: usize = 2000;

/// The current loss scale and how many steps it has held.
pub(super) struct LossScaler {
    scale: f64,
    clean_steps: usize,
}

impl LossScaler {
    pub(super) fn new() -> Self {
        LossScaler {
            scale: INITIAL_SCALE,
            clean_steps: 0,
        }
    }

    pub(super) fn scale(&self) -> f64 {
        self.scale
    }

    /// True when every gradient of `vars` is finite. One read from the device per call, as
    /// `GradScaler.step` makes.
    pub(super) fn all_finite(grads: &GradStore, vars: &[Var]) -> Result<bool> {
        // A sum is finite exactly when no element is NaN or ±inf (f32 sums of finite f32
        // gradients scaled by ≤ 2^16 do not overflow for any model exp trains).
        let sums: Vec<Tensor> = vars
            .iter()
            .filter_map(|v| grads.get(v))
            .map(|g| g.to_dtype(DType::F32)?.sum_all())
            .collect::<Result<_>>()?;
        if sums.is_empty() {
            return Ok(true);
        }
        let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?;
        Ok(total.is_finite())
    }

    pub(super) fn overflowed(&mut self) {
        self.scale *= BACKOFF_FACTOR;
        self.clean_steps = 0;
    }

    pub(super) fn stepped(&mut self) {
        self.clean_steps += 1;
        if self.clean_steps == GROWTH_INTERVAL {
            self.scale *= GROWTH_FACTOR;
            self.clean_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_halves_on_overflow_and_doubles_after_clean_steps() {
        let mut s = LossScaler::new();
        s.overflowed();
        assert_eq!(s.scale(), 32768.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.stepped();
        }
        assert_eq!(s.scale(), 32768.0);
        s.stepped();
        assert_eq!(s.scale(), 65536.0);
    }

    #[test]
    fn non_finite_gradients_are_found() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let a = Var::new(&[1.0f32, 2.0], &dev)?;
        let b = Var::new(&[3.0f32], &dev)?;
        let loss = (a.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?;
        let grads = loss.backward()?;
        assert!(LossScaler::all_finite(&grads, &[a.clone(), b.clone()])?);
        let loss = (a.as_tensor().log()?.sum_all()? * 0.0)?;
        let zero = Var::new(&[0.0f32], &dev)?;
        let loss = (loss + zero.as_tensor().log()?.sum_all()?)?;
        let grads = loss.backward()?;
        assert!(!LossScaler::all_finite(&grads, &[a, zero])?);
        Ok(())
    }
}
