//! Test support for exp's convolutions: random layers on real candle tensors, candle's own
//! conv2d as the reference, and a comparison of outputs and gradients.

use candle_core::{Device, Result, Tensor, Var};

use super::ConvNames;
use crate::rng::ExpRng;

pub(super) static NAMES: ConvNames = ConvNames {
    forward: "test fwd",
    bias: "test bias",
    kernel_grad: "test kernel grad",
    input_grad: "test input grad",
    backward: "test",
    relu: "test relu",
};

/// An input that tracks a gradient, a kernel and a bias, uniformly random.
pub(super) struct Case {
    pub x: Var,
    pub weight: Var,
    pub bias: Var,
}

impl Case {
    pub fn random(
        rng: &mut ExpRng,
        input: (usize, usize, usize, usize),
        c_out: usize,
        k: usize,
    ) -> Result<Case> {
        let (n, c_in, h, w) = input;
        let dev = Device::Cpu;
        let var = |values: Vec<f32>, shape: &[usize]| {
            Var::from_tensor(&Tensor::from_vec(values, shape, &dev)?)
        };
        Ok(Case {
            x: var(rng.uniform(n * c_in * h * w, 1.0), &[n, c_in, h, w])?,
            weight: var(rng.uniform(c_out * c_in * k * k, 0.5), &[c_out, c_in, k, k])?,
            bias: var(rng.uniform(c_out, 0.5), &[c_out])?,
        })
    }

    /// candle's conv2d plus the bias, on `input` (the tracked `x`, or a detached copy).
    pub fn reference(
        &self,
        input: &Tensor,
        padding: usize,
        stride: usize,
        dilation: usize,
    ) -> Result<Tensor> {
        let c_out = self.bias.dim(0)?;
        input
            .conv2d(self.weight.as_tensor(), padding, stride, dilation, 1)?
            .broadcast_add(&self.bias.as_tensor().reshape((1, c_out, 1, 1))?)
    }

    /// Asserts that `ours` equals `theirs` and that the gradients of a random linear function
    /// of each reach the same variables with the same values, within `tolerance` relative to
    /// the largest magnitude (1e-5 allows for GEMM summation order).
    pub fn assert_matches(
        &self,
        rng: &mut ExpRng,
        ours: Tensor,
        theirs: Tensor,
        tolerance: f32,
    ) -> Result<()> {
        let probe = Tensor::from_vec(
            rng.uniform(theirs.elem_count(), 1.0),
            theirs.shape(),
            &Device::Cpu,
        )?;
        let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= tolerance * scale, "{what}: {diff} (scale {scale})");
            Ok(())
        };
        close(&ours, &theirs, "output")?;
        let g_ours = (ours * &probe)?.sum_all()?.backward()?;
        let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
        for (v, what) in [
            (&self.x, "input"),
            (&self.weight, "kernel"),
            (&self.bias, "bias"),
        ] {
            match (g_ours.get(v), g_theirs.get(v)) {
                (Some(a), Some(b)) => close(a, b, what)?,
                (None, None) => {}
                (a, _) => panic!(
                    "{what} gradient: ours {}, candle's {}",
                    a.is_some(),
                    a.is_none()
                ),
            }
        }
        Ok(())
    }
}
