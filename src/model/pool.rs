//! 2×2 max-pooling (stride 2, floor, as PyTorch's `MaxPool2d(2)`) with PyTorch's gradient.
//!
//! candle 0.11.1's `max_pool2d` backward multiplies the gradient by (ties in the window) / 4:
//! a window with one maximum passes back a quarter of its gradient, a window of four equal
//! values (MNIST's constant background makes many) four times too much. Measured on the 10,000
//! MNIST test images, seed-cnn's conv-bias gradient came out 3.1× PyTorch's. Here the gradient
//! goes to the window's first maximum, as PyTorch's CPU kernel routes it.
//!
//! On the CPU and on CUDA this is a custom op (one pass forward, one pass backward, no
//! temporaries; the CUDA kernels are in src/cuda/kernels.cu). Elsewhere the same gradient
//! comes from candle ops: the pooled value is written as a
//! weighted sum of the window with constant weights 1/ties at the maxima, so autograd splits
//! the gradient evenly among tied maxima (the same total as PyTorch's).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// 2×2 max-pool with PyTorch's gradient (see the module docs).
pub fn max_pool_2x2(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if h < 2 || w < 2 {
        candle_core::bail!("max_pool_2x2 needs at least 2×2 inputs, got {h}×{w}")
    }
    let kernel = match xs.device() {
        candle_core::Device::Cpu => xs.dtype() == DType::F32,
        candle_core::Device::Cuda(_) => matches!(xs.dtype(), DType::F32 | DType::F16 | DType::BF16),
        _ => false,
    };
    if kernel {
        xs.contiguous()?.apply_op1(MaxPool2x2)
    } else {
        max_pool_2x2_generic(xs)
    }
}

fn max_pool_2x2_generic(xs: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    let xs = if h % 2 == 1 || w % 2 == 1 {
        xs.narrow(2, 0, oh * 2)?.narrow(3, 0, ow * 2)?
    } else {
        xs.clone()
    };
    let windows = xs.contiguous()?.reshape((n, c, oh, 2, ow, 2))?;
    let max = windows.detach().max_keepdim(5)?.max_keepdim(3)?;
    let is_max = windows
        .detach()
        .eq(&max.broadcast_as(windows.shape())?)?
        .to_dtype(xs.dtype())?;
    let ties = is_max.sum_keepdim(5)?.sum_keepdim(3)?;
    let weights = is_max.broadcast_div(&ties)?;
    (windows * weights)?.sum(5)?.sum(3)
}

/// Index into the plane of the window's first maximum, and the maximum (see
/// [`window_first_max`]).
#[inline]
fn window_argmax(x: &[f32], plane_w: usize, top_left: usize) -> (usize, f32) {
    let (k, v) = window_first_max(x, plane_w, top_left);
    (top_left + (k / 2) * plane_w + k % 2, v)
}

/// Position (0..4, row-major) in the 2×2 window at `top_left` of its first maximum, and the
/// maximum. NaN wins, as in PyTorch, so a NaN propagates instead of vanishing.
#[inline]
pub(super) fn window_first_max(x: &[f32], plane_w: usize, top_left: usize) -> (usize, f32) {
    let window = [
        x[top_left],
        x[top_left + 1],
        x[top_left + plane_w],
        x[top_left + plane_w + 1],
    ];
    let mut best = 0;
    for (k, &v) in window.iter().enumerate().skip(1) {
        let best_value = window[best];
        if v > best_value || (v.is_nan() && !best_value.is_nan()) {
            best = k;
        }
    }
    (best, window[best])
}

struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "exp-max-pool-2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(storage, layout, "max_pool_2x2")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        let mut out = Vec::with_capacity(n * c * oh * ow);
        for plane in x.chunks_exact(h * w) {
            for i in 0..oh {
                for j in 0..ow {
                    out.push(window_argmax(plane, w, 2 * i * w + 2 * j).1);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::max_pool_2x2_forward(storage, layout)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        crate::profile::span("bwd max-pool", arg.device(), || {
            Ok(Some(arg.apply_op2_no_bwd(
                &grad_res.contiguous()?,
                &MaxPool2x2Backward,
            )?))
        })
    }
}

/// Routes each pooled gradient to its window's first maximum; zero elsewhere.
struct MaxPool2x2Backward;

impl CustomOp2 for MaxPool2x2Backward {
    fn name(&self) -> &'static str {
        "exp-max-pool-2x2-backward"
    }

    fn cpu_fwd(
        &self,
        arg: &CpuStorage,
        arg_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(arg, arg_layout, "max_pool_2x2 backward")?;
        let g = super::cpu_f32(grad, grad_layout, "max_pool_2x2 backward")?;
        let (n, c, h, w) = arg_layout.shape().dims4()?;
        let (oh, ow) = (h / 2, w / 2);
        if grad_layout.shape().dims() != [n, c, oh, ow] {
            candle_core::bail!(
                "max_pool_2x2 backward: gradient shape {:?} for input {:?}",
                grad_layout.shape(),
                arg_layout.shape()
            )
        }
        let mut out = vec![0f32; n * c * h * w];
        for ((plane, out_plane), grad_plane) in x
            .chunks_exact(h * w)
            .zip(out.chunks_exact_mut(h * w))
            .zip(g.chunks_exact(oh * ow))
        {
            for i in 0..oh {
                for j in 0..ow {
                    let (at, _) = window_argmax(plane, w, 2 * i * w + 2 * j);
                    out_plane[at] += grad_plane[i * ow + j];
                }
            }
        }
        Ok((CpuStorage::F32(out), arg_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        arg: &candle_core::CudaStorage,
        arg_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::max_pool_2x2_backward(arg, arg_layout, grad, grad_layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{ExpRng, Purpose};
    use candle_core::{Device, Module, Var};
    use candle_nn::{Conv2d, Conv2dConfig};

    #[test]
    fn forward_matches_candle_on_every_path() -> Result<()> {
        for (h, w) in [(2, 2), (4, 4), (5, 7), (26, 26)] {
            let values = ExpRng::new(h as u64, Purpose::Init).uniform(2 * 3 * h * w, 1.0);
            let x = Tensor::from_vec(values, (2, 3, h, w), &Device::Cpu)?;
            let reference = x.max_pool2d(2)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(
                max_pool_2x2(&x)?.flatten_all()?.to_vec1::<f32>()?,
                reference
            );
            assert_eq!(
                max_pool_2x2_generic(&x)?.flatten_all()?.to_vec1::<f32>()?,
                reference
            );
            // A strided (transposed) input is made contiguous first.
            let t = x.transpose(2, 3)?;
            assert_eq!(
                max_pool_2x2(&t)?.flatten_all()?.to_vec1::<f32>()?,
                t.max_pool2d(2)?.flatten_all()?.to_vec1::<f32>()?
            );
        }
        Ok(())
    }

    #[test]
    fn gradient_goes_to_the_maximum() -> Result<()> {
        for (h, w) in [(4, 4), (5, 7)] {
            let values = ExpRng::new(9, Purpose::Init).uniform(2 * h * w, 1.0);
            let x = Var::from_tensor(&Tensor::from_vec(values, (1, 2, h, w), &Device::Cpu)?)?;
            for pool in [max_pool_2x2, max_pool_2x2_generic] {
                let g = pool(x.as_tensor())?.sum_all()?.backward()?;
                let g = g
                    .get(x.as_tensor())
                    .expect("gradient")
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                // Random values: no ties; one 1 per window, zeros elsewhere (incl. the cut edge).
                assert_eq!(
                    g.iter().filter(|&&v| v == 1.0).count(),
                    2 * (h / 2) * (w / 2)
                );
                assert!(g.iter().all(|&v| v == 0.0 || v == 1.0));
            }
        }
        // Ties: the CPU op picks the first maximum (PyTorch); the generic path splits evenly.
        let x = Var::from_tensor(&Tensor::new(&[[[[2f32, 2.0], [2.0, 2.0]]]], &Device::Cpu)?)?;
        let grad = |pool: fn(&Tensor) -> Result<Tensor>| -> Result<Vec<f32>> {
            let g = pool(x.as_tensor())?.sum_all()?.backward()?;
            g.get(x.as_tensor())
                .expect("gradient")
                .flatten_all()?
                .to_vec1::<f32>()
        };
        assert_eq!(grad(max_pool_2x2)?, vec![1.0, 0.0, 0.0, 0.0]);
        assert_eq!(grad(max_pool_2x2_generic)?, vec![0.25; 4]);
        Ok(())
    }

    #[test]
    fn finite_differences_through_conv_relu_pool() -> Result<()> {
        let dev = Device::Cpu;
        let input = Tensor::from_vec(
            ExpRng::new(3, Purpose::Init).uniform(2 * 6 * 6, 1.0),
            (2, 1, 6, 6),
            &dev,
        )?;
        let weight = Tensor::from_vec(
            ExpRng::new(4, Purpose::Init).uniform(18, 0.5),
            (2, 1, 3, 3),
            &dev,
        )?;
        let coef: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let coef = Tensor::from_vec(coef, (2, 2, 2, 2), &dev)?;
        let loss = |bias: &Tensor| -> Result<Tensor> {
            let conv = Conv2d::new(weight.clone(), Some(bias.clone()), Conv2dConfig::default());
            (max_pool_2x2(&conv.forward(&input)?.relu()?)? * &coef)?.sum_all()
        };
        let bias = Var::new(&[0.1f32, -0.05], &dev)?;
        let analytic = loss(bias.as_tensor())?
            .backward()?
            .get(bias.as_tensor())
            .expect("gradient")
            .to_vec1::<f32>()?;
        for (i, a) in analytic.iter().enumerate() {
            let shifted = |d: f32| -> Result<f32> {
                let mut b = vec![0.1f32, -0.05];
                b[i] += d;
                loss(&Tensor::new(b.as_slice(), &dev)?)?.to_scalar::<f32>()
            };
            let numeric = (shifted(1e-3)? - shifted(-1e-3)?) / 2e-3;
            assert!(
                (numeric - a).abs() < 1e-3,
                "bias {i}: finite difference {numeric}, backward {a}"
            );
        }
        Ok(())
    }
}
