//! Convolution and batch norm on NVIDIA's cuDNN: the convolution's forward (with the bias add),
//! data gradient and filter gradient, and batch norm's training forward and backward, through
//! cudarc's bindings of cuDNN's (legacy) API. The convolution's bias gradient is exp's kernel
//! (`cuda::bias_grad`): cuDNN's refuses some dtypes.
//!
//! Why cuDNN and not exp's im2col + GEMM: im2col materialises a column matrix (170 MB for the
//! cnn's second layer at batch 256) and runs a plain FP32 GEMM over it, where cuDNN's implicit
//! GEMM reads the image in place and, where the precision allows, runs on tensor cores. The
//! choices made here, and why:
//! - **Algorithms**: cuDNN's heuristics (`cudnnGet…Algorithm_v7`) rank the algorithms for each
//!   shape, and the first *deterministic* one that needs at most [`MAX_WORKSPACE`] is kept for
//!   the process. The ranking and the algorithms are both deterministic, so a GPU run is
//!   reproducible: the same spec and seed give the same weights on the same GPU and cuDNN.
//!   `EXP_CUDNN_BENCHMARK=1` times every algorithm instead (`cudnnFind…`, PyTorch's
//!   `cudnn.benchmark = True`) and keeps the fastest deterministic one: timing noise can then
//!   pick another algorithm in another process, whose rounding differs (two runs of one seed on
//!   an H200 gave different weights that way).
//! - **Math**: f32 is exact FP32 (`CUDNN_FMA_MATH`: no TF32); `train.precision = "tf32"`
//!   ([`set_tf32`]) and the half precisions allow tensor cores. Half-precision operands
//!   accumulate in f32 (cuDNN's "pseudo half" configuration), as PyTorch does.
//! - The handle is per thread (cuDNN handles are not thread-safe) and bound to candle's stream
//!   of the device, so cuDNN's kernels are ordered with candle's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice as S};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};

use super::contiguous_view;
use crate::kernel_args::ConvGeometry;

/// The most scratch memory one convolution may use; algorithms needing more are skipped.
pub const MAX_WORKSPACE: usize = 1 << 30;

static TF32: AtomicBool = AtomicBool::new(false);

/// Allows TF32 tensor cores for f32 convolutions (cuDNN) and matrix products (cuBLAS, through
/// candle) from now on: `train.precision = "tf32"`. Off by default: f32 is exact FP32.
pub fn set_tf32(enabled: bool) {
    TF32.store(enabled, Ordering::Relaxed);
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(enabled);
}

/// Whether f32 work may run on TF32 tensor cores.
pub fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// The three convolution passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// `y = conv(x, w)`: operands x, w.
    Forward,
    /// `dx = conv_transposeᵀ(dy, w)`: operands dy, w.
    BackwardData,
    /// `dw = Σ x ⋆ dy`: operands x, dy.
    BackwardFilter,
}

fn cudnn_err(what: &str, e: result::CudnnError) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN {what}: {:?}", e.0))
}

fn check(what: &str, status: sys::cudnnStatus_t) -> Result<()> {
    status.result().map_err(|e| cudnn_err(what, e))
}

fn data_type(dtype: DType) -> Result<sys::cudnnDataType_t> {
    Ok(match dtype {
        DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        other => candle_core::bail!("cuDNN convolution: unsupported dtype {other:?}"),
    })
}

/// A cuDNN handle of this thread, bound to one device's stream.
struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate and dropped once.
        unsafe { sys::cudnnDestroy(self.0) };
    }
}

/// An algorithm of one of the three passes.
#[derive(Debug, Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    BackwardData(sys::cudnnConvolutionBwdDataAlgo_t),
    BackwardFilter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// What a `Find` chose for one shape: the algorithm, its math type and workspace.
#[derive(Debug, Clone, Copy)]
struct Choice {
    algo: Algo,
    math: sys::cudnnMathType_t,
    workspace: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ChoiceKey {
    device: candle_core::cuda_backend::DeviceId,
    pass: Pass,
    dtype: DType,
    tensor_ops: bool,
    shape: [usize; 11],
    c_out: usize,
}

thread_local! {
    static HANDLES: RefCell<HashMap<candle_core::cuda_backend::DeviceId, std::rc::Rc<Handle>>> =
        RefCell::new(HashMap::new());
    static CHOICES: RefCell<HashMap<ChoiceKey, Choice>> = RefCell::new(HashMap::new());
}

fn handle(device: &CudaDevice) -> Result<std::rc::Rc<Handle>> {
    // cuDNN acts on the thread's current context: bind this device's on every call (cheap),
    // so that two GPUs driven from one thread never mix.
    let stream = device.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(candle_core::Error::wrap)?;
    HANDLES.with(|handles| {
        if let Some(h) = handles.borrow().get(&device.id()) {
            return Ok(h.clone());
        }
        let raw = result::create_handle().map_err(|e| cudnn_err("create handle", e))?;
        let h = std::rc::Rc::new(Handle(raw));
        // SAFETY: a live handle and candle's stream of this device, which outlives it.
        unsafe { result::set_stream(raw, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(|e| cudnn_err("set stream", e))?;
        handles.borrow_mut().insert(device.id(), h.clone());
        Ok(h)
    })
}

/// The descriptors of one convolution: input x, filter w, output y, the convolution itself,
/// and the bias as a 1×C×1×1 tensor.
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    bias: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each was created by its create function below and is destroyed once; a
        // null one (creation failed part way) is skipped.
        unsafe {
            for t in [self.x, self.y, self.bias] {
                if !t.is_null() {
                    let _ = result::destroy_tensor_descriptor(t);
                }
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

impl Descriptors {
    fn new(
        g: &ConvGeometry,
        c_out: usize,
        dtype: DType,
        math: sys::cudnnMathType_t,
    ) -> Result<Self> {
        let dt = data_type(dtype)?;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let i = |v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| {
                candle_core::Error::Msg("cuDNN convolution: a dimension exceeds i32".into())
            })
        };
        let mut d = Descriptors {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            bias: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
        };
        let e = |what| move |err| cudnn_err(what, err);
        d.x = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        d.y = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        d.bias = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        d.w = result::create_filter_descriptor().map_err(e("filter descriptor"))?;
        d.conv = result::create_convolution_descriptor().map_err(e("convolution descriptor"))?;
        // SAFETY: freshly created descriptors.
        unsafe {
            result::set_tensor4d_descriptor(d.x, nchw, dt, [i(g.n)?, i(g.c)?, i(g.h)?, i(g.w)?])
                .map_err(e("input descriptor"))?;
            result::set_tensor4d_descriptor(
                d.y,
                nchw,
                dt,
                [i(g.n)?, i(c_out)?, i(g.oh)?, i(g.ow)?],
            )
            .map_err(e("output descriptor"))?;
            result::set_tensor4d_descriptor(d.bias, nchw, dt, [1, i(c_out)?, 1, 1])
                .map_err(e("bias descriptor"))?;
            result::set_filter4d_descriptor(
                d.w,
                dt,
                nchw,
                [i(c_out)?, i(g.c)?, i(g.kh)?, i(g.kw)?],
            )
            .map_err(e("filter descriptor"))?;
            let (p, s, dl) = (i(g.padding)?, i(g.stride)?, i(g.dilation)?);
            result::set_convolution2d_descriptor(
                d.conv,
                p,
                p,
                s,
                s,
                dl,
                dl,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                // Half operands accumulate in f32 (cuDNN's pseudo-half configuration).
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(e("convolution descriptor"))?;
            result::set_convolution_math_type(d.conv, math).map_err(e("math type"))?;
        }
        Ok(d)
    }
}

/// One `Find` result, whichever pass it came from.
struct Candidate {
    algo: Algo,
    status: sys::cudnnStatus_t,
    memory: usize,
    deterministic: bool,
    math: sys::cudnnMathType_t,
}

macro_rules! candidates {
    ($perf:expr, $n:expr, $variant:ident) => {
        $perf[..($n.max(0) as usize).min($perf.len())]
            .iter()
            .map(|p| Candidate {
                algo: Algo::$variant(p.algo),
                status: p.status,
                memory: p.memory,
                deterministic: p.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC,
                math: p.mathType,
            })
            .collect::<Vec<_>>()
    };
}

/// `EXP_CUDNN_BENCHMARK=1`: algorithms chosen by timing them (see the module docs).
pub fn benchmark_mode() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("EXP_CUDNN_BENCHMARK").is_ok_and(|v| v == "1"))
}

/// Ranks the algorithms of `pass` (cuDNN's heuristics, or timing them in benchmark mode) and
/// keeps the first deterministic one that fits [`MAX_WORKSPACE`] and honours exact FP32 when
/// `tensor_ops` is off.
fn find(
    h: &Handle,
    d: &Descriptors,
    pass: Pass,
    tensor_ops: bool,
    f32_data: bool,
) -> Result<Choice> {
    let timed = benchmark_mode();
    let mut n: i32 = 0;
    // SAFETY: live handle and descriptors; each perf array holds the requested count.
    let found = unsafe {
        match pass {
            Pass::Forward => {
                let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); 16];
                check(
                    "rank forward algorithms",
                    if timed {
                        sys::cudnnFindConvolutionForwardAlgorithm(
                            h.0,
                            d.x,
                            d.w,
                            d.conv,
                            d.y,
                            16,
                            &mut n,
                            perf.as_mut_ptr(),
                        )
                    } else {
                        sys::cudnnGetConvolutionForwardAlgorithm_v7(
                            h.0,
                            d.x,
                            d.w,
                            d.conv,
                            d.y,
                            16,
                            &mut n,
                            perf.as_mut_ptr(),
                        )
                    },
                )?;
                candidates!(perf, n, Forward)
            }
            Pass::BackwardData => {
                let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); 16];
                check(
                    "rank backward-data algorithms",
                    if timed {
                        sys::cudnnFindConvolutionBackwardDataAlgorithm(
                            h.0,
                            d.w,
                            d.y,
                            d.conv,
                            d.x,
                            16,
                            &mut n,
                            perf.as_mut_ptr(),
                        )
                    } else {
                        sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                            h.0,
                            d.w,
                            d.y,
                            d.conv,
                            d.x,
                            16,
                            &mut n,
                            perf.as_mut_ptr(),
                        )
                    },
                )?;
                candidates!(perf, n, BackwardData)
            }
            Pass::BackwardFilter => {
                let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(); 16];
                check(
                    "rank backward-filter algorithms",
                    if timed {
                        sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                            h.0,
                            d.x,
                            d.y,
                            d.conv,
                            d.w,
                            16,
                            &mut n,
                            perf.as_mut_ptr(),
                        )
                    } else {
                        sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                            h.0,
                            d.x,
                            d.y,
                            d.conv,
                            d.w,
                            16,
                            &mut n,
                            perf.as_mut_ptr(),
                        )
                    },
                )?;
                candidates!(perf, n, BackwardFilter)
            }
        }
    };
    use sys::cudnnMathType_t as M;
    // f32 data never takes ALLOW_CONVERSION (f32 converted to f16, overflowing above 65504);
    // exact FP32 takes no tensor-op math at all.
    let math_ok = |c: &Candidate| match c.math {
        M::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION => !f32_data,
        M::CUDNN_TENSOR_OP_MATH => tensor_ops || !f32_data,
        _ => true,
    };
    // Both return the candidates best first.
    // The algorithms every configuration supports, deterministic and (nearly) workspace-free:
    // what is left when no ranked candidate qualifies.
    let fallback = Candidate {
        algo: match pass {
            Pass::Forward => Algo::Forward(
                sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            ),
            Pass::BackwardData => Algo::BackwardData(
                sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            ),
            Pass::BackwardFilter => Algo::BackwardFilter(
                sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
            ),
        },
        status: sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
        memory: 0,
        deterministic: true,
        math: M::CUDNN_DEFAULT_MATH,
    };
    let best = found
        .iter()
        .find(|c| {
            c.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                && c.deterministic
                && c.memory <= MAX_WORKSPACE
                && math_ok(c)
        })
        .unwrap_or(&fallback);
    let math = if f32_data && !tensor_ops {
        // Exact FP32 stays FMA whatever math type the candidate reported.
        M::CUDNN_FMA_MATH
    } else {
        best.math
    };
    // The workspace as cuDNN computes it for this algorithm and math type (the heuristics'
    // estimate is not a promise).
    // SAFETY: live handle and descriptors.
    unsafe { result::set_convolution_math_type(d.conv, math) }
        .map_err(|e| cudnn_err("math type", e))?;
    let mut workspace = 0usize;
    // SAFETY: live handle and descriptors; one usize written.
    let status = unsafe {
        match best.algo {
            Algo::Forward(a) => sys::cudnnGetConvolutionForwardWorkspaceSize(
                h.0,
                d.x,
                d.w,
                d.conv,
                d.y,
                a,
                &mut workspace,
            ),
            Algo::BackwardData(a) => sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                h.0,
                d.w,
                d.y,
                d.conv,
                d.x,
                a,
                &mut workspace,
            ),
            Algo::BackwardFilter(a) => sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                h.0,
                d.x,
                d.y,
                d.conv,
                d.w,
                a,
                &mut workspace,
            ),
        }
    };
    check("workspace size", status)?;
    Ok(Choice {
        algo: best.algo,
        math,
        workspace: workspace.max(best.memory),
    })
}

/// Runs one pass of the convolution `g` with `c_out` output channels on two contiguous
/// operands (see [`Pass`]); with `bias` (forward only) adds it per output channel. Returns the
/// output: y `(n, c_out, oh, ow)`, dx `(n, c, h, w)` or dw `(c_out, c, kh, kw)`.
pub fn conv(
    pass: Pass,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
    bias: Option<(&CudaStorage, &Layout)>,
    g: &ConvGeometry,
    c_out: usize,
) -> Result<(CudaStorage, Shape)> {
    let device = a.0.device().clone();
    let dtype = a.0.dtype();
    if b.0.dtype() != dtype || bias.is_some_and(|(s, _)| s.dtype() != dtype) {
        candle_core::bail!("cuDNN convolution: operands of different dtypes")
    }
    // cuDNN trusts the descriptors: operands of other sizes would be read or written out of
    // bounds, so they are refused here.
    let (x_len, w_len) = (g.n * g.c * g.h * g.w, c_out * g.c * g.kh * g.kw);
    let y_len = g.n * c_out * g.oh * g.ow;
    let (a_len, b_len) = match pass {
        Pass::Forward => (x_len, w_len),
        Pass::BackwardData => (y_len, w_len),
        Pass::BackwardFilter => (x_len, y_len),
    };
    let bias_len = bias.map_or(c_out, |(_, l)| l.shape().elem_count());
    if a.1.shape().elem_count() != a_len || b.1.shape().elem_count() != b_len || bias_len != c_out {
        candle_core::bail!(
            "cuDNN convolution {pass:?}: operands of {} and {} elements (bias {bias_len}) for a geometry that needs {a_len} and {b_len} (bias {c_out})",
            a.1.shape().elem_count(),
            b.1.shape().elem_count()
        )
    }
    let f32_data = dtype == DType::F32;
    let tensor_ops = !f32_data || tf32();
    use sys::cudnnMathType_t as M;
    let math = if tensor_ops {
        M::CUDNN_TENSOR_OP_MATH
    } else {
        M::CUDNN_FMA_MATH
    };
    let h = handle(&device)?;
    let d = Descriptors::new(g, c_out, dtype, math)?;
    let key = ChoiceKey {
        device: device.id(),
        pass,
        dtype,
        tensor_ops,
        shape: [
            g.n, g.c, g.h, g.w, g.kh, g.kw, g.oh, g.ow, g.stride, g.padding, g.dilation,
        ],
        c_out,
    };
    let cached = CHOICES.with(|c| c.borrow().get(&key).copied());
    let choice = match cached {
        Some(choice) => choice,
        None => {
            let choice = find(&h, &d, pass, tensor_ops, f32_data)?;
            CHOICES.with(|c| c.borrow_mut().insert(key, choice));
            choice
        }
    };
    // SAFETY: a live descriptor.
    unsafe { result::set_convolution_math_type(d.conv, choice.math) }
        .map_err(|e| cudnn_err("math type", e))?;
    let (out_shape, out_len) = match pass {
        Pass::Forward => (
            Shape::from((g.n, c_out, g.oh, g.ow)),
            g.n * c_out * g.oh * g.ow,
        ),
        Pass::BackwardData => (Shape::from((g.n, g.c, g.h, g.w)), g.n * g.c * g.h * g.w),
        Pass::BackwardFilter => (
            Shape::from((c_out, g.c, g.kh, g.kw)),
            c_out * g.c * g.kh * g.kw,
        ),
    };
    let stream = device.cuda_stream();
    // SAFETY: cuDNN writes the whole workspace before reading it.
    let mut workspace = unsafe { device.alloc::<u8>(choice.workspace.max(1))? };
    // alpha = 1, beta = 0 (overwrite); f32 scaling factors for every data type but f64.
    let (one, zero) = (1f32, 0f32);
    let alpha = &one as *const f32 as *const c_void;
    let beta = &zero as *const f32 as *const c_void;
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let (S::$variant(sa), S::$variant(sb)) = (&a.0.slice, &b.0.slice) else {
                candle_core::bail!("cuDNN convolution: operands of different dtypes")
            };
            let va = contiguous_view(sa, a.1)?;
            let vb = contiguous_view(sb, b.1)?;
            // SAFETY: every element is written by cuDNN (beta = 0).
            let mut out = unsafe { device.alloc::<$t>(out_len)? };
            {
                let (pa, _ra) = va.device_ptr(&stream);
                let (pb, _rb) = vb.device_ptr(&stream);
                let (po, _ro) = out.device_ptr_mut(&stream);
                let (pw, _rw) = workspace.device_ptr_mut(&stream);
                let (pa, pb, po, pw) = (
                    pa as *const c_void,
                    pb as *const c_void,
                    po as *mut c_void,
                    pw as *mut c_void,
                );
                // SAFETY: pointers to live device buffers of the descriptors' shapes and
                // dtype, on the handle's stream; the workspace has the size Find reported.
                unsafe {
                    match choice.algo {
                        Algo::Forward(algo) => check(
                            "convolution forward",
                            sys::cudnnConvolutionForward(
                                h.0,
                                alpha,
                                d.x,
                                pa,
                                d.w,
                                pb,
                                d.conv,
                                algo,
                                pw,
                                choice.workspace,
                                beta,
                                d.y,
                                po,
                            ),
                        )?,
                        Algo::BackwardData(algo) => check(
                            "convolution backward data",
                            sys::cudnnConvolutionBackwardData(
                                h.0,
                                alpha,
                                d.w,
                                pb,
                                d.y,
                                pa,
                                d.conv,
                                algo,
                                pw,
                                choice.workspace,
                                beta,
                                d.x,
                                po,
                            ),
                        )?,
                        Algo::BackwardFilter(algo) => check(
                            "convolution backward filter",
                            sys::cudnnConvolutionBackwardFilter(
                                h.0,
                                alpha,
                                d.x,
                                pa,
                                d.y,
                                pb,
                                d.conv,
                                algo,
                                pw,
                                choice.workspace,
                                beta,
                                d.w,
                                po,
                            ),
                        )?,
                    }
                }
                if let (Pass::Forward, Some((bs, bl))) = (pass, bias) {
                    let S::$variant(sbias) = &bs.slice else {
                        candle_core::bail!("cuDNN convolution: operands of different dtypes")
                    };
                    let vbias = contiguous_view(sbias, bl)?;
                    let (pbias, _rbias) = vbias.device_ptr(&stream);
                    // y = 1·bias + 1·y, broadcast over n, h, w.
                    // SAFETY: live buffers matching the bias and output descriptors.
                    unsafe {
                        check(
                            "bias add",
                            sys::cudnnAddTensor(
                                h.0,
                                alpha,
                                d.bias,
                                pbias as *const c_void,
                                alpha,
                                d.y,
                                po,
                            ),
                        )?;
                    }
                }
            }
            S::$variant(out)
        }};
    }
    let slice = match dtype {
        DType::F32 => run!(f32, F32),
        DType::F16 => run!(half::f16, F16),
        DType::BF16 => run!(half::bf16, BF16),
        other => candle_core::bail!("cuDNN convolution: unsupported dtype {other:?}"),
    };
    Ok((CudaStorage { slice, device }, out_shape))
}

/// Two 4-d tensor descriptors: a batch `(n, c, h, w)` in `dtype` and the per-channel
/// parameters `(1, c, 1, 1)` in f32 (cuDNN's batch norm keeps them in f32 for half data).
struct BnDescriptors {
    x: sys::cudnnTensorDescriptor_t,
    params: sys::cudnnTensorDescriptor_t,
}

impl Drop for BnDescriptors {
    fn drop(&mut self) {
        // SAFETY: created below, destroyed once; null ones skipped.
        for t in [self.x, self.params] {
            if !t.is_null() {
                let _ = unsafe { result::destroy_tensor_descriptor(t) };
            }
        }
    }
}

impl BnDescriptors {
    fn new(shape: &Shape, dtype: DType) -> Result<Self> {
        let (n, c, h, w) = shape.dims4()?;
        let i = |v: usize| -> Result<i32> {
            i32::try_from(v).map_err(|_| {
                candle_core::Error::Msg("cuDNN batch norm: a dimension exceeds i32".into())
            })
        };
        let e = |what| move |err| cudnn_err(what, err);
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let mut d = BnDescriptors {
            x: std::ptr::null_mut(),
            params: std::ptr::null_mut(),
        };
        d.x = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        d.params = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        // SAFETY: fresh descriptors.
        unsafe {
            result::set_tensor4d_descriptor(
                d.x,
                nchw,
                data_type(dtype)?,
                [i(n)?, i(c)?, i(h)?, i(w)?],
            )
            .map_err(e("batch descriptor"))?;
            result::set_tensor4d_descriptor(
                d.params,
                nchw,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                [1, i(c)?, 1, 1],
            )
            .map_err(e("parameter descriptor"))?;
        }
        Ok(d)
    }
}

/// Batch norm over (n, h, w) in training mode: `y = (x - mean) / sqrt(var + eps) · weight +
/// bias` with the batch's mean and biased variance. Returns y (x's dtype) and the saved
/// statistics `(2, c)` f32 = [mean; 1/sqrt(var + eps)] that the backward pass and the running
/// statistics' update take. The running statistics are not touched here.
pub fn batch_norm_train(
    x: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    bias: (&CudaStorage, &Layout),
    eps: f64,
) -> Result<(CudaStorage, CudaStorage)> {
    let device = x.0.device().clone();
    let dtype = x.0.dtype();
    let shape = x.1.shape().clone();
    let c = shape.dims4()?.1;
    if weight.1.shape().elem_count() != c || bias.1.shape().elem_count() != c {
        candle_core::bail!(
            "cuDNN batch norm: {c} channels, {} weights and {} biases",
            weight.1.shape().elem_count(),
            bias.1.shape().elem_count()
        )
    }
    let h = handle(&device)?;
    let d = BnDescriptors::new(&shape, dtype)?;
    let stream = device.cuda_stream();
    let w = contiguous_view(weight.0.as_cuda_slice::<f32>()?, weight.1)?;
    let b = contiguous_view(bias.0.as_cuda_slice::<f32>()?, bias.1)?;
    // SAFETY: written whole by cuDNN.
    let mut stats = unsafe { device.alloc::<f32>(2 * c)? };
    let (one, zero) = (1f32, 0f32);
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let S::$variant(sx) = &x.0.slice else {
                unreachable!()
            };
            let vx = contiguous_view(sx, x.1)?;
            // SAFETY: written whole by cuDNN (beta = 0).
            let mut y = unsafe { device.alloc::<$t>(shape.elem_count())? };
            {
                let (px, _rx) = vx.device_ptr(&stream);
                let (py, _ry) = y.device_ptr_mut(&stream);
                let (pw, _rw) = w.device_ptr(&stream);
                let (pb, _rb) = b.device_ptr(&stream);
                let (ps, _rs) = stats.device_ptr_mut(&stream);
                let inv = ps + (c * std::mem::size_of::<f32>()) as u64;
                // SAFETY: live buffers matching the descriptors, on the handle's stream; no
                // running statistics (both null), saved mean and inverse std into `stats`.
                unsafe {
                    check(
                        "batch norm forward (training)",
                        sys::cudnnBatchNormalizationForwardTraining(
                            h.0,
                            sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                            &one as *const f32 as *const c_void,
                            &zero as *const f32 as *const c_void,
                            d.x,
                            px as *const c_void,
                            d.x,
                            py as *mut c_void,
                            d.params,
                            pw as *const c_void,
                            pb as *const c_void,
                            0.0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            eps,
                            ps as *mut c_void,
                            inv as *mut c_void,
                        ),
                    )?;
                }
            }
            S::$variant(y)
        }};
    }
    let slice = match dtype {
        DType::F32 => run!(f32, F32),
        DType::F16 => run!(half::f16, F16),
        DType::BF16 => run!(half::bf16, BF16),
        other => candle_core::bail!("cuDNN batch norm: unsupported dtype {other:?}"),
    };
    Ok((
        CudaStorage {
            slice,
            device: device.clone(),
        },
        CudaStorage {
            slice: S::F32(stats),
            device,
        },
    ))
}

/// The backward pass of [`batch_norm_train`]: dx (x's dtype) and `(2, c)` f32 = [dweight; dbias],
/// from x, dy, the weight and the saved statistics.
pub fn batch_norm_backward(
    x: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    stats: &CudaStorage,
    eps: f64,
) -> Result<(CudaStorage, CudaStorage)> {
    let device = x.0.device().clone();
    let dtype = x.0.dtype();
    if dy.0.dtype() != dtype {
        candle_core::bail!(
            "cuDNN batch norm backward: x is {dtype:?}, dy {:?}",
            dy.0.dtype()
        )
    }
    let shape = x.1.shape().clone();
    let c = shape.dims4()?.1;
    let saved = stats.as_cuda_slice::<f32>()?;
    if dy.1.shape() != &shape || weight.1.shape().elem_count() != c || saved.len() != 2 * c {
        candle_core::bail!(
            "cuDNN batch norm backward: dy {:?} for x {:?}, {} weights, {} saved statistics",
            dy.1.shape(),
            shape,
            weight.1.shape().elem_count(),
            saved.len()
        )
    }
    let h = handle(&device)?;
    let d = BnDescriptors::new(&shape, dtype)?;
    let stream = device.cuda_stream();
    let w = contiguous_view(weight.0.as_cuda_slice::<f32>()?, weight.1)?;
    // SAFETY: written whole by cuDNN.
    let mut dparams = unsafe { device.alloc::<f32>(2 * c)? };
    let (one, zero) = (1f32, 0f32);
    let (one, zero) = (
        &one as *const f32 as *const c_void,
        &zero as *const f32 as *const c_void,
    );
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let (S::$variant(sx), S::$variant(sdy)) = (&x.0.slice, &dy.0.slice) else {
                unreachable!()
            };
            let vx = contiguous_view(sx, x.1)?;
            let vdy = contiguous_view(sdy, dy.1)?;
            // SAFETY: written whole by cuDNN (beta = 0).
            let mut dx = unsafe { device.alloc::<$t>(shape.elem_count())? };
            {
                let (px, _rx) = vx.device_ptr(&stream);
                let (pdy, _rdy) = vdy.device_ptr(&stream);
                let (pdx, _rdx) = dx.device_ptr_mut(&stream);
                let (pw, _rw) = w.device_ptr(&stream);
                let (pstats, _rs) = saved.device_ptr(&stream);
                let (pdp, _rdp) = dparams.device_ptr_mut(&stream);
                let f = std::mem::size_of::<f32>() as u64;
                // SAFETY: live buffers matching the descriptors, on the handle's stream.
                unsafe {
                    check(
                        "batch norm backward",
                        sys::cudnnBatchNormalizationBackward(
                            h.0,
                            sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                            one,
                            zero,
                            one,
                            zero,
                            d.x,
                            px as *const c_void,
                            d.x,
                            pdy as *const c_void,
                            d.x,
                            pdx as *mut c_void,
                            d.params,
                            pw as *const c_void,
                            pdp as *mut c_void,
                            (pdp + c as u64 * f) as *mut c_void,
                            eps,
                            pstats as *const c_void,
                            (pstats + c as u64 * f) as *const c_void,
                        ),
                    )?;
                }
            }
            S::$variant(dx)
        }};
    }
    let slice = match dtype {
        DType::F32 => run!(f32, F32),
        DType::F16 => run!(half::f16, F16),
        DType::BF16 => run!(half::bf16, BF16),
        other => candle_core::bail!("cuDNN batch norm: unsupported dtype {other:?}"),
    };
    Ok((
        CudaStorage {
            slice,
            device: device.clone(),
        },
        CudaStorage {
            slice: S::F32(dparams),
            device,
        },
    ))
}
