//! A dense layer `x · Wᵀ + b` with an optional ReLU, as one op on the CPU.
//!
//! candle's `Linear` is a matmul against the transposed weight plus a broadcast add; its
//! backward adds the weight gradient through a transposed (strided) view and creates a zero
//! tensor per node to accumulate into. Here the forward is one GEMM into rows pre-filled with
//! the bias and the ReLU applied in place, and the backward three direct products: the input
//! gradient `dZ · W` (only when the input tracks one), the weight gradient `dZᵀ · x`, written
//! in the weight's own layout, and the bias gradient as column sums in row order. The GEMMs
//! use all of rayon's threads; gemm splits only the output among them, so results do not
//! depend on the thread count.

use candle_core::{CpuStorage, Result, Shape, Tensor};
use candle_nn::Linear;

use super::{apply, gemm, slice, tensor, LayerKernel, Mat, Threads};

/// Profile labels of one dense layer.
pub struct DenseNames {
    /// The forward pass.
    pub forward: &'static str,
    /// The backward pass.
    pub backward: &'static str,
    /// The ReLU after the layer, where it is a separate op.
    pub relu: &'static str,
}

/// `relu?(xs · Wᵀ + b)` for `xs` of shape `(n, in)`, f32 on the CPU.
pub fn linear(
    layer: &Linear,
    xs: &Tensor,
    relu: bool,
    names: &'static DenseNames,
) -> Result<Tensor> {
    let (n, inputs) = xs.dims2()?;
    let (outputs, weight_inputs) = layer.weight().dims2()?;
    if inputs != weight_inputs {
        candle_core::bail!("linear: {inputs} input features, the weight expects {weight_inputs}")
    }
    let kernel = Dense {
        n,
        inputs,
        outputs,
        relu,
        input_grad: xs.track_op(),
        names,
    };
    apply(kernel, xs, layer.weight(), layer.bias(), names.forward)
}

struct Dense {
    n: usize,
    inputs: usize,
    outputs: usize,
    relu: bool,
    input_grad: bool,
    names: &'static DenseNames,
}

impl LayerKernel for Dense {
    const NAME: &'static str = "exp-cpu-linear";

    fn backward_label(&self) -> &'static str {
        self.names.backward
    }

    fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (n, i, o) = (self.n, self.inputs, self.outputs);
        if x.len() != n * i || w.len() != o * i || bias.is_some_and(|b| b.len() != o) {
            candle_core::bail!("linear: operand sizes do not match ({n}×{i} by {o}×{i})")
        }
        let mut y = vec![0f32; n * o];
        if let Some(bias) = bias {
            for row in y.chunks_exact_mut(o) {
                row.copy_from_slice(bias);
            }
        }
        gemm(
            &mut y,
            Mat::row_major(n, o),
            bias.is_some(),
            x,
            Mat::row_major(n, i),
            w,
            Mat::row_major(o, i).t(),
            Threads::All,
        );
        if self.relu {
            for v in &mut y {
                if *v < 0.0 {
                    *v = 0.0;
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let (n, i, o) = (self.n, self.inputs, self.outputs);
        let what = "linear backward";
        let grad = grad.contiguous()?;
        let (x_store, x_layout) = x.storage_and_layout();
        let (w_store, w_layout) = w.storage_and_layout();
        let (g_store, g_layout) = grad.storage_and_layout();
        let x = slice(&x_store, x_layout, what)?;
        let w = slice(&w_store, w_layout, what)?;
        let g = slice(&g_store, g_layout, what)?;
        if g.len() != n * o || x.len() != n * i || w.len() != o * i {
            candle_core::bail!("{what}: the gradient does not match the forward pass")
        }
        let masked;
        let dz: &[f32] = if self.relu {
            let (r_store, r_layout) = res.storage_and_layout();
            let y = slice(&r_store, r_layout, what)?;
            masked = g
                .iter()
                .zip(y)
                .map(|(&g, &y)| if y <= 0.0 { 0.0 } else { g })
                .collect::<Vec<f32>>();
            &masked
        } else {
            g
        };
        let mut db = vec![0f32; o];
        for row in dz.chunks_exact(o) {
            db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        let mut dw = vec![0f32; o * i];
        gemm(
            &mut dw,
            Mat::row_major(o, i),
            false,
            dz,
            Mat::row_major(n, o).t(),
            x,
            Mat::row_major(n, i),
            Threads::All,
        );
        let dx = if self.input_grad {
            let mut dx = vec![0f32; n * i];
            gemm(
                &mut dx,
                Mat::row_major(n, i),
                false,
                dz,
                Mat::row_major(n, o),
                w,
                Mat::row_major(o, i),
                Threads::All,
            );
            Some(tensor(dx, &[n, i])?)
        } else {
            None
        };
        Ok((dx, tensor(dw, &[o, i])?, tensor(db, &[o])?))
    }
}
