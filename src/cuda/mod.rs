//! Launchers for exp's own CUDA kernels (kernels.cu, compiled to PTX by build.rs). Only in
//! builds with the `cuda` feature; the ops that use them fall back to candle ops or the CPU
//! kernels elsewhere.

pub mod cudnn;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/exp_kernels.ptx"));
const MODULE: &str = "exp_kernels";

/// Grid-stride kernels: enough blocks to fill the GPU, never more than the work needs.
fn launch_config(elements: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    let blocks = elements.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn contiguous_view<'a, T: DeviceRepr>(
    slice: &'a CudaSlice<T>,
    layout: &Layout,
) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => candle_core::bail!("exp CUDA kernel: an operand is not contiguous"),
    }
}

/// 2×2 max-pool forward of a contiguous NCHW tensor.
pub fn max_pool_2x2_forward(
    storage: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let (n, c, h, w) = layout.shape().dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    let out_len = n * c * oh * ow;
    let device = storage.device().clone();
    let planes = (n * c) as u32;
    let (h32, w32) = (h as u32, w as u32);
    macro_rules! pool {
        ($slice:expr, $t:ty, $name:literal, $variant:ident) => {{
            let x = contiguous_view($slice, layout)?;
            // SAFETY: every element is written by the kernel below.
            let y = unsafe { device.alloc::<$t>(out_len)? };
            let func = device.get_or_load_custom_func(
                concat!("exp_maxpool2x2_fwd_", $name),
                MODULE,
                PTX,
            )?;
            let mut b = func.builder();
            b.arg(&x);
            b.arg(&y);
            candle_core::builder_arg!(b, planes, h32, w32);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { b.launch(launch_config(out_len)) }.w()?;
            S::$variant(y)
        }};
    }
    let slice = match &storage.slice {
        S::F32(s) => pool!(s, f32, "f32", F32),
        S::F16(s) => pool!(s, half::f16, "f16", F16),
        S::BF16(s) => pool!(s, half::bf16, "bf16", BF16),
        _ => candle_core::bail!("max_pool_2x2: unsupported dtype {:?}", storage.dtype()),
    };
    Ok((CudaStorage { slice, device }, Shape::from((n, c, oh, ow))))
}

/// 2×2 max-pool backward: the gradient of each window goes to its first maximum.
pub fn max_pool_2x2_backward(
    x: &CudaStorage,
    x_layout: &Layout,
    grad: &CudaStorage,
    grad_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let (n, c, h, w) = x_layout.shape().dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    if grad_layout.shape().dims() != [n, c, oh, ow] {
        candle_core::bail!(
            "max_pool_2x2 backward: gradient shape {:?} for input {:?}",
            grad_layout.shape(),
            x_layout.shape()
        )
    }
    let device = x.device().clone();
    let len = n * c * h * w;
    let windows = n * c * oh * ow;
    let planes = (n * c) as u32;
    let (h32, w32) = (h as u32, w as u32);
    let odd = h % 2 == 1 || w % 2 == 1;
    macro_rules! pool {
        ($xs:expr, $gs:expr, $t:ty, $name:literal, $variant:ident) => {{
            let xv = contiguous_view($xs, x_layout)?;
            let gv = contiguous_view($gs, grad_layout)?;
            // The kernel writes every element of every window; an odd last row or column
            // belongs to no window and must read as zero.
            let dx = if odd {
                device.alloc_zeros::<$t>(len)?
            } else {
                // SAFETY: every element is written by the kernel below.
                unsafe { device.alloc::<$t>(len)? }
            };
            let func = device.get_or_load_custom_func(
                concat!("exp_maxpool2x2_bwd_", $name),
                MODULE,
                PTX,
            )?;
            let mut b = func.builder();
            b.arg(&xv);
            b.arg(&gv);
            b.arg(&dx);
            candle_core::builder_arg!(b, planes, h32, w32);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { b.launch(launch_config(windows)) }.w()?;
            S::$variant(dx)
        }};
    }
    let slice = match (&x.slice, &grad.slice) {
        (S::F32(xs), S::F32(gs)) => pool!(xs, gs, f32, "f32", F32),
        (S::F16(xs), S::F16(gs)) => pool!(xs, gs, half::f16, "f16", F16),
        (S::BF16(xs), S::BF16(gs)) => pool!(xs, gs, half::bf16, "bf16", BF16),
        _ => candle_core::bail!(
            "max_pool_2x2 backward: unsupported dtypes {:?}, {:?}",
            x.dtype(),
            grad.dtype()
        ),
    };
    Ok((CudaStorage { slice, device }, x_layout.shape().clone()))
}

/// First and second moments of one parameter, on the GPU.
pub struct AdamMoments {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
}

/// One fused Adam/AdamW update of an f32 parameter in place (see kernels.cu for the rule).
/// `moments` is None before the first step and is allocated here.
pub fn adam_step(
    param: &mut CudaStorage,
    param_layout: &Layout,
    grad: &CudaStorage,
    grad_layout: &Layout,
    moments: &mut Option<AdamMoments>,
    h: &crate::kernel_args::AdamHyper,
) -> Result<()> {
    let n = param_layout.shape().elem_count();
    if param_layout.contiguous_offsets() != Some((0, n)) {
        candle_core::bail!("fused Adam: the parameter is not a contiguous tensor")
    }
    let device = param.device().clone();
    let g = contiguous_view(grad.as_cuda_slice::<f32>()?, grad_layout)?;
    let first = moments.is_none() as i32;
    let state = match moments {
        Some(state) => state,
        None => moments.insert(AdamMoments {
            // SAFETY: the first step writes them before reading (`first`).
            m: unsafe { device.alloc::<f32>(n)? },
            v: unsafe { device.alloc::<f32>(n)? },
        }),
    };
    let p = param.as_cuda_slice_mut::<f32>()?;
    let func = device.get_or_load_custom_func("exp_adam_f32", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(p);
    b.arg(&g);
    b.arg(&mut state.m);
    b.arg(&mut state.v);
    candle_core::builder_arg!(
        b,
        n as u64,
        h.beta1,
        h.one_minus_beta1,
        h.beta2,
        h.one_minus_beta2,
        h.step_size,
        h.inv_sqrt_bias2,
        h.eps,
        h.l2,
        h.decay_factor,
        first
    );
    // SAFETY: argument types and count match the kernel's signature.
    unsafe { b.launch(launch_config(n)) }.w()?;
    Ok(())
}

/// im2col (`col2im == false`) or its adjoint col2im of a contiguous tensor, per `geometry`;
/// `ld` is the column matrix's row length (taps, or taps + 1 for a trailing column of ones).
pub fn im2col(
    storage: &CudaStorage,
    layout: &Layout,
    geometry: &crate::kernel_args::ConvGeometry,
    ld: usize,
    col2im: bool,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let g = geometry;
    let rows = g.n * g.oh * g.ow;
    let (out_shape, out_len) = if col2im {
        (Shape::from((g.n, g.c, g.h, g.w)), g.n * g.c * g.h * g.w)
    } else {
        (Shape::from((rows, ld)), rows * ld)
    };
    if rows * ld > u32::MAX as usize || g.n * g.c * g.h * g.w > u32::MAX as usize {
        candle_core::bail!("im2col: the convolution is too large for 32-bit indices")
    }
    let args: [u32; 12] = [
        g.n, g.c, g.h, g.w, g.kh, g.kw, g.oh, g.ow, g.stride, g.padding, g.dilation, ld,
    ]
    .map(|v| v as u32);
    let device = storage.device().clone();
    macro_rules! launch {
        ($slice:expr, $t:ty, $name:literal, $variant:ident) => {{
            let input = contiguous_view($slice, layout)?;
            // SAFETY: every element is written by the kernel below.
            let out = unsafe { device.alloc::<$t>(out_len)? };
            let name = if col2im {
                concat!("exp_col2im_", $name)
            } else {
                concat!("exp_im2col_", $name)
            };
            let func = device.get_or_load_custom_func(name, MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&input);
            b.arg(&out);
            for a in &args {
                b.arg(a);
            }
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { b.launch(launch_config(out_len)) }.w()?;
            S::$variant(out)
        }};
    }
    let slice = match &storage.slice {
        S::F32(s) => launch!(s, f32, "f32", F32),
        S::F16(s) => launch!(s, half::f16, "f16", F16),
        S::BF16(s) => launch!(s, half::bf16, "bf16", BF16),
        _ => candle_core::bail!("im2col: unsupported dtype {:?}", storage.dtype()),
    };
    Ok((CudaStorage { slice, device }, out_shape))
}

/// Direct convolution with fused bias (`wgrad == false`, operands x, weight, bias), or its
/// kernel-and-bias gradient `(c_out, c·kh·kw + 1)` (`wgrad == true`, operands x, grad).
pub fn conv_direct(
    operands: &[(&CudaStorage, &Layout)],
    geometry: &crate::kernel_args::ConvGeometry,
    c_out: usize,
    wgrad: bool,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let g = geometry;
    let taps = g.c * g.kh * g.kw;
    let (shape, len) = if wgrad {
        (Shape::from((c_out, taps + 1)), c_out * (taps + 1))
    } else {
        (
            Shape::from((g.n, c_out, g.oh, g.ow)),
            g.n * c_out * g.oh * g.ow,
        )
    };
    if g.n * c_out * g.oh * g.ow > u32::MAX as usize || g.n * g.c * g.h * g.w > u32::MAX as usize {
        candle_core::bail!("direct conv2d: the convolution is too large for 32-bit indices")
    }
    let args: [u32; 12] = [
        g.n, g.c, g.h, g.w, c_out, g.kh, g.kw, g.oh, g.ow, g.stride, g.padding, g.dilation,
    ]
    .map(|v| v as u32);
    let device = operands[0].0.device().clone();
    let config = if wgrad {
        // One 256-thread block per (output channel, tap), the reduction's fixed shape.
        LaunchConfig {
            grid_dim: (len as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    } else {
        launch_config(len)
    };
    macro_rules! launch {
        ($t:ty, $variant:ident, $name:literal) => {{
            let mut views = Vec::with_capacity(operands.len());
            for (storage, layout) in operands {
                let S::$variant(slice) = &storage.slice else {
                    candle_core::bail!("direct conv2d: operands of different dtypes")
                };
                views.push(contiguous_view(slice, layout)?);
            }
            // SAFETY: every element is written by the kernel below.
            let out = unsafe { device.alloc::<$t>(len)? };
            let name = if wgrad {
                concat!("exp_conv_direct_wgrad_", $name)
            } else {
                concat!("exp_conv_direct_fwd_", $name)
            };
            let func = device.get_or_load_custom_func(name, MODULE, PTX)?;
            let mut b = func.builder();
            for v in &views {
                b.arg(v);
            }
            b.arg(&out);
            for a in &args {
                b.arg(a);
            }
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { b.launch(config) }.w()?;
            S::$variant(out)
        }};
    }
    let slice = match &operands[0].0.slice {
        S::F32(_) => launch!(f32, F32, "f32"),
        S::F16(_) => launch!(half::f16, F16, "f16"),
        S::BF16(_) => launch!(half::bf16, BF16, "bf16"),
        _ => candle_core::bail!(
            "direct conv2d: unsupported dtype {:?}",
            operands[0].0.dtype()
        ),
    };
    Ok((CudaStorage { slice, device }, shape))
}

/// Inverted dropout of a contiguous tensor with the mask of `seed` (see kernels.cu): kept
/// elements scaled by `scale`, the others zero. Applied to a gradient with the same seed, it is
/// the backward pass.
pub fn dropout(
    storage: &CudaStorage,
    layout: &Layout,
    seed: u64,
    threshold: u32,
    scale: f32,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let n = layout.shape().elem_count();
    let device = storage.device().clone();
    macro_rules! launch {
        ($slice:expr, $t:ty, $name:literal, $variant:ident) => {{
            let x = contiguous_view($slice, layout)?;
            // SAFETY: every element is written by the kernel below.
            let y = unsafe { device.alloc::<$t>(n)? };
            let func =
                device.get_or_load_custom_func(concat!("exp_dropout_", $name), MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x);
            b.arg(&y);
            let n64 = n as u64;
            candle_core::builder_arg!(b, n64, seed, threshold, scale);
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { b.launch(launch_config(n)) }.w()?;
            S::$variant(y)
        }};
    }
    let slice = match &storage.slice {
        S::F32(s) => launch!(s, f32, "f32", F32),
        S::F16(s) => launch!(s, half::f16, "f16", F16),
        S::BF16(s) => launch!(s, half::bf16, "bf16", BF16),
        _ => candle_core::bail!("dropout: unsupported dtype {:?}", storage.dtype()),
    };
    Ok((CudaStorage { slice, device }, layout.shape().clone()))
}

/// Random crop with padding and flip of a contiguous (n, c, h, w) batch, one draw
/// `(dy, dx, mirrored)` per example in `params` (see kernels.cu); `fill` holds each channel's
/// padding value.
pub fn augment(
    x: (&CudaStorage, &Layout),
    fill: (&CudaStorage, &Layout),
    params: (&CudaStorage, &Layout),
    padding: usize,
) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let (n, c, h, w) = x.1.shape().dims4()?;
    let len = n * c * h * w;
    if params.1.shape().elem_count() != 3 * n || fill.1.shape().elem_count() != c {
        candle_core::bail!(
            "augment: {n} examples need {} draws and {c} fill values",
            3 * n
        )
    }
    let device = x.0.device().clone();
    let S::U32(p) = &params.0.slice else {
        candle_core::bail!("augment: the draws must be u32")
    };
    let p = contiguous_view(p, params.1)?;
    let dims = [n as u32, c as u32, h as u32, w as u32];
    let pad = padding as i32;
    macro_rules! launch {
        ($t:ty, $variant:ident, $name:literal) => {{
            let (S::$variant(xs), S::$variant(fs)) = (&x.0.slice, &fill.0.slice) else {
                candle_core::bail!("augment: the batch and the fill values differ in dtype")
            };
            let xv = contiguous_view(xs, x.1)?;
            let fv = contiguous_view(fs, fill.1)?;
            // SAFETY: every element is written by the kernel below.
            let y = unsafe { device.alloc::<$t>(len)? };
            let func =
                device.get_or_load_custom_func(concat!("exp_augment_", $name), MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&xv);
            b.arg(&fv);
            b.arg(&p);
            b.arg(&y);
            for d in &dims {
                b.arg(d);
            }
            b.arg(&pad);
            // SAFETY: argument types and count match the kernel's signature (the draws are
            // u32 holding non-negative ints).
            unsafe { b.launch(launch_config(len)) }.w()?;
            S::$variant(y)
        }};
    }
    let slice = match &x.0.slice {
        S::F32(_) => launch!(f32, F32, "f32"),
        S::F16(_) => launch!(half::f16, F16, "f16"),
        S::BF16(_) => launch!(half::bf16, BF16, "bf16"),
        _ => candle_core::bail!("augment: unsupported dtype {:?}", x.0.dtype()),
    };
    Ok((CudaStorage { slice, device }, x.1.shape().clone()))
}

/// The bias gradient of a convolution: a contiguous NCHW `dy` summed over n, h and w per
/// channel (see kernels.cu), in `dy`'s dtype.
pub fn bias_grad(dy: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
    use candle_core::cuda_backend::CudaStorageSlice as S;
    let (n, c, h, w) = layout.shape().dims4()?;
    let device = dy.device().clone();
    let args = [n as u32, c as u32, (h * w) as u32];
    let config = LaunchConfig {
        grid_dim: (c as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    macro_rules! launch {
        ($slice:expr, $t:ty, $name:literal, $variant:ident) => {{
            let x = contiguous_view($slice, layout)?;
            // SAFETY: every element is written by the kernel below.
            let db = unsafe { device.alloc::<$t>(c)? };
            let func =
                device.get_or_load_custom_func(concat!("exp_bias_grad_", $name), MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x);
            b.arg(&db);
            for a in &args {
                b.arg(a);
            }
            // SAFETY: argument types and count match the kernel's signature.
            unsafe { b.launch(config) }.w()?;
            S::$variant(db)
        }};
    }
    let slice = match &dy.slice {
        S::F32(s) => launch!(s, f32, "f32", F32),
        S::F16(s) => launch!(s, half::f16, "f16", F16),
        S::BF16(s) => launch!(s, half::bf16, "bf16", BF16),
        _ => candle_core::bail!("bias gradient: unsupported dtype {:?}", dy.dtype()),
    };
    Ok((CudaStorage { slice, device }, Shape::from(c)))
}

/// Updates a batch norm's running mean (`variance == false`) or running variance in place
/// from cuDNN's saved statistics `stats` = [mean; inverse std] (see kernels.cu); `count` is
/// the number of values each channel's statistics were taken over.
pub fn bn_running_update(
    running: &mut CudaStorage,
    running_layout: &Layout,
    stats: &CudaStorage,
    stats_layout: &Layout,
    args: &crate::kernel_args::RunningStats,
) -> Result<()> {
    let c = running_layout.shape().elem_count();
    if running_layout.contiguous_offsets() != Some((0, c))
        || stats_layout.shape().elem_count() != 2 * c
    {
        candle_core::bail!("batch norm running statistics: unexpected layouts")
    }
    let device = running.device().clone();
    let s = contiguous_view(stats.as_cuda_slice::<f32>()?, stats_layout)?;
    let r = running.as_cuda_slice_mut::<f32>()?;
    let func = device.get_or_load_custom_func("exp_bn_running_update", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(r);
    b.arg(&s);
    let (c32, which) = (c as u32, args.variance as i32);
    candle_core::builder_arg!(b, c32, args.momentum, args.unbias, args.eps, which);
    // SAFETY: argument types and count match the kernel's signature.
    unsafe { b.launch(launch_config(c)) }.w()?;
    Ok(())
}
