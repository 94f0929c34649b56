//! Gradient accumulation: the gradients of `accumulate` micro-batches are summed per
//! parameter, then one optimiser step takes the sum (the loss was scaled by 1/accumulate, so
//! the sum is the mean gradient). An epoch's last micro-batches step even when fewer than
//! `accumulate` remain, as PyTorch recipes that step at the end of the loader do.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Summed gradients waiting for their optimiser step.
pub struct Accumulator {
    /// One slot per optimised variable, in the optimiser's order.
    sums: Vec<Option<Tensor>>,
    /// Micro-batches summed since the last step.
    pending: usize,
    /// Micro-batches per step.
    every: usize,
}

impl Accumulator {
    /// An empty accumulator for `vars` variables stepping every `every` micro-batches.
    pub fn new(vars: usize, every: usize) -> Accumulator {
        Accumulator {
            sums: vec![None; vars],
            pending: 0,
            every: every.max(1),
        }
    }

    /// Adds one micro-batch's gradients (a variable without a gradient keeps its sum).
    pub fn add(&mut self, grads: &GradStore, vars: &[Var]) -> Result<()> {
        for (slot, var) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = grads.get(var) {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g.clone(),
                });
            }
        }
        self.pending += 1;
        Ok(())
    }

    /// Drops everything summed since the last step (an f16 overflow skips the whole update).
    pub fn discard(&mut self) {
        self.sums.iter_mut().for_each(|g| *g = None);
        self.pending = 0;
    }

    /// Whether the optimiser steps now: `every` micro-batches are summed, or the epoch ends
    /// with some pending.
    pub fn ready(&self, last_of_epoch: bool) -> bool {
        self.pending > 0 && (self.pending == self.every || last_of_epoch)
    }

    /// The sums, each divided by `loss_scale` (f16 loss scaling is undone before the update).
    pub fn unscaled(&mut self, loss_scale: f64) -> Result<&[Option<Tensor>]> {
        if loss_scale != 1.0 {
            for g in self.sums.iter_mut().flatten() {
                *g = g.affine(1.0 / loss_scale, 0.0)?;
            }
        }
        Ok(&self.sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sums_micro_batches_and_steps_every_n_or_at_the_epoch_end() {
        let x = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let vars = [x.clone()];
        let mut acc = Accumulator::new(1, 3);
        for k in 1..=2 {
            let loss = (x.as_tensor() * k as f64).unwrap().sum_all().unwrap();
            acc.add(&loss.backward().unwrap(), &vars).unwrap();
            assert!(!acc.ready(false));
        }
        assert!(acc.ready(true), "the epoch's remainder steps");
        // 1·x + 2·x: gradient 3 per element; with a loss scale of 2 it is 1.5.
        let sums = acc.unscaled(2.0).unwrap();
        let g = sums[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [1.5, 1.5]);
        acc.discard();
        assert!(!acc.ready(true));
        let loss = x.as_tensor().sum_all().unwrap();
        for _ in 0..3 {
            acc.add(&loss.backward().unwrap(), &vars).unwrap();
        }
        assert!(acc.ready(false));
        let g = acc.unscaled(1.0).unwrap()[0]
            .as_ref()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, [3.0, 3.0]);
    }
}
