// Cross-entropy, focal and poly-1 over rows of logits, with their gradients: the CUDA kernels
// of service/engine/_kernels/cuda.py, which explains the design. CuPy compiles this file with
// NVRTC on the first call per dtype.
//
#define CROSS_ENTROPY 0
#define FOCAL 1
#define POLY1 2
#define MAX_BLOCK 512  // threads per block; 2 blocks of 512 fit an SM at <= 64 registers

// How a row's values are stored (`Storage`) and computed with (`Real`); `real` widens exactly.
// `UNROLL`: the 16-byte loads a thread issues before using the first (4 float32 vectors, but
// only 2 of 8 16-bit values: their widened values and gradients take twice the registers).
struct F32 {
    enum { UNROLL = 4 };
    typedef float Storage;
    typedef float Real;
    __device__ static float real(float v) { return v; }
};
struct F64 {
    enum { UNROLL = 4 };
    typedef double Storage;
    typedef double Real;
    __device__ static double real(double v) { return v; }
};
struct BF16 {  // the bits of a bfloat16 are the top half of a float32's
    enum { UNROLL = 2 };
    typedef unsigned short Storage;
    typedef float Real;
    __device__ static float real(unsigned short bits) {
        return __int_as_float((int)((unsigned)bits << 16));
    }
};
struct F16 {  // IEEE binary16 from its bits: no header needed (NVRTC), exact
    enum { UNROLL = 2 };
    typedef unsigned short Storage;
    typedef float Real;
    __device__ static float real(unsigned short bits) {
        const unsigned sign = (unsigned)(bits & 0x8000u) << 16;
        const unsigned exponent = (bits >> 10) & 0x1fu;
        const unsigned mantissa = bits & 0x3ffu;
        if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
            const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
            return sign ? -magnitude : magnitude;
        }
        const unsigned biased = exponent == 0x1fu ? 0xffu : exponent + 112u;  // inf, NaN stay
        return __int_as_float((int)(sign | (biased << 23) | (mantissa << 13)));
    }
};

template <typename T> struct Math;
template <> struct Math<float> {
    __device__ static float neg_inf() { return __int_as_float(0xff800000); }
    __device__ static float exp(float v) { return expf(v); }
};
template <> struct Math<double> {
    __device__ static double neg_inf() { return __longlong_as_double(0xfff0000000000000ULL); }
    __device__ static double exp(double v) { return ::exp(v); }
};

// N values of one row held together: a 16-byte-aligned one is loaded or stored with one vector
// instruction per 16 bytes (ld.global.v4 / st.global.v4), the widest a thread has.
template <typename T, int N> struct alignas(16) Pack {
    T v[N];
};

// Marks each vector access: nothing on the GPU (where a misaligned one faults); the CPU
// emulation in tests/engine/test_fused_cuda.py defines it to count those off a 16-byte boundary.
#ifndef VECTOR_ACCESS
#define VECTOR_ACCESS(pointer)
#endif

struct MaxOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};
struct SumOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a + b; }
};

// The reduction over the block, returned to every thread: each warp reduces its lanes, lane 0
// stores the warp's value, and every warp then reduces those (no broadcast step needed).
template <typename V, typename Op>
__device__ V block_reduce(V v, V* partials, Op op, V identity) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    if (lane == 0) partials[warp] = v;
    __syncthreads();
    const int n_warps = (blockDim.x + 31) >> 5;
    v = lane < n_warps ? partials[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    __syncthreads();  // `partials` is written again by the next reduction
    return v;
}

// The reduction over the `lanes` threads of a row, returned to each of them: `lanes` consecutive
// lanes of a warp (a power of two up to 32: xor partners stay in the group), or the whole block.
// Every thread of the block calls it the same number of times: `lanes` is the kernel's.
template <typename V, typename Op>
__device__ V group_reduce(V v, int lanes, V* partials, Op op, V identity) {
    if (lanes > 32) return block_reduce(v, partials, op, identity);
    for (int offset = lanes >> 1; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// A row of `n` elements as [0, head) up to its first 16-byte boundary, `vectors` whole 16-byte
// vectors, and [body_end, n): any part may be empty (a short row, a row at any offset).
// Columns are `int`: fewer registers than 64-bit indices (`softmax_rows` checks n < 2^31).
struct Span {
    int n, head, vectors, body_end;
};
template <typename S> __device__ Span split(const S* row, int n) {
    const int per_vector = 16 / sizeof(S);
    int head = (int)(((16 - ((unsigned long long)row & 15)) & 15) / sizeof(S));
    head = head < n ? head : n;
    const int vectors = (n - head) / per_vector;
    Span span = {n, head, vectors, head + vectors * per_vector};
    return span;
}

template <typename Format, int N>
__device__ Pack<typename Format::Real, N> widen(const Pack<typename Format::Storage, N>& stored) {
    Pack<typename Format::Real, N> values;
#pragma unroll
    for (int k = 0; k < N; ++k) values.v[k] = Format::real(stored.v[k]);
    return values;
}

// `visit(c, values)` for every element of the row this thread owns, `values` holding the
// elements from column c: the head and tail one at a time, the vectors `Format::UNROLL` at a
// time (lane k of the group takes vectors k, k + lanes, ...: a warp reads contiguous memory),
// their loads all issued before the first is used: UNROLL x 16 bytes in flight per thread.
template <typename Format, typename Visitor>
__device__ void walk(const typename Format::Storage* row, const Span& span, int lane, int lanes,
                     Visitor& visit) {
    typedef typename Format::Storage S;
    const int N = 16 / sizeof(S);
    const int UNROLL = Format::UNROLL;
    typedef Pack<S, 16 / sizeof(S)> Vector;
    for (int c = lane; c < span.head; c += lanes) {
        Pack<S, 1> one = {{row[c]}};
        visit(c, widen<Format>(one));
    }
    for (int c = span.body_end + lane; c < span.n; c += lanes) {
        Pack<S, 1> one = {{row[c]}};
        visit(c, widen<Format>(one));
    }
    const Vector* vectors = reinterpret_cast<const Vector*>(row + span.head);
    int k = lane;
    for (; k + (UNROLL - 1) * lanes < span.vectors; k += UNROLL * lanes) {
        Vector loaded[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            VECTOR_ACCESS(vectors + k + u * lanes);
            loaded[u] = vectors[k + u * lanes];
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            visit(span.head + (k + u * lanes) * N, widen<Format>(loaded[u]));
        }
    }
    for (; k < span.vectors; k += lanes) {
        VECTOR_ACCESS(vectors + k);
        visit(span.head + k * N, widen<Format>(vectors[k]));
    }
}

// Pass 1: this thread's running maximum `m` and float64 sum `s` of exp(x - m).
template <typename T> struct SumExp {
    T m;
    double s;
    template <int N> __device__ void operator()(int, const Pack<T, N>& x) {
        T top = x.v[0];
#pragma unroll
        for (int k = 1; k < N; ++k) top = x.v[k] > top ? x.v[k] : top;
        if (top > m) {  // rare after the first vectors; from m = -inf: s = 0 * exp(-inf) = 0
            s *= ::exp((double)m - (double)top);
            m = top;
        }
        const T base = m > Math<T>::neg_inf() ? m : T(0);  // all -inf so far: exp(-inf) = 0
#pragma unroll
        for (int k = 0; k < N; ++k) s += (double)Math<T>::exp(x.v[k] - base);
    }
};

// Pass 2: the gradient of a counted row, and its part of the label-smoothing dot product.
template <typename T> struct WriteGradient {
    T* out;
    const T* spread;
    bool vector_out, vector_spread;  // out + head, spread + head 16-byte aligned
    int smoothing;
    T shift, factor, mass, scale;
    int label;
    double dot;
    template <int N> __device__ void operator()(int c, const Pack<T, N>& x) {
        Pack<T, N> w;
        if (smoothing) {
            if (N > 1 && vector_spread) {
                VECTOR_ACCESS(spread + c);
                w = *reinterpret_cast<const Pack<T, N>*>(spread + c);
            } else {
#pragma unroll
                for (int k = 0; k < N; ++k) w.v[k] = spread[c + k];
            }
        }
        Pack<T, N> g;
#pragma unroll
        for (int k = 0; k < N; ++k) {
            const T shifted = x.v[k] - shift;
            T value = factor * Math<T>::exp(shifted);
            if (smoothing) {
                value = value - w.v[k];
                if (w.v[k] != 0) dot += (double)w.v[k] * (double)shifted;  // 0 at -inf
            }
            if (c + k == label) value = value - mass;
            g.v[k] = value * scale;
        }
        if (N > 1 && vector_out) {
            VECTOR_ACCESS(out + c);
            *reinterpret_cast<Pack<T, N>*>(out + c) = g;
        } else {
#pragma unroll
            for (int k = 0; k < N; ++k) out[c + k] = g.v[k];
        }
    }
};

template <typename T> __device__ bool aligned16(const T* p) {
    return ((unsigned long long)p & 15) == 0;
}

// (loss, s = -dL/d log p_y) of focal or poly-1: `label_terms.py`, formula for formula.
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

// Rows of `n_classes` values, `lanes` threads to a row (see the module docstring). Every
// thread reaches every group reduction: the branches around them depend on kernel arguments
// only, and a thread past the last row (or of an ignored row) walks an empty span instead of
// leaving. tests/engine/test_fused_cuda.py relies on it too (it runs this source on the CPU
// with one thread per lane).
template <typename Format>
__device__ void softmax_rows(
    const typename Format::Storage* __restrict__ x, const long long* __restrict__ y,
    const bool* __restrict__ valid, long long n_rows, int n_classes, int lanes, int kind,
    const typename Format::Real* __restrict__ at_label,
    const typename Format::Real* __restrict__ total,
    const typename Format::Real* __restrict__ spread, int smoothing, double z_loss, double param,
    const typename Format::Real* __restrict__ alpha, int weighted, double grad_scale,
    double* __restrict__ per_sample, double* __restrict__ lse,
    typename Format::Real* __restrict__ grad
) {
    typedef typename Format::Real T;
    __shared__ T partial_t[32];
    __shared__ double partial_d[32];
    const int lane = threadIdx.x & (lanes - 1);
    const long long i = (long long)blockIdx.x * (blockDim.x / lanes) + threadIdx.x / lanes;
    const bool live = i < n_rows;
    const bool counts = live && valid[i];
    const bool needs_lse = counts || (live && z_loss != 0);  // an ignored row's, for the z-loss
    const typename Format::Storage* row = x + (live ? i : 0) * n_classes;
    T* out = grad + (live ? i : 0) * n_classes;
    const T neg_inf = Math<T>::neg_inf();

    const Span span = split(row, n_classes);
    const Span nothing = {0, 0, 0, 0};

    // 1. running maximum and float64 sum of exp(x - maximum), per thread, then per row
    SumExp<T> sum_exp = {neg_inf, 0.0};
    walk<Format>(row, needs_lse ? span : nothing, lane, lanes, sum_exp);
    const T m = sum_exp.m;
    const T row_max = group_reduce(m, lanes, partial_t, MaxOp(), neg_inf);
    // exp(m - row_max) in float64: exactly 1 for the thread that holds the maximum
    const double scaled = m > neg_inf ? sum_exp.s * ::exp((double)m - (double)row_max) : 0.0;
    const double exp_sum = group_reduce(scaled, lanes, partial_d, SumOp(), 0.0);
    const T shift = row_max > neg_inf ? row_max : T(0);  // all -inf: no inf - inf
    const double log_sum = log1p(exp_sum - 1.0);  // -inf when every logit is -inf
    const double row_lse = (double)shift + log_sum;

    // 2. the row's loss terms and gradient factor (each lane computes the same), one pass
    double loss = 0.0;
    WriteGradient<T> write = {out, spread, aligned16(out + span.head),
                              aligned16(spread + span.head), smoothing, shift, T(0), T(0),
                              (T)grad_scale, counts ? (int)y[i] : 0, 0.0};
    T shifted_at_label = T(0);
    if (counts) {
        shifted_at_label = Format::real(row[write.label]) - shift;
        double scale;
        if (kind == CROSS_ENTROPY) {
            write.mass = at_label[i];
            scale = (double)total[i];
            if (z_loss != 0) scale += (2 * z_loss) * row_lse;
        } else {
            double s_label;
            label_loss(kind, param, (double)shifted_at_label - log_sum, &loss, &s_label);
            if (weighted) {
                const T alpha_y = alpha[write.label];
                s_label = (double)alpha_y * s_label;
                loss = alpha_y == 0 ? 0.0 : (double)alpha_y * loss;  // alpha_y = 0 at -inf: 0
            }
            write.mass = (T)s_label;
            scale = (double)write.mass;
        }
        write.factor = (T)(scale / exp_sum);
        walk<Format>(row, span, lane, lanes, write);
    } else if (live) {  // ignored: a zero gradient
        for (int c = lane; c < n_classes; c += lanes) out[c] = T(0);
    }

    // 3. the loss of the row
    const double dot = smoothing ? group_reduce(write.dot, lanes, partial_d, SumOp(), 0.0) : 0.0;
    if (live && lane == 0) {
        if (counts && kind == CROSS_ENTROPY) {
            const T mass = write.mass;
            loss = (double)total[i] * log_sum;
            if (smoothing) loss -= dot;
            if (mass != 0) loss -= (double)(mass * shifted_at_label);  // no mass on -inf: 0
        }
        per_sample[i] = loss;
        lse[i] = needs_lse ? row_lse : 0.0;
    }
}

#define SOFTMAX_ROWS_KERNEL(NAME, FORMAT)                                                     \
    extern "C" __global__ void __launch_bounds__(MAX_BLOCK, 2) NAME(                          \
        const FORMAT::Storage* x, const long long* y, const bool* valid, long long n_rows,    \
        int n_classes, int lanes, int kind, const FORMAT::Real* at_label,               \
        const FORMAT::Real* total, const FORMAT::Real* spread, int smoothing, double z_loss,  \
        double param, const FORMAT::Real* alpha, int weighted, double grad_scale,             \
        double* per_sample, double* lse, FORMAT::Real* grad                                   \
    ) {                                                                                       \
        softmax_rows<FORMAT>(x, y, valid, n_rows, n_classes, lanes, kind, at_label, total,    \
                             spread, smoothing, z_loss, param, alpha, weighted, grad_scale,   \
                             per_sample, lse, grad);                                          \
    }

SOFTMAX_ROWS_KERNEL(softmax_rows_f32, F32)
SOFTMAX_ROWS_KERNEL(softmax_rows_f64, F64)
SOFTMAX_ROWS_KERNEL(softmax_rows_f16, F16)
SOFTMAX_ROWS_KERNEL(softmax_rows_bf16, BF16)
