"""Cross-entropy, focal and poly-1 with their gradients on CuPy arrays: one CUDA kernel.

The GPU counterpart of `_fused` (numba), with the same interface (`softmax_rows`, the `kind`
constants) so that the losses call either through `_engine_path.fused_kernels`. One thread
block per row; each thread walks the row with a stride of the block size (coalesced loads):

1. one pass over the row keeps, per thread, a running maximum `m` and the float64 sum `s` of
   `exp(x - m)`, rescaling `s` by `exp(m_old - m_new)` when the maximum grows (the online
   softmax of Milakov & Gimelshein 2018); two block-wide reductions (warp shuffles, then one
   value per warp through shared memory) give the row maximum `shift` and
   `sum_c exp(x_c - shift)` in float64, where the row's largest term is exactly 1;
2. every thread then has the row's `log_sum = log1p(sum - 1)`, `lse`, the label term and the
   gradient factor (`_fused`'s formulas, in the same order), and one more pass writes
   `factor * exp(x_c - shift) - spread_c - [c == y] mass` into the gradient, adding up the
   label-smoothing dot product `sum_c w_c (x_c - shift)` (zero weights add 0, even at -inf);
3. a last reduction of that dot product, and thread 0 writes the row's loss and `lse`.

The row is read twice and its gradient written once (the first read of a 128k-class row may be
served from L2 on the second). Float32 rows compute in float32 (`expf`, no fast-math) with
float64 row sums; float64 rows in float64. Ignored rows get a zero gradient and loss 0 (their
`lse` is still computed when there is a z-loss: the caller checks its overflow for every row).
An all -inf row gets `shift = 0` and `log_sum = -inf`: its loss is not finite, which
`finish_rows` rejects, as on the other paths.

CuPy compiles the source on the first call per dtype (NVRTC, then CuPy's on-disk kernel cache)
and is imported only then: `import service` never imports CuPy.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import numpy as np

from service.engine._namespace import Array, array_namespace

CROSS_ENTROPY: Final = 0
FOCAL: Final = 1
POLY1: Final = 2

KERNEL_NAMES: Final = {"float32": "softmax_rows_f32", "float64": "softmax_rows_f64"}
# The logits' dtypes `softmax_rows` takes as they are (callers need not widen them first), and
# the dtype each computes in: that of the gradient and of the option vectors.
COMPUTE_DTYPES: Final = {
    "float16": "float32",
    "bfloat16": "float32",
    "float32": "float32",
    "float64": "float64",
}
NATIVE_INPUT_DTYPES: Final = frozenset(COMPUTE_DTYPES)
MAX_BLOCK: Final = 1024  # threads per block (one row); at least one warp, a power of two

# Every block-wide step is reached by all threads of the block (the branches around them depend
# on the row or on kernel arguments only): `block_reduce` needs it, and so does
# tests/test_engine_fused_cupy.py, which runs this source on the CPU with threads for lanes.
SOURCE: Final = r"""
#define CROSS_ENTROPY 0
#define FOCAL 1
#define POLY1 2

template <typename T> struct Real;
template <> struct Real<float> {
    __device__ static float neg_inf() { return __int_as_float(0xff800000); }
    __device__ static float exp(float v) { return expf(v); }
};
template <> struct Real<double> {
    __device__ static double neg_inf() { return __longlong_as_double(0xfff0000000000000ULL); }
    __device__ static double exp(double v) { return ::exp(v); }
};

struct MaxOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};
struct SumOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a + b; }
};

template <typename V, typename Op> __device__ V warp_reduce(V v, Op op) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// The reduction over the block, returned to every thread: each warp reduces its lanes, lane 0
// stores the warp's value, and every warp then reduces those (no broadcast step needed).
template <typename V, typename Op>
__device__ V block_reduce(V v, V* partials, Op op, V identity) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    if (lane == 0) partials[warp] = v;
    __syncthreads();
    const int n_warps = (blockDim.x + 31) >> 5;
    v = lane < n_warps ? partials[lane] : identity;
    v = warp_reduce(v, op);
    __syncthreads();  // `partials` is written again by the next reduction
    return v;
}

// (loss, s = -dL/d log p_y) of focal or poly-1: `_fused._label_loss`, formula for formula.
__device__ void label_loss(int kind, double param, double log_p, double* loss, double* s) {
    if (kind == FOCAL) {
        const double gamma = param;
        const double p = exp(log_p);
        const double one_minus_p = -expm1(log_p);  // exact for p near 1
        const double modulator = pow(one_minus_p, gamma);  // pow(0, 0) = 1
        const double r = one_minus_p > 0 ? -log_p / one_minus_p : 1.0;  // -> 1 at p = 1
        const double p_r = p == 0 ? 0.0 : p * r;  // 0 * inf at p = 0: the limit 0
        *loss = modulator * -log_p;
        *s = modulator * (1 + gamma * p_r);
    } else {  // POLY1
        const double epsilon = param;
        *loss = -log_p - epsilon * expm1(log_p);
        *s = 1 + epsilon * exp(log_p);
    }
}

template <typename T>
__device__ void softmax_rows(
    const T* x, const long long* y, const bool* valid, long long n_classes, int kind,
    const T* at_label, const T* total, const T* spread, int smoothing, double z_loss,
    double param, const T* alpha, int weighted, double grad_scale, double* per_sample,
    double* lse, T* grad
) {
    __shared__ T partial_t[32];
    __shared__ double partial_d[32];
    const long long i = blockIdx.x;
    const T* row = x + i * n_classes;
    T* out = grad + i * n_classes;
    const long long stride = blockDim.x;
    const long long first = threadIdx.x;
    const T neg_inf = Real<T>::neg_inf();
    const bool counts = valid[i];

    if (!counts && z_loss == 0) {  // an ignored row: nothing to compute
        for (long long c = first; c < n_classes; c += stride) out[c] = T(0);
        if (threadIdx.x == 0) {
            per_sample[i] = 0.0;
            lse[i] = 0.0;
        }
        return;
    }

    // 1. running maximum and float64 sum of exp(x - maximum), per thread, then per block
    T m = neg_inf;
    double s = 0.0;
    for (long long c = first; c < n_classes; c += stride) {
        const T v = row[c];
        if (v > m) {
            s = s * ::exp((double)m - (double)v) + 1.0;  // the first time: 0 * exp(-inf) = 0
            m = v;
        } else if (m > neg_inf) {  // else v = m = -inf: adds 0 (and no -inf - -inf)
            s += (double)Real<T>::exp(v - m);
        }
    }
    const T row_max = block_reduce(m, partial_t, MaxOp(), neg_inf);
    // exp(m - row_max) in float64: exactly 1 for the thread that holds the maximum
    const double scaled = m > neg_inf ? s * ::exp((double)m - (double)row_max) : 0.0;
    const double exp_sum = block_reduce(scaled, partial_d, SumOp(), 0.0);
    const T shift = row_max > neg_inf ? row_max : T(0);  // all -inf: no inf - inf
    const double log_sum = log1p(exp_sum - 1.0);  // -inf when every logit is -inf
    const double row_lse = (double)shift + log_sum;

    if (!counts) {  // ignored, but its lse is checked for a z-loss overflow
        for (long long c = first; c < n_classes; c += stride) out[c] = T(0);
        if (threadIdx.x == 0) {
            per_sample[i] = 0.0;
            lse[i] = row_lse;
        }
        return;
    }

    // 2. the row's loss terms and gradient factor (every thread computes the same), one pass
    const long long label = y[i];
    const T shifted_at_label = row[label] - shift;
    double loss = 0.0;
    double scale;
    T mass;
    if (kind == CROSS_ENTROPY) {
        mass = at_label[i];
        scale = (double)total[i];
        if (z_loss != 0) scale += (2 * z_loss) * row_lse;
    } else {
        double s_label;
        label_loss(kind, param, (double)shifted_at_label - log_sum, &loss, &s_label);
        if (weighted) {
            const T alpha_y = alpha[label];
            s_label = (double)alpha_y * s_label;
            loss = alpha_y == 0 ? 0.0 : (double)alpha_y * loss;  // alpha_y = 0 at -inf: 0
        }
        mass = (T)s_label;
        scale = (double)mass;
    }
    const T factor = (T)(scale / exp_sum);
    double dot = 0.0;
    for (long long c = first; c < n_classes; c += stride) {
        const T v = row[c];
        const T shifted = v - shift;
        T g = factor * Real<T>::exp(shifted);
        if (smoothing) {
            const T w = spread[c];
            g = g - w;
            if (w != 0) dot += (double)w * (double)shifted;  // a zero weight adds 0 at -inf
        }
        if (c == label) g = g - mass;
        out[c] = g * (T)grad_scale;
    }

    // 3. the loss of the row
    if (smoothing) dot = block_reduce(dot, partial_d, SumOp(), 0.0);
    if (threadIdx.x == 0) {
        if (kind == CROSS_ENTROPY) {
            loss = (double)total[i] * log_sum;
            if (smoothing) loss -= dot;
            if (mass != 0) loss -= (double)(mass * shifted_at_label);  // no mass on -inf: 0
        }
        per_sample[i] = loss;
        lse[i] = row_lse;
    }
}

#define SOFTMAX_ROWS_KERNEL(NAME, T)                                                          \
    extern "C" __global__ void NAME(                                                          \
        const T* x, const long long* y, const bool* valid, long long n_classes, int kind,     \
        const T* at_label, const T* total, const T* spread, int smoothing, double z_loss,     \
        double param, const T* alpha, int weighted, double grad_scale, double* per_sample,    \
        double* lse, T* grad                                                                  \
    ) {                                                                                       \
        softmax_rows<T>(x, y, valid, n_classes, kind, at_label, total, spread, smoothing,     \
                        z_loss, param, alpha, weighted, grad_scale, per_sample, lse, grad);   \
    }

SOFTMAX_ROWS_KERNEL(softmax_rows_f32, float)
SOFTMAX_ROWS_KERNEL(softmax_rows_f64, double)
"""


@functools.cache
def _kernel(dtype_name: str) -> Any:
    """The compiled kernel for rows of `dtype_name` (CuPy compiles on first launch, once)."""
    import cupy  # only here: a CuPy array reached this module, so CuPy is already imported

    return cupy.RawKernel(SOURCE, KERNEL_NAMES[dtype_name], options=("--std=c++14",))


def block_size(n_classes: int) -> int:
    """Threads per row: about 8 classes per thread, one warp to `MAX_BLOCK`, a power of two."""
    wanted = max(32, -(-n_classes // 8))
    return min(MAX_BLOCK, 1 << (wanted - 1).bit_length())


def input_dtype_name(x: Array, bfloat16_bits: bool = False) -> str:
    """The dtype of the logits `x` as the kernel reads them: `bfloat16` for a uint16 array
    flagged `bfloat16_bits` (CuPy has no bfloat16 dtype) or an ml_dtypes bfloat16 array (NumPy),
    else `x.dtype`'s name. ValueError for a dtype not in `NATIVE_INPUT_DTYPES`."""
    name = str(np.dtype(x.dtype).name)
    if bfloat16_bits:
        if name != "uint16":
            raise ValueError(f"bfloat16_bits: expected a uint16 array of bits, got {name}")
        name = "bfloat16"
    if name not in NATIVE_INPUT_DTYPES:
        raise ValueError(f"the CUDA kernel reads {sorted(NATIVE_INPUT_DTYPES)} rows, not {name}")
    return name


def softmax_rows(
    x: Array,
    y: Array,
    valid: Array,
    *,
    kind: int,
    at_label: Array | None = None,
    total: Array | None = None,
    spread: Array | None = None,
    z_loss: float = 0.0,
    param: float = 0.0,
    alpha: Array | None = None,
    grad_scale: float = 1.0,
    bfloat16_bits: bool = False,
) -> tuple[Array, Array, Array]:
    """Run the kernel on rows `x` [M, C]: (per_sample [M] float64, lse [M] float64, grad [M, C]).

    As `_fused.softmax_rows`: where `valid` is False, `per_sample` is 0, `lse` 0 unless
    `z_loss` > 0, and the gradient row is 0. The gradient is multiplied by `grad_scale` (the
    1 / divisor of `mean`) as it is written; `per_sample` and `lse` are not. `x` may be of any
    dtype in `NATIVE_INPUT_DTYPES` (bfloat16: see `input_dtype_name`); 16-bit rows compute in
    float32 and get a float32 gradient, and the option vectors are in the compute dtype.
    Everything stays on the device.
    """
    xp = array_namespace(x)
    name = input_dtype_name(x, bfloat16_bits)
    dtype = np.dtype(COMPUTE_DTYPES[name])
    if name == "float16":  # until the kernel reads 16-bit rows itself
        x = x.astype(np.float32)
    elif name == "bfloat16":  # the bits of a bfloat16 are the top half of a float32's
        x = (x.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    kernel = _kernel(dtype.name)
    n_rows, n_classes = x.shape
    empty = xp.empty(0, dtype=dtype)  # an absent option: a pointer the kernel never reads

    def vector(array: Array | None) -> Array:
        return empty if array is None else xp.ascontiguousarray(array, dtype=dtype)

    per_sample = xp.empty(n_rows, dtype=np.float64)
    lse = xp.empty(n_rows, dtype=np.float64)
    grad = xp.empty((n_rows, n_classes), dtype=dtype)
    if n_rows == 0:
        return per_sample, lse, grad
    arguments = (
        xp.ascontiguousarray(x),
        xp.ascontiguousarray(y, dtype=np.int64),
        xp.ascontiguousarray(valid, dtype=np.bool_),
        np.int64(n_classes),
        np.int32(kind),
        vector(at_label),
        vector(total),
        vector(spread),
        np.int32(spread is not None),
        np.float64(z_loss),
        np.float64(param),
        vector(alpha),
        np.int32(alpha is not None),
        np.float64(grad_scale),
        per_sample,
        lse,
        grad,
    )
    kernel((n_rows,), (block_size(n_classes),), arguments)
    return per_sample, lse, grad


def warm_up() -> None:
    """Compile (or load from CuPy's cache) the kernel for float32 and float64 rows."""
    import cupy

    for dtype in (np.float32, np.float64):
        x = cupy.zeros((2, 3), dtype=dtype)
        labels = cupy.zeros(2, dtype=np.int64)
        valid = cupy.ones(2, dtype=np.bool_)
        ones = cupy.ones(2, dtype=dtype)
        softmax_rows(x, labels, valid, kind=CROSS_ENTROPY, at_label=ones, total=ones)
