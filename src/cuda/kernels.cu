// exp's own CUDA kernels, compiled to PTX by build.rs (feature `cuda`) and loaded through
// candle's custom-module cache. Each replaces a chain of candle ops whose launches dominated a
// small model's step: 2×2 max-pool forward and backward (PyTorch's first-maximum gradient), and
// a fused Adam/AdamW update (one pass over parameter, gradient and moments).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// Index (0..3, row-major) of the window's first maximum; a NaN wins, so it propagates as in
// PyTorch. Ties keep the first, as PyTorch's kernels do.
template <typename T>
__device__ __forceinline__ int window_argmax(const T *plane, int w, int top_left) {
    const int at[4] = {top_left, top_left + 1, top_left + w, top_left + w + 1};
    int best = 0;
    float best_v = to_f(plane[at[0]]);
    #pragma unroll
    for (int k = 1; k < 4; ++k) {
        float v = to_f(plane[at[k]]);
        if (v > best_v || (isnan(v) && !isnan(best_v))) {
            best = k;
            best_v = v;
        }
    }
    return at[best];
}

// Output element i of a 2×2 pool over (planes, h, w): the offset of its plane in the input and
// the index of its window's top-left pixel within the plane.
struct Window {
    uint64_t plane_offset;
    int top_left;
};

__device__ __forceinline__ Window window_of(uint64_t i, uint32_t h, uint32_t w) {
    const uint32_t oh = h / 2, ow = w / 2;
    const uint64_t plane = i / (oh * ow);
    const uint32_t r = (i % (oh * ow)) / ow, c = i % ow;
    return Window{plane * h * w, (int)(2 * r * w + 2 * c)};
}

// Grid-stride loop over the output elements of a 2×2 pool.
#define FOR_EACH_WINDOW(i, planes, h, w)                                                        \
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x,                          \
                  total_ = (uint64_t)(planes) * ((h) / 2) * ((w) / 2);                          \
         i < total_; i += (uint64_t)blockDim.x * gridDim.x)

// One thread per output element. x: (planes, h, w) contiguous; y: (planes, oh, ow).
template <typename T>
__device__ void maxpool2x2_fwd(const T *x, T *y, uint32_t planes, uint32_t h, uint32_t w) {
    FOR_EACH_WINDOW(i, planes, h, w) {
        const Window win = window_of(i, h, w);
        const T *p = x + win.plane_offset;
        y[i] = p[window_argmax(p, w, win.top_left)];
    }
}

// One thread per output element: writes the whole 2×2 window of dx (the gradient at the first
// maximum, zero at the other three), so dx needs no clearing except the odd last row/column,
// which the caller zeroes.
template <typename T>
__device__ void maxpool2x2_bwd(const T *x, const T *g, T *dx, uint32_t planes, uint32_t h,
                               uint32_t w) {
    FOR_EACH_WINDOW(i, planes, h, w) {
        const Window win = window_of(i, h, w);
        const T *p = x + win.plane_offset;
        T *d = dx + win.plane_offset;
        const int top_left = win.top_left;
        const int at = window_argmax(p, w, top_left);
        const T zero = T(0.0f);
        d[top_left] = zero;
        d[top_left + 1] = zero;
        d[top_left + w] = zero;
        d[top_left + w + 1] = zero;
        d[at] = g[i];
    }
}

#define POOL(NAME, T)                                                                          \
    extern "C" __global__ void exp_maxpool2x2_fwd_##NAME(const T *x, T *y, uint32_t planes,   \
                                                         uint32_t h, uint32_t w) {             \
        maxpool2x2_fwd<T>(x, y, planes, h, w);                                                 \
    }                                                                                          \
    extern "C" __global__ void exp_maxpool2x2_bwd_##NAME(const T *x, const T *g, T *dx,       \
                                                         uint32_t planes, uint32_t h,          \
                                                         uint32_t w) {                         \
        maxpool2x2_bwd<T>(x, g, dx, planes, h, w);                                             \
    }

POOL(f32, float)
POOL(f16, __half)
POOL(bf16, __nv_bfloat16)

// PyTorch's Adam/AdamW step (torch.optim.Adam, foreach=False), in the same f32 operation order
// as exp's CPU implementation:
//   g' = g + wd·p (Adam with weight decay)        base = p·(1 − lr·wd) (AdamW)
//   m = β1·m + (1−β1)·g'    v = β2·v + (1−β2)·g'²
//   p = base − (lr/bias1) · m / (√v/√bias2 + eps)
// `first` is nonzero on the first step (m and v start from the first gradient alone).
extern "C" __global__ void exp_adam_f32(float *p, const float *g, float *m, float *v,
                                        uint64_t n, float beta1, float one_minus_beta1,
                                        float beta2, float one_minus_beta2, float step_size,
                                        float inv_sqrt_bias2, float eps, float l2,
                                        float decay_factor, int first) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)blockDim.x * gridDim.x) {
        const float param = p[i];
        float grad = g[i];
        if (l2 != 0.0f) grad = grad + param * l2;
        const float base = decay_factor != 1.0f ? param * decay_factor : param;
        float mi, vi;
        if (first) {
            mi = grad * one_minus_beta1;
            vi = (grad * grad) * one_minus_beta2;
        } else {
            mi = m[i] * beta1 + grad * one_minus_beta1;
            vi = v[i] * beta2 + (grad * grad) * one_minus_beta2;
        }
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) * inv_sqrt_bias2 + eps;
        p[i] = base - (mi / denom) * step_size;
    }
}

// im2col for a convolution with square stride/padding/dilation: x (n, c, h, w) contiguous →
// col (n·oh·ow, c·kh·kw), one row per output pixel, so that the convolution is one GEMM
// col · Wᵀ and its gradients are GEMMs too. Zero where the window leaves the image (padding).
// The caller guarantees that every index fits in 32 bits.
// With ld = K + 1, each row ends in a 1, so that a bias appended to the kernel matrix is added
// by the GEMM itself (and its gradient comes out of the GEMM's backward).
template <typename T>
__device__ void im2col(const T *x, T *col, uint32_t n, uint32_t c, uint32_t h, uint32_t w,
                       uint32_t kh, uint32_t kw, uint32_t oh, uint32_t ow, uint32_t stride,
                       uint32_t pad, uint32_t dil, uint32_t ld) {
    const uint32_t K = c * kh * kw;
    const uint32_t total = n * oh * ow * ld;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += blockDim.x * gridDim.x) {
        const uint32_t row = i / ld, k = i % ld;
        if (k >= K) {
            col[i] = T(1.0f);
            continue;
        }
        const uint32_t kx = k % kw, ky = (k / kw) % kh, ci = k / (kw * kh);
        const uint32_t ox = row % ow, oy = (row / ow) % oh, b = row / (ow * oh);
        const int iy = (int)(oy * stride + ky * dil) - (int)pad;
        const int ix = (int)(ox * stride + kx * dil) - (int)pad;
        col[i] = (iy >= 0 && iy < (int)h && ix >= 0 && ix < (int)w)
                     ? x[((b * c + ci) * h + iy) * w + ix]
                     : T(0.0f);
    }
}

// The adjoint of im2col: dx (n, c, h, w) = Σ of the col entries each pixel was copied to.
// A gather (one thread per pixel, summing in f32), so no atomics and a deterministic result.
template <typename T>
__device__ void col2im(const T *col, T *dx, uint32_t n, uint32_t c, uint32_t h, uint32_t w,
                       uint32_t kh, uint32_t kw, uint32_t oh, uint32_t ow, uint32_t stride,
                       uint32_t pad, uint32_t dil, uint32_t ld) {
    const uint32_t total = n * c * h * w;
    for (uint32_t j = blockIdx.x * blockDim.x + threadIdx.x; j < total;
         j += blockDim.x * gridDim.x) {
        const uint32_t ix = j % w, iy = (j / w) % h, ci = (j / (w * h)) % c, b = j / (w * h * c);
        float sum = 0.0f;
        for (uint32_t ky = 0; ky < kh; ++ky) {
            const int ny = (int)(iy + pad) - (int)(ky * dil);
            if (ny < 0 || ny % (int)stride != 0) continue;
            const uint32_t oy = ny / stride;
            if (oy >= oh) continue;
            for (uint32_t kx = 0; kx < kw; ++kx) {
                const int nx = (int)(ix + pad) - (int)(kx * dil);
                if (nx < 0 || nx % (int)stride != 0) continue;
                const uint32_t ox = nx / stride;
                if (ox >= ow) continue;
                const uint32_t row = (b * oh + oy) * ow + ox;
                sum += to_f(col[row * ld + (ci * kh + ky) * kw + kx]);
            }
        }
        dx[j] = T(sum);
    }
}

#define IM2COL(NAME, T)                                                                        \
    extern "C" __global__ void exp_im2col_##NAME(                                              \
        const T *x, T *col, uint32_t n, uint32_t c, uint32_t h, uint32_t w, uint32_t kh,        \
        uint32_t kw, uint32_t oh, uint32_t ow, uint32_t stride, uint32_t pad, uint32_t dil,     \
        uint32_t ld) {                                                                          \
        im2col<T>(x, col, n, c, h, w, kh, kw, oh, ow, stride, pad, dil, ld);                    \
    }                                                                                          \
    extern "C" __global__ void exp_col2im_##NAME(                                              \
        const T *col, T *dx, uint32_t n, uint32_t c, uint32_t h, uint32_t w, uint32_t kh,       \
        uint32_t kw, uint32_t oh, uint32_t ow, uint32_t stride, uint32_t pad, uint32_t dil,     \
        uint32_t ld) {                                                                          \
        col2im<T>(col, dx, n, c, h, w, kh, kw, oh, ow, stride, pad, dil, ld);                   \
    }

IM2COL(f32, float)
IM2COL(f16, __half)
IM2COL(bf16, __nv_bfloat16)

// Direct convolution for layers with few taps per output (c·kh·kw small, e.g. the first layer
// on grey images, 9 taps): one thread per output element, bias fused, f32 accumulation. As a
// GEMM such a layer has K = 9, a shape cuBLAS runs far below its speed.
template <typename T>
__device__ void conv_direct_fwd(const T *x, const T *wt, const T *bias, T *y, uint32_t n,
                                uint32_t c, uint32_t h, uint32_t w, uint32_t co, uint32_t kh,
                                uint32_t kw, uint32_t oh, uint32_t ow, uint32_t stride,
                                uint32_t pad, uint32_t dil) {
    const uint32_t total = n * co * oh * ow;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += blockDim.x * gridDim.x) {
        const uint32_t ox = i % ow, oy = (i / ow) % oh, oc = (i / (ow * oh)) % co,
                       b = i / (ow * oh * co);
        float acc = to_f(bias[oc]);
        for (uint32_t ci = 0; ci < c; ++ci) {
            for (uint32_t ky = 0; ky < kh; ++ky) {
                const int iy = (int)(oy * stride + ky * dil) - (int)pad;
                if (iy < 0 || iy >= (int)h) continue;
                for (uint32_t kx = 0; kx < kw; ++kx) {
                    const int ix = (int)(ox * stride + kx * dil) - (int)pad;
                    if (ix < 0 || ix >= (int)w) continue;
                    acc += to_f(wt[((oc * c + ci) * kh + ky) * kw + kx]) *
                           to_f(x[((b * c + ci) * h + iy) * w + ix]);
                }
            }
        }
        y[i] = T(acc);
    }
}

// Kernel and bias gradients of the direct convolution: block (oc, k) reduces, over every
// output pixel, g·x at tap k (k < c·kh·kw) or g alone (k = c·kh·kw: the bias). A fixed-order
// tree reduction in shared memory: deterministic. blockDim.x must be 256.
template <typename T>
__device__ void conv_direct_wgrad(const T *x, const T *g, T *out, uint32_t n, uint32_t c,
                                  uint32_t h, uint32_t w, uint32_t co, uint32_t kh, uint32_t kw,
                                  uint32_t oh, uint32_t ow, uint32_t stride, uint32_t pad,
                                  uint32_t dil) {
    __shared__ float partial[256];
    const uint32_t K = c * kh * kw;
    const uint32_t oc = blockIdx.x / (K + 1), k = blockIdx.x % (K + 1);
    const uint32_t kx = k % kw, ky = (k / kw) % kh, ci = k / (kw * kh);
    const uint32_t pixels = n * oh * ow;
    float acc = 0.0f;
    for (uint32_t p = threadIdx.x; p < pixels; p += blockDim.x) {
        const uint32_t ox = p % ow, oy = (p / ow) % oh, b = p / (ow * oh);
        const float gv = to_f(g[((b * co + oc) * oh + oy) * ow + ox]);
        if (k == K) {
            acc += gv;
        } else {
            const int iy = (int)(oy * stride + ky * dil) - (int)pad;
            const int ix = (int)(ox * stride + kx * dil) - (int)pad;
            if (iy >= 0 && iy < (int)h && ix >= 0 && ix < (int)w)
                acc += gv * to_f(x[((b * c + ci) * h + iy) * w + ix]);
        }
    }
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (uint32_t s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = T(partial[0]);
}

#define CONV_DIRECT(NAME, T)                                                                    \
    extern "C" __global__ void exp_conv_direct_fwd_##NAME(                                      \
        const T *x, const T *wt, const T *bias, T *y, uint32_t n, uint32_t c, uint32_t h,        \
        uint32_t w, uint32_t co, uint32_t kh, uint32_t kw, uint32_t oh, uint32_t ow,             \
        uint32_t stride, uint32_t pad, uint32_t dil) {                                           \
        conv_direct_fwd<T>(x, wt, bias, y, n, c, h, w, co, kh, kw, oh, ow, stride, pad, dil);    \
    }                                                                                           \
    extern "C" __global__ void exp_conv_direct_wgrad_##NAME(                                    \
        const T *x, const T *g, T *out, uint32_t n, uint32_t c, uint32_t h, uint32_t w,          \
        uint32_t co, uint32_t kh, uint32_t kw, uint32_t oh, uint32_t ow, uint32_t stride,        \
        uint32_t pad, uint32_t dil) {                                                            \
        conv_direct_wgrad<T>(x, g, out, n, c, h, w, co, kh, kw, oh, ow, stride, pad, dil);       \
    }

CONV_DIRECT(f32, float)
CONV_DIRECT(f16, __half)
CONV_DIRECT(bf16, __nv_bfloat16)

// ---- Fused inverted dropout --------------------------------------------------------------
// One pass: element i is kept when the 32-bit hash of (seed, i) is at least `threshold`
// (= p·2³²), and then scaled by 1/(1-p). The mask is a pure function of (seed, i), so the
// backward pass is the same kernel on the gradient with the same seed: no mask is stored, and
// the chain candle needed (uniform draw, compare, cast, scale, multiply: five kernels and four
// temporaries) is one kernel each way. The hash is SplitMix64's output at position i of the
// stream seeded with `seed` (model/dropout.rs has the same function for the CPU reference).
__device__ __forceinline__ uint32_t dropout_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

__device__ __forceinline__ float from_f(float x, float) { return x; }
__device__ __forceinline__ __half from_f(float x, __half) { return __float2half(x); }
__device__ __forceinline__ __nv_bfloat16 from_f(float x, __nv_bfloat16) { return __float2bfloat16(x); }

#define DROPOUT(NAME, T)                                                                        \
    extern "C" __global__ void exp_dropout_##NAME(const T *x, T *y, uint64_t n, uint64_t seed,  \
                                                  uint32_t threshold, float scale) {            \
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n;               \
             i += (uint64_t)blockDim.x * gridDim.x) {                                           \
            const bool keep = dropout_hash(seed, i) >= threshold;                               \
            y[i] = from_f(keep ? to_f(x[i]) * scale : 0.0f, T());                               \
        }                                                                                       \
    }
DROPOUT(f32, float)
DROPOUT(f16, __half)
DROPOUT(bf16, __nv_bfloat16)

// ---- Augmentation: random crop with padding and horizontal flip ---------------------------
// One thread per output element of an (n, c, h, w) batch. Example e's draw is params[3e..3e+3]
// = (dy, dx, mirrored): its crop window's offset in the image padded by `pad`, and the coin.
// The output is the source pixel or channel ch's padding value fill[ch] — the same copy the CPU
// path makes through its index (data/augment.rs), so both give the same bits.
#define AUGMENT(NAME, T)                                                                        \
    extern "C" __global__ void exp_augment_##NAME(const T *x, const T *fill, const int *params, \
                                                  T *y, uint32_t n, uint32_t c, uint32_t h,     \
                                                  uint32_t w, int pad) {                        \
        const uint64_t total = (uint64_t)n * c * h * w;                                         \
        for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total;           \
             i += (uint64_t)blockDim.x * gridDim.x) {                                           \
            const uint32_t j = i % w, row = (i / w) % h, ch = (i / ((uint64_t)w * h)) % c;      \
            const uint64_t e = i / ((uint64_t)w * h * c);                                       \
            const int dy = params[3 * e], dx = params[3 * e + 1], mirrored = params[3 * e + 2]; \
            const int yy = (int)row + dy - pad;                                                 \
            const int jj = mirrored ? (int)(w - 1 - j) : (int)j;                                \
            const int xx = jj + dx - pad;                                                       \
            const bool inside = yy >= 0 && yy < (int)h && xx >= 0 && xx < (int)w;               \
            y[i] = inside ? x[((e * c + ch) * h + yy) * w + xx] : fill[ch];                     \
        }                                                                                       \
    }
AUGMENT(f32, float)
AUGMENT(f16, __half)
AUGMENT(bf16, __nv_bfloat16)

// ---- Convolution bias gradient -----------------------------------------------------------
// db[ch] = Σ over n, h, w of dy[n, ch, h, w] for a contiguous NCHW dy: one 256-thread block
// per channel, each thread summing a fixed stride of the channel's elements in f32, then a
// tree in shared memory: the same order on every run (deterministic), f32 accumulation for
// half-precision gradients, any dtype (cuDNN's own bias gradient refuses some).
#define BIAS_GRAD(NAME, T)                                                                      \
    extern "C" __global__ void exp_bias_grad_##NAME(const T *dy, T *db, uint32_t n, uint32_t c, \
                                                    uint32_t hw) {                              \
        __shared__ float partial[256];                                                          \
        const uint32_t ch = blockIdx.x;                                                         \
        float acc = 0.0f;                                                                       \
        for (uint64_t k = threadIdx.x; k < (uint64_t)n * hw; k += blockDim.x) {                 \
            const uint64_t image = k / hw, pixel = k % hw;                                      \
            acc += to_f(dy[(image * c + ch) * hw + pixel]);                                     \
        }                                                                                       \
        partial[threadIdx.x] = acc;                                                             \
        __syncthreads();                                                                        \
        for (uint32_t s = blockDim.x / 2; s > 0; s >>= 1) {                                     \
            if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];              \
            __syncthreads();                                                                    \
        }                                                                                       \
        if (threadIdx.x == 0) db[ch] = from_f(partial[0], T());                                 \
    }
BIAS_GRAD(f32, float)
BIAS_GRAD(f16, __half)
BIAS_GRAD(bf16, __nv_bfloat16)

// ---- Batch norm's running statistics ------------------------------------------------------
// After cuDNN's training forward: stats = [batch mean (c); 1/sqrt(biased var + eps) (c)].
// which = 0: running mean ← (1-m)·running + m·mean; which = 1: running var ← (1-m)·running +
// m·var·count/(count-1) (the unbiased variance, as PyTorch and candle keep it).
extern "C" __global__ void exp_bn_running_update(float *running, const float *stats, uint32_t c,
                                                 float momentum, float unbias, float eps,
                                                 int which) {
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c) return;
    double batch;
    if (which == 0) {
        batch = stats[i];
    } else {
        // In double and clamped: for a variance far below eps (a dead channel) the subtraction
        // cancels, and rounding must not make it negative.
        const double inv = stats[c + i];
        batch = fmax(1.0 / (inv * inv) - (double)eps, 0.0) * unbias;
    }
    running[i] = (float)((1.0 - momentum) * running[i] + momentum * batch);
}
