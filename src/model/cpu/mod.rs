//! exp's CPU training kernels: convolution and dense layers as custom candle ops whose forward
//! and backward passes are GEMMs (the `gemm` crate, which candle's own CPU matmul uses), with
//! the bias, the ReLU, the 2×2 max-pool and dropout fused in.
//!
//! Why: with candle 0.11.1's CPU ops, seed-cnn trained at ~1,100 img/s and cnn at ~170 img/s
//! on two cores, against PyTorch's ~3,000 and ~270 (docs/benchmarks.md). The time went to
//! candle's conv2d backward (a direct `conv_transpose2d` loop for the input gradient, a badly
//! shaped im2col GEMM for the kernel gradient), and to autograd bookkeeping on the large
//! activations: every node's gradient is a fresh zero tensor plus an add, so each multi-MB
//! activation between conv, ReLU and pool cost several passes over memory per step. Here a
//! conv layer with its ReLU and pool is one node whose only output is the pooled map; the
//! full-size activation lives in a per-thread scratch buffer and never reaches the graph.
//!
//! Work is split over images (rayon). Reductions over a batch (kernel and bias gradients) sum
//! a fixed split of the batch in a fixed order ([`reduction_chunks`]), so results are the same
//! for any thread count. Scratch buffers are per thread and reused across steps.

use std::cell::RefCell;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};

pub mod attention;
#[cfg(test)]
mod attention_tests;
pub mod batch_norm;
pub mod conv;
pub mod dropout;
pub mod linear;
#[cfg(test)]
mod tests;

/// Whether `EXP_CPU_OPS=candle` asks for candle's own CPU ops instead of exp's kernels (to
/// compare the two; see docs/benchmarks.md). The run record says so (`run.cpu_ops`).
pub fn candle_forced() -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CANDLE.get_or_init(|| std::env::var("EXP_CPU_OPS").is_ok_and(|v| v == "candle"))
}

/// Whether a tensor runs on exp's CPU kernels: f32 on the CPU, unless [`candle_forced`].
pub fn applies(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && !candle_forced() && !test_override()
}

#[cfg(test)]
thread_local! {
    /// Tests compare a model on exp's kernels with the same model on candle's ops.
    pub static TEST_CANDLE_OPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn test_override() -> bool {
    TEST_CANDLE_OPS.with(|c| c.get())
}

#[cfg(not(test))]
fn test_override() -> bool {
    false
}

/// A strided view of an f32 matrix inside a slice.
#[derive(Debug, Clone, Copy)]
pub struct Mat {
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Mat {
    /// A dense row-major `rows × cols` matrix.
    pub fn row_major(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Mat {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Elements of the slice the view reaches (one past its last element); `None` on
    /// overflow, which no slice could hold.
    fn extent(&self) -> Option<usize> {
        if self.rows == 0 || self.cols == 0 {
            return Some(0);
        }
        (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b)?.checked_add(1))
            .filter(|&end| end <= isize::MAX as usize)
    }

    /// Whether the view fits in a slice of `len` elements.
    fn fits(&self, len: usize) -> bool {
        self.extent().is_some_and(|end| len >= end)
    }
}

/// Threads a GEMM may use: one inside per-image work (already parallel), all of rayon's for a
/// single large product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only.
    One,
    /// rayon's pool. gemm splits the output among threads, never a sum, so each element's
    /// summation order, and the result, is the same for any thread count.
    All,
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`.
///
/// Panics if the views do not fit their slices or their shapes do not chain: every caller
/// derives both from one checked geometry, so a mismatch is a bug in exp, and the check is
/// what makes the raw-pointer call below sound.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dst: &mut [f32],
    d: Mat,
    accumulate: bool,
    lhs: &[f32],
    l: Mat,
    rhs: &[f32],
    r: Mat,
    threads: Threads,
) {
    assert!(
        l.rows == d.rows && r.cols == d.cols && l.cols == r.rows,
        "gemm: {l:?} · {r:?} into {d:?}"
    );
    assert!(
        d.fits(dst.len()) && l.fits(lhs.len()) && r.fits(rhs.len()),
        "gemm: a view outruns its slice"
    );
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    if l.cols == 0 {
        if !accumulate {
            for i in 0..d.rows {
                for j in 0..d.cols {
                    dst[i * d.row_stride + j * d.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => match rayon::current_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            n => gemm::Parallelism::Rayon(n),
        },
    };
    // Strides fit isize: each is at most the extent of its view, checked above.
    let s = |v: usize| v as isize;
    // SAFETY: the asserts above keep every element the three views address inside its slice
    // (extents computed without overflow); `dst` is a unique borrow, so it aliases neither
    // operand; and no `Mat` overlaps itself (each `row_major` view has distinct elements, and
    // a transpose keeps them), so gemm's threads never write one element twice.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr(),
            s(d.col_stride),
            s(d.row_stride),
            accumulate,
            lhs.as_ptr(),
            s(l.col_stride),
            s(l.row_stride),
            rhs.as_ptr(),
            s(r.col_stride),
            s(r.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

thread_local! {
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with three per-thread scratch buffers of (at least) the given lengths, reused
/// across calls: their contents are whatever the last user left, so `f` must write before it
/// reads.
pub fn with_scratch<R>(
    lens: [usize; 3],
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            for (buf, &len) in bufs.iter_mut().zip(&lens) {
                if buf.len() < len {
                    buf.resize(len, 0.0);
                }
            }
            let [a, b, c] = &mut *bufs;
            f(&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]])
        }
        // Re-entered on this thread (rayon can run another task inside a wait): fresh buffers.
        Err(_) => f(
            &mut vec![0.0; lens[0]],
            &mut vec![0.0; lens[1]],
            &mut vec![0.0; lens[2]],
        ),
    })
}

/// Chunks a batch of `n` images is split into for a reduction over the batch: a fixed number
/// (not the thread count), so the summation order, and the result, is the same for any number
/// of threads. (Not across CPUs: gemm's blocking follows the cache sizes and SIMD width.)
pub const REDUCTION_CHUNKS: usize = 16;

/// Images per reduction chunk for a batch of `n`.
pub fn reduction_chunk_len(n: usize) -> usize {
    n.div_ceil(REDUCTION_CHUNKS).max(1)
}

/// The f32 elements of a contiguous CPU tensor's storage (`t.storage_and_layout()`).
pub fn slice<'a>(
    storage: &'a Storage,
    layout: &candle_core::Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("{what}: expected a CPU tensor")
    };
    super::cpu_f32(cpu, layout, what)
}

/// A CPU f32 tensor of `shape` owning `values`.
pub fn tensor(values: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Thread time spent in one phase of a kernel, summed over threads, for `EXP_PROFILE_OPS=1`
/// (the phases of a parallel kernel overlap, so these are CPU seconds, not wall seconds).
pub struct PhaseClock {
    on: bool,
    totals: std::sync::Mutex<Vec<(&'static str, std::time::Duration)>>,
}

impl PhaseClock {
    /// A clock that records only when profiling is on.
    pub fn new() -> PhaseClock {
        PhaseClock {
            on: crate::profile::enabled(),
            totals: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Runs `f`, charging its time to `phase`.
    pub fn time<T>(&self, phase: &'static str, f: impl FnOnce() -> T) -> T {
        if !self.on {
            return f();
        }
        let start = std::time::Instant::now();
        let value = f();
        let elapsed = start.elapsed();
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        match totals.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, d)) => *d += elapsed,
            None => totals.push((phase, elapsed)),
        }
        value
    }

    /// Adds the phases to the profile table as `"{layer} · {phase} [thread-s]"`.
    pub fn report(self, layer: &str) {
        if !self.on {
            return;
        }
        let totals = self.totals.into_inner().unwrap_or_else(|e| e.into_inner());
        for (phase, elapsed) in totals {
            crate::profile::add(format!("{layer} · {phase} [thread-s]"), elapsed);
        }
    }
}

impl Default for PhaseClock {
    fn default() -> Self {
        PhaseClock::new()
    }
}

/// A layer over (input, weight, optional bias) computed by one of exp's CPU kernels.
pub trait LayerKernel: Send + Sync + 'static {
    /// The op's name in candle's errors.
    const NAME: &'static str;

    /// The output, from contiguous f32 operands.
    fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<(CpuStorage, Shape)>;

    /// The gradients of input (when it tracks one), weight and bias, given the forward's
    /// operands, its output and the output's gradient.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)>;

    /// The profile label of the backward pass.
    fn backward_label(&self) -> &'static str;
}

/// `kernel` applied to `xs`, `weight` and `bias` as a candle op with a backward pass, timed
/// as `label`. The bias has one value per output channel (the weight's first dimension).
pub fn apply<K: LayerKernel>(
    kernel: K,
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    label: &'static str,
) -> Result<Tensor> {
    let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
    crate::profile::span(label, xs.device(), || match bias {
        Some(bias) => {
            if bias.dims() != [weight.dim(0)?] {
                candle_core::bail!(
                    "{}: bias of shape {:?} for a weight of shape {:?}",
                    K::NAME,
                    bias.dims(),
                    weight.dims()
                )
            }
            xs.apply_op3(&weight, &bias.contiguous()?, WithBias(kernel))
        }
        None => xs.apply_op2(&weight, NoBias(kernel)),
    })
}

struct NoBias<K>(K);

impl<K: LayerKernel> CustomOp2 for NoBias<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(xs, xl, K::NAME)?;
        let w = super::cpu_f32(ws, wl, K::NAME)?;
        self.0.forward(x, w, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        crate::profile::span(self.0.backward_label(), x.device(), || {
            let (dx, dw, _) = self.0.backward(x, w, res, grad)?;
            Ok((dx, Some(dw)))
        })
    }
}

struct WithBias<K>(K);

impl<K: LayerKernel> CustomOp3 for WithBias<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(xs, xl, K::NAME)?;
        let w = super::cpu_f32(ws, wl, K::NAME)?;
        let b = super::cpu_f32(bs, bl, K::NAME)?;
        self.0.forward(x, w, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        crate::profile::span(self.0.backward_label(), x.device(), || {
            let (dx, dw, db) = self.0.backward(x, w, res, grad)?;
            Ok((dx, Some(dw), Some(db)))
        })
    }
}
