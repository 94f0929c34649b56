//! exp's CPU kernels against candle's reference ops (forward and every gradient), against
//! finite differences, and across thread counts (bit-identical).
//!
//! References: candle's `conv2d` + bias, `matmul` + bias, `x * mask`; the ReLU as
//! `x * (x > 0)` (PyTorch's gradient: none at exactly 0, where candle's `relu` passes it) and
//! the max-pool as exp's `max_pool_2x2` (PyTorch's first-maximum gradient, tested in pool.rs
//! against candle; candle's own `max_pool2d` backward scales the gradient by ties/4).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear};

use super::conv::{conv2d, Epilogue};
use super::linear::{linear, DenseNames};
use crate::model::{max_pool_2x2, ConvNames};
use crate::rng::{ExpRng, Purpose};

static NAMES: ConvNames = ConvNames {
    forward: "test fwd",
    bias: "test bias",
    kernel_grad: "test kernel grad",
    input_grad: "test input grad",
    backward: "test bwd",
    relu: "test relu",
};
static DENSE: DenseNames = DenseNames {
    forward: "test dense fwd",
    backward: "test dense bwd",
    relu: "test dense relu",
};

/// Summation order differs from candle's (GEMM blocking, chunked batch sums): outputs and
/// gradients must agree within this fraction of the largest magnitude.
const TOLERANCE: f32 = 2e-5;

pub(super) fn uniform(rng: &mut ExpRng, shape: &[usize], scale: f32) -> Result<Tensor> {
    Tensor::from_vec(
        rng.uniform(shape.iter().product(), scale),
        shape,
        &Device::Cpu,
    )
}

/// PyTorch's ReLU: gradient only where the input is > 0.
fn relu_reference(x: &Tensor) -> Result<Tensor> {
    x.mul(&x.gt(0f32)?.to_dtype(DType::F32)?)
}

pub(super) fn max_relative_difference(a: &Tensor, b: &Tensor) -> Result<f32> {
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
}

/// The values of `ours` and `theirs` and the gradients a random linear function of each sends
/// to `vars` agree within [`TOLERANCE`]; a variable gets a gradient from both or from neither.
pub(super) fn assert_same(
    rng: &mut ExpRng,
    ours: &Tensor,
    theirs: &Tensor,
    vars: &[(&Var, &str)],
    case: &str,
) -> Result<()> {
    assert_eq!(ours.dims(), theirs.dims(), "{case}: shape");
    let d = max_relative_difference(ours, theirs)?;
    assert!(d <= TOLERANCE, "{case}: output differs by {d}");
    let probe = uniform(rng, theirs.dims(), 1.0)?;
    let g_ours = (ours * &probe)?.sum_all()?.backward()?;
    let g_theirs = (theirs * &probe)?.sum_all()?.backward()?;
    for (var, what) in vars {
        match (g_ours.get(var), g_theirs.get(var)) {
            (Some(a), Some(b)) => {
                let d = max_relative_difference(a, b)?;
                assert!(d <= TOLERANCE, "{case}: {what} gradient differs by {d}");
            }
            (None, None) => {}
            (a, b) => panic!(
                "{case}: {what} gradient from ours: {}, from the reference: {}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
    Ok(())
}

/// One convolution case: input (n, c, h, w), c_out, square kernel k, stride, padding,
/// dilation.
#[derive(Debug, Clone, Copy)]
struct ConvCase {
    input: (usize, usize, usize, usize),
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

const fn case(
    input: (usize, usize, usize, usize),
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> ConvCase {
    ConvCase {
        input,
        c_out,
        k,
        stride,
        padding,
        dilation,
    }
}

/// Shapes of the zoo (seed-cnn's and cnn's layers, a ResNet 1×1 stride-2 shortcut) and edge
/// cases: a 1×1 stride-1 kernel (no im2col: the image is its own column matrix), one image, a
/// batch that does not split evenly into the reduction chunks, odd maps (the pool drops the
/// last row/column), padding wider than the kernel (rows entirely in the padding), strides
/// with dilation, a kernel as large as the input. The loop below varies strided input, input
/// gradient and bias with the index: every case with index ≢ 0 (mod 3) tracks the input.
const CASES: &[ConvCase] = &[
    case((4, 1, 28, 28), 32, 3, 1, 0, 1),
    case((3, 32, 14, 14), 64, 3, 1, 0, 1),
    case((5, 8, 8, 8), 16, 1, 2, 0, 1),
    case((1, 3, 7, 9), 5, 3, 1, 1, 1),
    case((2, 6, 9, 9), 4, 1, 1, 0, 1),
    case((17, 2, 6, 5), 3, 2, 1, 0, 1),
    case((3, 2, 5, 6), 4, 3, 2, 4, 1),
    case((2, 3, 13, 11), 2, 3, 3, 2, 2),
    case((2, 4, 9, 10), 3, 5, 1, 2, 1),
    case((2, 2, 4, 4), 3, 4, 1, 0, 1),
    // "Same" padding at stride 1 (im2col copies whole shifted planes) on maps down to 1×1,
    // where some taps read nothing but padding.
    case((3, 2, 1, 1), 4, 3, 1, 1, 1),
    case((2, 3, 2, 3), 5, 3, 1, 1, 1),
    case((2, 3, 1, 4), 3, 5, 1, 2, 1),
    case((2, 2, 2, 2), 3, 5, 1, 2, 1),
];

struct ConvOperands {
    /// The input's storage; the op sees `input`, which may be a strided view of it.
    base: Var,
    input: Tensor,
    weight: Var,
    bias: Option<Var>,
}

impl ConvOperands {
    fn new(
        rng: &mut ExpRng,
        c: &ConvCase,
        strided: bool,
        track_input: bool,
        bias: bool,
    ) -> Result<Self> {
        let (n, ci, h, w) = c.input;
        // A strided input: the transpose of a (n, c, w, h) tensor.
        let base = if strided {
            Var::from_tensor(&uniform(rng, &[n, ci, w, h], 1.0)?)?
        } else {
            Var::from_tensor(&uniform(rng, &[n, ci, h, w], 1.0)?)?
        };
        let input = if strided {
            base.as_tensor().transpose(2, 3)?
        } else {
            base.as_tensor().clone()
        };
        let input = if track_input { input } else { input.detach() };
        let weight = Var::from_tensor(&uniform(rng, &[c.c_out, ci, c.k, c.k], 0.5)?)?;
        let bias = if bias {
            Some(Var::from_tensor(&uniform(rng, &[c.c_out], 0.5)?)?)
        } else {
            None
        };
        Ok(ConvOperands {
            base,
            input,
            weight,
            bias,
        })
    }

    fn layer(&self, c: &ConvCase) -> Conv2d {
        Conv2d::new(
            self.weight.as_tensor().clone(),
            self.bias.as_ref().map(|b| b.as_tensor().clone()),
            Conv2dConfig {
                padding: c.padding,
                stride: c.stride,
                dilation: c.dilation,
                groups: 1,
                cudnn_fwd_algo: None,
            },
        )
    }

    fn reference(&self, c: &ConvCase, epilogue: Epilogue) -> Result<Tensor> {
        let mut y = self.convolution_reference(c)?;
        if epilogue.relu {
            y = relu_reference(&y)?;
        }
        if epilogue.max_pool {
            y = max_pool_2x2(&y)?;
        }
        Ok(y)
    }

    /// candle's convolution plus the bias.
    fn convolution_reference(&self, c: &ConvCase) -> Result<Tensor> {
        // candle 0.11.1's conv2d backward gets the input gradient's shape wrong for some
        // strided, padded cases; a stride-1 convolution sampled every `stride` pixels is the
        // same function, with a gradient candle computes correctly.
        let mut y = self
            .input
            .conv2d(self.weight.as_tensor(), c.padding, 1, c.dilation, 1)?;
        if c.stride > 1 {
            for dim in [2, 3] {
                let kept: Vec<u32> = (0..y.dim(dim)?)
                    .step_by(c.stride)
                    .map(|i| i as u32)
                    .collect();
                let kept = Tensor::new(kept.as_slice(), &Device::Cpu)?;
                y = y.index_select(&kept, dim)?;
            }
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.as_tensor().reshape((1, c.c_out, 1, 1))?)?;
        }
        Ok(y)
    }

    fn vars(&self) -> Vec<(&Var, &'static str)> {
        let mut vars = vec![(&self.base, "input"), (&self.weight, "kernel")];
        if let Some(b) = &self.bias {
            vars.push((b, "bias"));
        }
        vars
    }
}

fn output_size(len: usize, c: &ConvCase) -> usize {
    (len + 2 * c.padding - c.dilation * (c.k - 1) - 1) / c.stride + 1
}

#[test]
fn conv_matches_candle_forward_and_backward() -> Result<()> {
    let mut rng = ExpRng::new(11, Purpose::Init);
    let mut checked = 0;
    for (i, c) in CASES.iter().enumerate() {
        let pool_fits = output_size(c.input.2, c) >= 2 && output_size(c.input.3, c) >= 2;
        for (relu, max_pool) in [(false, false), (true, false), (true, true), (false, true)] {
            if max_pool && !pool_fits {
                continue;
            }
            let epilogue = Epilogue { relu, max_pool };
            // Vary the rest with the case: strided input, tracked input, bias.
            let strided = i % 2 == 1;
            let track_input = i % 3 != 0;
            let bias = i % 4 != 3;
            let ops = ConvOperands::new(&mut rng, c, strided, track_input, bias)?;
            let ours = conv2d(&ops.layer(c), &ops.input, epilogue, &NAMES)?;
            let theirs = ops.reference(c, epilogue)?;
            let label = format!("{c:?} {epilogue:?} strided={strided} bias={bias}");
            assert_same(&mut rng, &ours, &theirs, &ops.vars(), &label)?;
            checked += 1;
        }
    }
    assert!(checked >= 35, "{checked} cases");
    Ok(())
}

#[test]
fn conv_refuses_a_pool_on_a_map_smaller_than_its_window() -> Result<()> {
    let mut rng = ExpRng::new(12, Purpose::Init);
    let c = case((1, 1, 3, 3), 2, 3, 1, 0, 1);
    let ops = ConvOperands::new(&mut rng, &c, false, true, true)?;
    let err = conv2d(
        &ops.layer(&c),
        &ops.input,
        Epilogue {
            relu: true,
            max_pool: true,
        },
        &NAMES,
    )
    .expect_err("a 1×1 map cannot be pooled");
    assert!(err.to_string().contains("2×2"), "{err}");
    Ok(())
}

/// Central differences of `loss` at each of a few coordinates of `var` against its gradient.
pub(super) fn assert_finite_differences(
    var: &Var,
    coordinates: &[usize],
    loss: &dyn Fn() -> Result<Tensor>,
    what: &str,
) -> Result<()> {
    let grads = loss()?.backward()?;
    let analytic = grads
        .get(var)
        .expect("a gradient")
        .flatten_all()?
        .to_vec1::<f32>()?;
    let original = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let shape = var.as_tensor().shape().clone();
    let eps = 1e-2f32;
    for &i in coordinates {
        let at = |d: f32| -> Result<f32> {
            let mut v = original.clone();
            v[i] += d;
            var.set(&Tensor::from_vec(v, &shape, &Device::Cpu)?)?;
            loss()?.to_scalar::<f32>()
        };
        let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
        var.set(&Tensor::from_vec(original.clone(), &shape, &Device::Cpu)?)?;
        let a = analytic[i];
        assert!(
            (numeric - a).abs() <= 2e-2 * a.abs().max(1.0),
            "{what}[{i}]: finite difference {numeric}, backward {a}"
        );
    }
    Ok(())
}

#[test]
fn conv_gradients_match_finite_differences() -> Result<()> {
    let mut rng = ExpRng::new(13, Purpose::Init);
    let c = case((2, 3, 7, 6), 4, 3, 1, 1, 1);
    let ops = ConvOperands::new(&mut rng, &c, false, true, true)?;
    let probe = uniform(&mut rng, &[2, 4, 3, 3], 1.0)?;
    let layer = || ops.layer(&c);
    let epilogue = Epilogue {
        relu: true,
        max_pool: true,
    };
    let loss = || (conv2d(&layer(), &ops.input, epilogue, &NAMES)? * &probe)?.sum_all();
    assert_finite_differences(&ops.weight, &[0, 17, 53, 107], &loss, "kernel")?;
    if let Some(b) = &ops.bias {
        assert_finite_differences(b, &[0, 1, 2, 3], &loss, "bias")?;
    }
    assert_finite_differences(&ops.base, &[0, 40, 100, 251], &loss, "input")?;
    Ok(())
}

/// Forward and backward of `f` in a rayon pool of each size: every run's output and
/// gradients bit-identical.
pub(super) fn assert_thread_count_invariant(
    vars: &[&Var],
    f: &(dyn Fn() -> Result<Tensor> + Sync),
) -> Result<()> {
    let mut runs: Vec<Vec<Vec<f32>>> = Vec::new();
    for threads in [1, 2, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool");
        let run = pool.install(|| -> Result<Vec<Vec<f32>>> {
            let y = f()?;
            let grads = y.sqr()?.sum_all()?.backward()?;
            let mut values = vec![y.flatten_all()?.to_vec1::<f32>()?];
            for v in vars {
                values.push(
                    grads
                        .get(v)
                        .expect("gradient")
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                );
            }
            Ok(values)
        })?;
        if let Some(first) = runs.first() {
            assert!(first == &run, "{threads} threads differ from 1");
        }
        runs.push(run);
    }
    Ok(())
}

#[test]
fn conv_results_do_not_depend_on_the_thread_count() -> Result<()> {
    let mut rng = ExpRng::new(14, Purpose::Init);
    let c = case((37, 8, 12, 12), 16, 3, 1, 0, 1);
    let ops = ConvOperands::new(&mut rng, &c, false, true, true)?;
    let bias = ops.bias.as_ref().expect("bias");
    assert_thread_count_invariant(&[&ops.base, &ops.weight, bias], &|| {
        conv2d(
            &ops.layer(&c),
            &ops.input,
            Epilogue {
                relu: true,
                max_pool: true,
            },
            &NAMES,
        )
    })
}

struct DenseOperands {
    input: Var,
    weight: Var,
    bias: Option<Var>,
}

impl DenseOperands {
    fn new(rng: &mut ExpRng, n: usize, inputs: usize, outputs: usize, bias: bool) -> Result<Self> {
        Ok(DenseOperands {
            input: Var::from_tensor(&uniform(rng, &[n, inputs], 1.0)?)?,
            weight: Var::from_tensor(&uniform(rng, &[outputs, inputs], 0.5)?)?,
            bias: if bias {
                Some(Var::from_tensor(&uniform(rng, &[outputs], 0.5)?)?)
            } else {
                None
            },
        })
    }

    fn layer(&self) -> Linear {
        Linear::new(
            self.weight.as_tensor().clone(),
            self.bias.as_ref().map(|b| b.as_tensor().clone()),
        )
    }
}

#[test]
fn linear_matches_candle_forward_and_backward() -> Result<()> {
    let mut rng = ExpRng::new(15, Purpose::Init);
    let shapes = [
        (64, 5408, 10),
        (64, 9216, 128),
        (1, 7, 3),
        (5, 1, 4),
        (33, 20, 1),
        (3, 4, 5),
    ];
    for (i, &(n, inputs, outputs)) in shapes.iter().enumerate() {
        for relu in [false, true] {
            let bias = i % 3 != 2;
            let track_input = i % 2 == 0;
            let ops = DenseOperands::new(&mut rng, n, inputs, outputs, bias)?;
            let x = if track_input {
                ops.input.as_tensor().clone()
            } else {
                ops.input.as_tensor().detach()
            };
            let ours = linear(&ops.layer(), &x, relu, &DENSE)?;
            let mut theirs = x.matmul(&ops.weight.as_tensor().t()?)?;
            if let Some(b) = &ops.bias {
                theirs = theirs.broadcast_add(b.as_tensor())?;
            }
            if relu {
                theirs = relu_reference(&theirs)?;
            }
            let mut vars = vec![(&ops.input, "input"), (&ops.weight, "weight")];
            if let Some(b) = &ops.bias {
                vars.push((b, "bias"));
            }
            let label = format!("linear {n}×{inputs}→{outputs} relu={relu} bias={bias}");
            assert_same(&mut rng, &ours, &theirs, &vars, &label)?;
        }
    }
    Ok(())
}

#[test]
fn linear_gradients_match_finite_differences_and_thread_counts() -> Result<()> {
    let mut rng = ExpRng::new(16, Purpose::Init);
    let ops = DenseOperands::new(&mut rng, 6, 9, 5, true)?;
    let probe = uniform(&mut rng, &[6, 5], 1.0)?;
    let loss = || (linear(&ops.layer(), ops.input.as_tensor(), true, &DENSE)? * &probe)?.sum_all();
    assert_finite_differences(&ops.weight, &[0, 11, 44], &loss, "weight")?;
    assert_finite_differences(&ops.input, &[3, 30, 53], &loss, "input")?;
    let bias = ops.bias.as_ref().expect("bias");
    assert_finite_differences(bias, &[0, 4], &loss, "bias")?;
    let big = DenseOperands::new(&mut rng, 70, 300, 130, true)?;
    let bias = big.bias.as_ref().expect("bias");
    assert_thread_count_invariant(&[&big.input, &big.weight, bias], &|| {
        linear(&big.layer(), big.input.as_tensor(), true, &DENSE)
    })
}

#[test]
fn dropout_uses_the_stream_and_masks_its_gradient() -> Result<()> {
    let mut rng = ExpRng::new(17, Purpose::Init);
    let x = Var::from_tensor(&uniform(&mut rng, &[8, 50], 1.0)?)?;
    let ours = super::dropout::dropout(x.as_tensor(), 0.25, &mut ExpRng::new(3, Purpose::Dropout))?;
    let mask = ExpRng::new(3, Purpose::Dropout).dropout_mask(400, 0.25);
    let mask = Tensor::from_vec(mask, (8, 50), &Device::Cpu)?;
    let theirs = x.as_tensor().mul(&mask)?;
    assert_eq!(
        ours.flatten_all()?.to_vec1::<f32>()?,
        theirs.flatten_all()?.to_vec1::<f32>()?
    );
    assert_same(&mut rng, &ours, &theirs, &[(&x, "input")], "dropout")
}

#[test]
fn conv_ties_zeros_and_nan_follow_pytorch() -> Result<()> {
    let mut rng = ExpRng::new(18, Purpose::Init);
    let c = case((2, 2, 6, 7), 3, 3, 1, 0, 1);
    // A zero kernel: every output is its channel's bias, so every window ties. A positive
    // bias sends each window's gradient to its first element; a zero bias puts every output
    // at exactly 0, where the ReLU passes no gradient (candle's `relu` would).
    for (bias, epilogue) in [
        (
            0.5,
            Epilogue {
                relu: false,
                max_pool: true,
            },
        ),
        (
            0.5,
            Epilogue {
                relu: true,
                max_pool: true,
            },
        ),
        (
            0.0,
            Epilogue {
                relu: true,
                max_pool: true,
            },
        ),
        (
            0.0,
            Epilogue {
                relu: true,
                max_pool: false,
            },
        ),
    ] {
        let ops = ConvOperands::new(&mut rng, &c, false, true, true)?;
        ops.weight.set(&ops.weight.as_tensor().zeros_like()?)?;
        let b = ops.bias.as_ref().expect("bias");
        b.set(&Tensor::full(bias as f32, c.c_out, &Device::Cpu)?)?;
        let ours = conv2d(&ops.layer(&c), &ops.input, epilogue, &NAMES)?;
        let theirs = ops.reference(&c, epilogue)?;
        assert_same(
            &mut rng,
            &ours,
            &theirs,
            &ops.vars(),
            &format!("ties {bias} {epilogue:?}"),
        )?;
    }
    // A NaN or an infinity in the input: the outputs whose windows see it match the
    // reference's (the pool keeps a NaN maximum, as PyTorch's; the ReLU keeps NaN).
    for (poison, expected_nan) in [(f32::NAN, 12), (f32::INFINITY, 0)] {
        let ops = ConvOperands::new(&mut rng, &c, false, false, true)?;
        let mut x = ops.input.flatten_all()?.to_vec1::<f32>()?;
        x[3 * 7 + 3] = poison; // image 0, channel 0, row 3, column 3
        let x = Tensor::from_vec(x, (2, 2, 6, 7), &Device::Cpu)?;
        let epilogue = Epilogue {
            relu: true,
            max_pool: true,
        };
        let ours = conv2d(&ops.layer(&c), &x, epilogue, &NAMES)?;
        let poisoned = ConvOperands { input: x, ..ops };
        // The ReLU's values: `x · (x > 0)` keeps NaN but turns −∞ into NaN; candle's `relu`
        // maps −∞ to 0 but NaN to 0 too. PyTorch's keeps NaN and maps −∞ to 0.
        let z = poisoned.convolution_reference(&c)?;
        let relu = if poison.is_nan() {
            relu_reference(&z)?
        } else {
            z.relu()?
        };
        let theirs = max_pool_2x2(&relu)?;
        let (ours, theirs) = (
            ours.flatten_all()?.to_vec1::<f32>()?,
            theirs.flatten_all()?.to_vec1::<f32>()?,
        );
        // Every output channel sees the poisoned pixel in all four 2×2 windows of image 0.
        assert_eq!(
            ours.iter().filter(|v| v.is_nan()).count(),
            expected_nan,
            "{poison}"
        );
        for (a, b) in ours.iter().zip(&theirs) {
            let same = (a.is_nan() && b.is_nan())
                || a == b
                || (a - b).abs() <= TOLERANCE * b.abs().max(1.0);
            assert!(same, "{poison}: {a} vs the reference's {b}");
        }
    }
    Ok(())
}

/// A batch-norm layer over `c` features with random γ, β and running statistics (variance
/// positive), its γ and β returned as variables.
fn batch_norm_layer(rng: &mut ExpRng, c: usize) -> Result<(BatchNorm, Var, Var)> {
    let gamma = Var::from_tensor(&uniform(rng, &[c], 2.0)?)?;
    let beta = Var::from_tensor(&uniform(rng, &[c], 1.0)?)?;
    let mean = uniform(rng, &[c], 0.5)?;
    let var = (uniform(rng, &[c], 0.5)? + 1.0)?;
    let layer = BatchNorm::new_with_momentum(
        c,
        mean,
        var,
        gamma.as_tensor().clone(),
        beta.as_tensor().clone(),
        1e-5,
        0.1,
    )?;
    Ok((layer, gamma, beta))
}

/// A fresh layer with the same values (its own running statistics).
fn copy_layer(layer: &BatchNorm) -> Result<BatchNorm> {
    let (gamma, beta) = layer.weight_and_bias().expect("affine");
    BatchNorm::new_with_momentum(
        gamma.dim(0)?,
        layer.running_mean().copy()?,
        layer.running_var().copy()?,
        gamma.clone(),
        beta.clone(),
        layer.eps(),
        layer.momentum(),
    )
}

/// Batch norm in training mode, alone and with the residual add and the ReLU fused in: the
/// output, the gradients of input, γ, β and the skip input, and the running statistics are
/// candle-nn's `BatchNorm::forward_t` (followed by `+ skip` and PyTorch's ReLU) over odd
/// sizes, one image, a 1×1 map and a strided input.
#[test]
fn batch_norm_matches_candle_forward_backward_and_running_statistics() -> Result<()> {
    let mut rng = ExpRng::new(21, Purpose::Init);
    for (i, &(n, c, h, w)) in [
        (4, 3, 5, 5),
        (1, 2, 3, 4),
        (7, 5, 1, 1),
        (2, 4, 7, 3),
        (3, 16, 9, 9),
    ]
    .iter()
    .enumerate()
    {
        for (skip, relu) in [(false, false), (false, true), (true, true), (true, false)] {
            let (layer, gamma, beta) = batch_norm_layer(&mut rng, c)?;
            let reference = copy_layer(&layer)?;
            // A strided input every other case: the transpose of an (n, c, w, h) tensor.
            let base = Var::from_tensor(&uniform(&mut rng, &[n, c, w, h], 3.0)?)?;
            let x = if i % 2 == 1 {
                base.as_tensor().transpose(2, 3)?
            } else {
                base.as_tensor().reshape((n, c, h, w))?
            };
            let skip_var = Var::from_tensor(&uniform(&mut rng, &[n, c, h, w], 1.0)?)?;
            let skip_input = skip.then(|| skip_var.as_tensor());
            let ours = super::batch_norm::batch_norm_train(&layer, &x, skip_input, relu)?;
            let mut theirs = candle_core::ModuleT::forward_t(&reference, &x, true)?;
            if let Some(s) = skip_input {
                theirs = (theirs + s)?;
            }
            if relu {
                theirs = relu_reference(&theirs)?;
            }
            let label = format!("({n}, {c}, {h}, {w}) skip={skip} relu={relu}");
            let mut vars = vec![(&base, "input"), (&gamma, "gamma"), (&beta, "beta")];
            if skip {
                vars.push((&skip_var, "skip"));
            }
            assert_same(&mut rng, &ours, &theirs, &vars, &label)?;
            for (a, b) in [
                (layer.running_mean(), reference.running_mean()),
                (layer.running_var(), reference.running_var()),
            ] {
                let d = max_relative_difference(a, b)?;
                assert!(d <= 1e-6, "{label}: running statistics differ by {d}");
            }
        }
    }
    Ok(())
}

/// PyTorch's `BatchNorm2d` in training mode by hand: one channel holding 1, 2, 3, 4 has mean
/// 2.5 and biased variance 1.25, which normalise; the running mean moves from 0 to 0.25 and the
/// running variance from 1 to 0.9 + 0.1 · 5/3 (the unbiased variance), momentum 0.1.
#[test]
fn batch_norm_follows_pytorchs_formulas() -> Result<()> {
    let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 1, 1, 2), &Device::Cpu)?;
    let layer = BatchNorm::new_with_momentum(
        1,
        Tensor::zeros(1, DType::F32, &Device::Cpu)?,
        Tensor::ones(1, DType::F32, &Device::Cpu)?,
        Tensor::new(&[2f32], &Device::Cpu)?,
        Tensor::new(&[0.5f32], &Device::Cpu)?,
        1e-5,
        0.1,
    )?;
    let y = super::batch_norm::batch_norm_train(&layer, &x, None, false)?;
    let inv_std = 1.0 / (1.25f64 + 1e-5).sqrt();
    let expected: Vec<f32> = [1., 2., 3., 4.]
        .iter()
        .map(|v: &f64| (2.0 * (v - 2.5) * inv_std + 0.5) as f32)
        .collect();
    let got = y.flatten_all()?.to_vec1::<f32>()?;
    for (a, b) in got.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-6, "{got:?} vs {expected:?}");
    }
    let mean = layer.running_mean().to_vec1::<f32>()?[0];
    let var = layer.running_var().to_vec1::<f32>()?[0];
    assert!((mean - 0.25).abs() <= 1e-7, "running mean {mean}");
    assert!(
        (var - (0.9 + 0.1 * 5.0 / 3.0) as f32).abs() <= 1e-6,
        "running var {var}"
    );
    Ok(())
}

/// One value per channel has no unbiased variance: refused, as PyTorch does.
#[test]
fn batch_norm_refuses_one_value_per_channel() -> Result<()> {
    let mut rng = ExpRng::new(22, Purpose::Init);
    let (layer, _, _) = batch_norm_layer(&mut rng, 3)?;
    let x = uniform(&mut rng, &[1, 3, 1, 1], 1.0)?;
    let err = super::batch_norm::batch_norm_train(&layer, &x, None, true)
        .expect_err("one value per channel");
    assert!(
        err.to_string().contains("more than one value per channel"),
        "{err}"
    );
    Ok(())
}

#[test]
fn batch_norm_gradients_match_finite_differences() -> Result<()> {
    let mut rng = ExpRng::new(23, Purpose::Init);
    let (layer, gamma, beta) = batch_norm_layer(&mut rng, 3)?;
    let x = Var::from_tensor(&uniform(&mut rng, &[2, 3, 4, 5], 2.0)?)?;
    let skip = Var::from_tensor(&uniform(&mut rng, &[2, 3, 4, 5], 1.0)?)?;
    let probe = uniform(&mut rng, &[2, 3, 4, 5], 1.0)?;
    let loss = || {
        let y = super::batch_norm::batch_norm_train(
            &layer,
            x.as_tensor(),
            Some(skip.as_tensor()),
            true,
        )?;
        (y * &probe)?.sum_all()
    };
    assert_finite_differences(&x, &[0, 17, 60, 119], &loss, "input")?;
    assert_finite_differences(&gamma, &[0, 1, 2], &loss, "gamma")?;
    assert_finite_differences(&beta, &[0, 1, 2], &loss, "beta")?;
    assert_finite_differences(&skip, &[3, 44, 101], &loss, "skip")?;
    Ok(())
}

#[test]
fn batch_norm_results_do_not_depend_on_the_thread_count() -> Result<()> {
    let mut rng = ExpRng::new(24, Purpose::Init);
    let (layer, gamma, beta) = batch_norm_layer(&mut rng, 24)?;
    let x = Var::from_tensor(&uniform(&mut rng, &[37, 24, 6, 7], 2.0)?)?;
    let skip = Var::from_tensor(&uniform(&mut rng, &[37, 24, 6, 7], 1.0)?)?;
    assert_thread_count_invariant(&[&x, &gamma, &beta, &skip], &|| {
        super::batch_norm::batch_norm_train(&layer, x.as_tensor(), Some(skip.as_tensor()), true)
    })
}

/// Grouped GEMMs (maps too small for one image per GEMM: several images side by side, the
/// last group short) give the same bits for any thread count.
#[test]
fn grouped_conv_results_do_not_depend_on_the_thread_count() -> Result<()> {
    let mut rng = ExpRng::new(25, Purpose::Init);
    let c = case((37, 8, 5, 5), 16, 3, 1, 1, 1);
    let ops = ConvOperands::new(&mut rng, &c, false, true, false)?;
    assert_thread_count_invariant(&[&ops.base, &ops.weight], &|| {
        conv2d(&ops.layer(&c), &ops.input, Epilogue::NONE, &NAMES)
    })
}
