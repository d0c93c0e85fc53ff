"""Cross-entropy, focal and poly-1 with their gradients: one compiled kernel (numba).

The reference code (`_cross_entropy.py`, `_softmax_family.py`) makes about ten passes over `[M, C]`
arrays and allocates temporaries of that size; NumPy's `exp` bounds it. This kernel runs over the
rows in parallel (`prange`) and, for each row:

1. finds the maximum (`shift`) through integer keys of the floats, a reduction that LLVM
   vectorises without fast-math flags (it reads the row from memory);
2. writes `exp(x - shift)` into the row of the gradient and sums it in float64;
3. computes the loss of the row, and turns the exponentials into `k * exp - spread` in place,
   subtracts `mass` at y, and multiplies by the caller's `grad_scale` (`mean`'s 1 / divisor, see
   `_reduction`): the gradient is written once, already scaled, with the bits `reduce_loss`'s
   own pass would give it.

Steps 2 and 3 find the row and its gradient row in the core's cache (a 128k-class float32 row and
its gradient take 1 MB of a 2 MB L2): each row is read from memory once and its gradient written
once, the floor of any CE + gradient. The cost left is the exp (0.43 ns per element per core).

The numbers are the reference's, operation for operation: float32 rows compute in float32 with
a float64 row sum, `log_sum = log1p(sum - 1)` (the largest term is exactly 1), per-sample values
from the shifted logit `x_y - shift`, no contribution (and no gradient) from a -inf logit of a
class without target mass, focal's and poly-1's `s = -dL/d log p_y` as `_softmax_family`. What
differs, within 1e-7 relative for float32 rows and 1e-15 for float64 ones:

- float32 rows use `_exp_f32` (Cephes' `expf`, a polynomial the compiler vectorises, within 1 ulp;
  NumPy's float32 `exp` is within 2 ulp): numba's library `exp` is not vectorised, and so only
  1.0-1.5x faster than NumPy (PERF-NOTES.md). float64 rows use the C library's `exp`.
- the row sums and the label-smoothing dot product are added in another order, in float64.

float16 and bfloat16 rows are read as they are (`NATIVE_INPUT_DTYPES`): numba has no arithmetic
for them, so they arrive as their bits (int16 / uint16, `_HALF_BITS`) and each element is widened
to float32 where it is read (`_widen`, exact); the maximum is found on the bits. They compute as
float32 rows, bit for bit, with a float32 gradient, and no float32 copy of the logits is made.

`binary_rows` is binary cross-entropy with logits (`_binary_rows`) or the sigmoid focal loss
(`_sigmoid_focal_rows`), one pass per element; float32 elements use polynomials for exp and log1p
only, so that LLVM vectorises the loop.

Ignored rows are skipped (`finish_rows` zeroes their gradient rows), except that with a z-loss
their log-sum-exp is computed, as the reference checks the z-loss term of every row for overflow.

Everything is compiled once per process for each native dtype of rows, or loaded from numba's
on-disk cache (`cache=True`, see `_compiled`): seconds to compile, under one to load;
`warm_up()` does it ahead of the first request. This module imports numba: reach it only
through `_engine_path`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, Final, cast

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from service.buffers import ArrayPool

CROSS_ENTROPY: Final = 0
FOCAL: Final = 1
POLY1: Final = 2

# The logits' dtypes the kernels read as they are, and the dtype each computes in (that of the
# gradient and the option vectors): callers widen nothing else first (`_dtypes`, `_rows`).
COMPUTE_DTYPES: Final = {
    "float16": "float32",
    "bfloat16": "float32",
    "float32": "float32",
    "float64": "float64",
}
NATIVE_INPUT_DTYPES: Final = frozenset(COMPUTE_DTYPES)


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`numba.njit(cache=True, **options)`, or without the cache where numba finds no writable
    directory for it (a read-only install and home; NUMBA_CACHE_DIR names one): the kernels then
    compile in every process instead of failing to import."""

    def decorate(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(function)

    return decorate


# --- bit-level helpers (LLVM IR): numba has no scalar bitcast --------------------------------


def _intrinsic(typer: Callable[..., Any]) -> Any:
    """numba's `intrinsic`; the result is called without the typer's first argument."""
    return intrinsic(typer)


def _flip_negatives(builder: ir.IRBuilder, bits: ir.Value, width: int) -> ir.Value:
    """`bits ^ ((bits >> (width - 1)) & 0x7f..f)`: reverses the order of negative floats."""
    sign = builder.ashr(bits, ir.Constant(bits.type, width - 1))
    return builder.xor(bits, builder.and_(sign, ir.Constant(bits.type, (1 << (width - 1)) - 1)))


def _is_half(numba_type: Any) -> bool:
    """The 16-bit integer types that carry the bits of float16 and bfloat16 rows (`_HALF_BITS`)."""
    return isinstance(numba_type, types.Integer) and cast(Any, numba_type).bitwidth == 16


@_intrinsic
def _ordered_key(typingctx: Any, value: Any) -> Any:
    """An integer whose signed order is the order of the float `value` (-inf lowest, no NaN).

    `value` may also be the bits of a float16 or bfloat16 (sign, exponent, mantissa too).
    LLVM vectorises integer max reductions; a float max it vectorises only under fast-math
    no-NaN flags, which this module does not use.
    """
    if not (isinstance(value, types.Float) or _is_half(value)):
        return None
    width = value.bitwidth

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        return _flip_negatives(builder, builder.bitcast(args[0], ir.IntType(width)), width)

    return types.Integer.from_bitwidth(width)(value), codegen


@_intrinsic
def _from_ordered_key(typingctx: Any, key: Any, like: Any) -> Any:
    """The float (or 16-bit float bits) of `like`'s type whose `_ordered_key` is `key`."""
    if not (isinstance(like, types.Float) or _is_half(like)):
        return None
    width = like.bitwidth

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        bits = _flip_negatives(builder, args[0], width)
        return builder.bitcast(bits, context.get_value_type(like))

    return like(key, like), codegen


@_intrinsic
def _f32_from_bits(typingctx: Any, bits: Any) -> Any:
    """The float32 whose bits are the low 32 of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None
    width = cast(Any, bits).bitwidth

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        i32 = ir.IntType(32)
        value = args[0]
        if width > 32:
            value = builder.trunc(value, i32)
        elif width < 32:
            value = builder.zext(value, i32)
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@_intrinsic
def _pow2_f32(typingctx: Any, n: Any) -> Any:
    """2**n as a float32 for an integral float32 n in [-126, 127]: the exponent bits `n + 127`."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        i32 = ir.IntType(32)
        biased = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@_intrinsic
def _cast(typingctx: Any, value: Any, like: Any) -> Any:
    """`value` converted to the type of `like` (the compute dtype of a row), as NumPy's astype."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        return context.cast(builder, args[0], signature.args[0], signature.return_type)

    return like(value, like), codegen


# --- exp -------------------------------------------------------------------------------------

_F32 = np.float32
_LOG2E = _F32(1.44269504088896341)
_LN2_HI = _F32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI with 9 significant bits: n * it
_LN2_LO = _F32(-2.12194440e-4)  # is exact for |n| < 2^15 (Cody & Waite range reduction)
_EXP_P = tuple(
    _F32(c)
    for c in (
        1.9875691500e-4,
        1.3981999507e-3,
        8.3334519073e-3,
        4.1665795894e-2,
        1.6666665459e-1,
        5.0000001201e-1,
    )
)
# Below this, exp is under 1.7e-38 and returned as 0 (no subnormals: they are slow and the
# reference's subnormal values change no loss or gradient beyond 1e-37 absolute).
EXP_F32_FLUSH: Final = _F32(-87.0)
_HALF = _F32(0.5)
_ONE = _F32(1.0)
_ZERO = _F32(0.0)


@numba.njit(inline="always")
def _exp_f32(t: Any) -> Any:
    """exp(t) for float32 t <= 0 (-inf included): Cephes `expf`, relative error < 1.2e-7.

    t = n ln2 + r with n = round(t / ln 2), |r| <= ln2 / 2 (r computed exactly in two steps),
    exp(r) from Cephes' degree-7 minimax polynomial (peak relative error 4.2e-9 in theory),
    2^n from the exponent bits. Measured against float64 `np.exp` over [-87, 0]: < 1 ulp.
    """
    small = t < EXP_F32_FLUSH  # also -inf; the clamp keeps n >= -126 (a normal 2^n)
    t = EXP_F32_FLUSH if small else t
    n = _F32(np.int32(t * _LOG2E - _HALF))  # round(t * log2 e) for t <= 0 (truncation + 1/2)
    r = t - n * _LN2_HI
    r = r - n * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + _ONE
    value = p * _pow2_f32(n)
    return _ZERO if small else value


def _exp_nonpositive(t: Any) -> Any:
    """exp(t) for t <= 0 in the type of t: resolved by numba per type (see the overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(_exp_nonpositive, inline="always")
def _exp_nonpositive_impl(t: Any) -> Callable[[Any], Any] | None:
    # numba requires the implementation's parameters to match this function's, annotations too
    if t == types.float32:

        def polynomial(t: Any) -> Any:
            return _exp_f32(t)

        return polynomial
    if t == types.float64:

        def library(t: Any) -> Any:
            return math.exp(t)  # the C library: accurate to < 1 ulp

        return library
    return None


# --- 16-bit rows ----------------------------------------------------------------------------
# numba has no float16 arithmetic on the CPU and no bfloat16 at all: such rows reach the kernel as
# their bits, viewed as the integer type of `_HALF_BITS` (the type says which format), and every
# element is widened to float32 where it is read, exactly (both formats are subsets of float32).

_HALF_BITS: Final = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.int16)}
_F16_EXP_MASK = np.uint32(0x7C00)
_F16_REBIAS = np.uint32((127 - 15) << 23)  # float16 exponent bias 15 -> float32's 127
_F16_MIN_NORMAL = np.float32(2.0**-14)


# Not inlined by numba (its IR check warns about the inlined selects), by LLVM all the same.
@_compiled(error_model="numpy")
def _f32_from_f16(bits: Any) -> Any:
    """The float16 of `bits` (int16) as a float32: subnormals, infinities and NaN included.

    Giesen's branch-free conversion: the exponent and mantissa move to float32's places and the
    exponent is rebiased; an inf / NaN exponent (31) becomes 255; a subnormal m 2^-24 is made from
    the normal float32 2^-14 (1 + m 2^-10) minus 2^-14, exactly (Sterbenz), zero included.
    """
    h = np.uint32(np.uint16(bits))
    magnitude_bits = h & np.uint32(0x7FFF)
    exponent = magnitude_bits & _F16_EXP_MASK
    moved = (magnitude_bits << np.uint32(13)) + _F16_REBIAS
    moved = moved + _F16_REBIAS if exponent == _F16_EXP_MASK else moved  # inf and NaN
    normal = _f32_from_bits(moved)
    subnormal = _f32_from_bits(moved + np.uint32(1 << 23)) - _F16_MIN_NORMAL
    magnitude = subnormal if exponent == 0 else normal
    return -magnitude if h & np.uint32(0x8000) else magnitude


def _widen(value: Any) -> Any:
    """An element as the kernel computes with it: resolved by numba per type (see the overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(_widen, inline="always")
def _widen_impl(value: Any) -> Callable[[Any], Any] | None:
    if isinstance(value, types.Float):

        def identity(value: Any) -> Any:
            return value

        return identity
    if value == types.uint16:  # bfloat16: the top half of a float32

        def bfloat16(value: Any) -> Any:
            return _f32_from_bits(np.uint32(value) << np.uint32(16))

        return bfloat16
    if value == types.int16:

        def float16(value: Any) -> Any:
            return _f32_from_f16(value)

        return float16
    return None


# --- passes over row i of a matrix ----------------------------------------------------------
# They index the matrix, not a row view: a view takes a reference (an atomic count shared by the
# threads) per row, which costs more than a 10-class row. Strict ones are inlined into the kernel.


@numba.njit(inline="always")
def _row_max(x: Any, i: int) -> Any:
    """The row's maximum, widened (16-bit rows: found on their bits, then widened once)."""
    top = _ordered_key(x[i, 0])
    for c in range(x.shape[1]):
        key = _ordered_key(x[i, c])
        top = key if key > top else top
    return _widen(_from_ordered_key(top, x[i, 0]))


# The gradient row from its exponentials: `(exp * factor - spread - mass e_label) * scale`, each
# step rounded in the row's dtype as the reference does it, then `reduce_loss` (`grad *= scale`):
# folding the scale in changes no bit. `v - 0` is `v` for every v, -0 included.


@numba.njit(inline="always")
def _scale(out: Any, i: int, factor: Any, label: int, mass: Any, scale: Any) -> None:
    zero = _cast(0.0, mass)
    for c in range(out.shape[1]):
        out[i, c] = (out[i, c] * factor - (mass if c == label else zero)) * scale


@numba.njit(inline="always")
def _scale_minus(
    out: Any, i: int, factor: Any, spread: Any, label: int, mass: Any, scale: Any
) -> None:
    zero = _cast(0.0, mass)
    for c in range(out.shape[1]):
        out[i, c] = (out[i, c] * factor - spread[c] - (mass if c == label else zero)) * scale


# Not inlined: these keep their own fast-math flags (LLVM still inlines them, flags and all).
# `contract` fuses the multiply-adds of the exp polynomial (0.7 -> 0.43 ns per element): each
# rounds once instead of twice, well inside the error bound of `_exp_f32`.
@_compiled(fastmath={"contract"}, error_model="numpy")
def _store_exp(x: Any, i: int, shift: Any, out: Any) -> None:
    for c in range(x.shape[1]):
        out[i, c] = _exp_nonpositive(_widen(x[i, c]) - shift)


# `reassoc` lets LLVM split these float64 sums into vector lanes: another summation order, no
# other change (they only add, and multiply by exact products).
@_compiled(fastmath={"reassoc"}, error_model="numpy")
def _row_sum(values: Any, i: int) -> float:
    total = 0.0
    for c in range(values.shape[1]):
        total += np.float64(values[i, c])
    return total


@_compiled(fastmath={"reassoc"}, error_model="numpy")
def _span_sum(values: Any, i: int, start: int, stop: int) -> float:
    """The float64 sum of `values[i, start:stop]` (apart from the loop that writes the values,
    whose vectorisation a strict float64 sum would prevent)."""
    total = 0.0
    for c in range(start, stop):
        total += np.float64(values[i, c])
    return total


@_compiled(fastmath={"reassoc"}, error_model="numpy")
def _shifted_dot(x: Any, i: int, shift: Any, weights: Any) -> float:
    """sum_c w_c (x_c - shift) of row i; a zero weight adds 0 even where x_c = -inf."""
    total = 0.0
    for c in range(x.shape[1]):
        w = weights[c]
        shifted = _widen(x[i, c]) - shift  # in the row's compute dtype, as the reference
        total += 0.0 if w == 0 else np.float64(w) * np.float64(shifted)
    return total


# --- the loss of one row from log p_y --------------------------------------------------------


@_compiled(fastmath=False, error_model="numpy")
def _label_loss(kind: int, param: float, log_p: float) -> tuple[float, float]:
    """(loss, s = -dL/d log p_y) of focal or poly-1, as `_softmax_family.focal` / `poly1`."""
    if kind == FOCAL:
        gamma = param
        p = math.exp(log_p)
        one_minus_p = -math.expm1(log_p)  # exact for p near 1
        modulator = one_minus_p**gamma  # 0^0 = 1
        r = -log_p / one_minus_p if one_minus_p > 0 else 1.0  # -log p / (1 - p) -> 1 at p = 1
        p_r = 0.0 if p == 0 else p * r  # 0 * inf at p = 0: the limit 0
        return modulator * -log_p, modulator * (1 + gamma * p_r)
    epsilon = param  # POLY1
    return -log_p - epsilon * math.expm1(log_p), 1 + epsilon * math.exp(log_p)


# --- the kernel ------------------------------------------------------------------------------


# One kernel, one set of argument types per compute dtype (absent options are empty arrays):
# a process compiles, or loads from the cache, exactly two versions.
@_compiled(parallel=True, fastmath=False, error_model="numpy", nogil=True)
def _softmax_rows(
    x: Any,
    y: Any,
    valid: Any,
    kind: int,
    at_label: Any,
    total: Any,
    spread: Any,
    z_loss: float,
    param: float,
    alpha: Any,
    grad_scale: float,
    per_sample: Any,
    lse: Any,
    grad: Any,
) -> None:
    """Per row: `per_sample` (float64, before any z-loss term), `lse` and `grad_scale` times the
    gradient (see module).

    CROSS_ENTROPY: target mass `at_label` at y plus `spread` (empty: none), of total `total`;
    FOCAL / POLY1: the loss of log p_y with `param` gamma / epsilon, focal's `alpha` (empty:
    none). Rows with `valid` False get neither loss nor gradient, nor `lse` unless z_loss > 0.
    """
    smoothing = spread.shape[0] > 0
    weighted = alpha.shape[0] > 0
    for i in prange(x.shape[0]):
        if not valid[i] and z_loss == 0:
            continue
        shift = _row_max(x, i)
        if not math.isfinite(shift):  # every logit -inf: exp is 0 everywhere, no inf - inf
            shift = _cast(0.0, shift)
        _store_exp(x, i, shift, grad)
        exp_sum = _row_sum(grad, i)  # >= 1: the largest term is exactly 1
        log_sum = math.log1p(exp_sum - 1)  # -inf when every logit is -inf
        lse[i] = shift + log_sum
        if not valid[i]:
            continue
        label = y[i]
        shifted_at_label = _widen(x[i, label]) - shift
        if kind == CROSS_ENTROPY:
            mass = at_label[i]
            loss = total[i] * log_sum
            if smoothing:
                loss -= _shifted_dot(x, i, shift, spread)
            loss -= 0.0 if mass == 0 else mass * shifted_at_label  # no mass on -inf: 0
            scale = np.float64(total[i])
            if z_loss:
                scale += (2 * z_loss) * lse[i]
        else:
            loss, s = _label_loss(kind, param, np.float64(shifted_at_label) - log_sum)
            if weighted:
                alpha_y = alpha[label]
                s = alpha_y * s
                loss = 0.0 if alpha_y == 0 else alpha_y * loss  # alpha_y = 0 at -inf: 0
            mass = _cast(s, shift)
            scale = mass
        factor = _cast(scale / exp_sum, shift)
        scale_out = _cast(grad_scale, shift)  # as `reduce_loss` casts its factor
        if smoothing:
            _scale_minus(grad, i, factor, spread, label, mass, scale_out)
        else:
            _scale(grad, i, factor, label, mass, scale_out)
        per_sample[i] = loss


# --- binary cross-entropy --------------------------------------------------------------------

# Elements per work item of `_binary_rows`: a row, or a piece of a long one (a 1-D batch is one
# row), so that both cores get work whatever the shape.
BINARY_CHUNK: Final = 4096
BINARY_CROSS_ENTROPY: Final = 0  # the `kind`s of `binary_rows`
SIGMOID_FOCAL: Final = 1
LABEL_OUTSIDE: Final = 1  # status bits of a work item: a label not in [0, 1] (or NaN)
NOT_FINITE: Final = 2  # a loss or gradient element not finite (or a NaN logit)


@numba.njit(inline="always")
def _positive_part(v: Any) -> Any:
    return v if v > 0 else _cast(0.0, v)  # max(v, 0); NaN logits are flagged separately


# log1p(e) = 2 atanh(s) with s = e / (2 + e) (no 1 + e to round), for e in [0, 1], s <= 1/3:
# 2 s (1 + s^2/3 + s^4/5 + ...), the terms to s^16 / 17 (< 2e-10 of the sum): float32-exact.
_ATANH_P = tuple(_F32(1.0 / (2 * k + 1)) for k in range(8, -1, -1))


@numba.njit(inline="always")
def _log1p_unit_f32(e: Any) -> Any:
    s = e / (_F32(2.0) + e)
    s2 = s * s
    total = _ZERO
    for coefficient in _ATANH_P:  # Horner, highest power first (unrolled: a constant tuple)
        total = total * s2 + coefficient
    return _F32(2.0) * s * total


def _sigmoid_pair(v: Any) -> Any:
    """(log(1 + e^-|v|), sigmoid(v)) in the type of v: resolved by numba per type (overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(_sigmoid_pair, inline="always")
def _sigmoid_pair_impl(v: Any) -> Callable[[Any], Any] | None:
    if v == types.float32:

        def vectorised(v: Any) -> Any:
            # polynomials and divisions only, no library calls: LLVM vectorises the loop.
            # sigmoid from e = exp(-|v|): 1 / (1 + e) for v >= 0, e / (1 + e) below, within
            # 2 ulp (the reference's exp(-softplus(-v)) is within |v| ulp)
            e = _exp_f32(-abs(v))
            inverse = _ONE / (_ONE + e)
            return _log1p_unit_f32(e), inverse if v >= 0 else e * inverse

        return vectorised
    if v == types.float64:

        def library(v: Any) -> Any:
            # the reference's operations, with the C library's exp and log1p
            tail = math.log1p(math.exp(-abs(v)))
            return tail, math.exp(-(_positive_part(-v) + tail))

        return library
    return None


def _sigmoid_parts(v: Any) -> Any:
    """(log(1 + e^-|v|), sigmoid(v), 1 - sigmoid(v)): `_sigmoid_pair` and the complement, which
    neither form by subtraction (it keeps every digit of a confident logit's 1 - p_t)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(_sigmoid_parts, inline="always")
def _sigmoid_parts_impl(v: Any) -> Callable[[Any], Any] | None:
    if v == types.float32:

        def vectorised(v: Any) -> Any:
            e = _exp_f32(-abs(v))
            inverse = _ONE / (_ONE + e)
            small = e * inverse  # e / (1 + e): sigmoid(-|v|)
            if v >= 0:
                return _log1p_unit_f32(e), inverse, small
            return _log1p_unit_f32(e), small, inverse

        return vectorised
    if v == types.float64:

        def library(v: Any) -> Any:
            # the reference's: exp(-softplus(-v)) and exp(-softplus(v))
            tail = math.log1p(math.exp(-abs(v)))
            sigmoid = math.exp(-(_positive_part(-v) + tail))
            return tail, sigmoid, math.exp(-(_positive_part(v) + tail))

        return library
    return None


@_compiled(parallel=True, fastmath=False, error_model="numpy", nogil=True)
def _binary_rows(
    x: Any,
    y: Any,
    w: Any,
    p: Any,
    grad_scale: float,
    per_element: Any,
    grad: Any,
    status: Any,
    sums: Any,
) -> None:
    """BCE with logits of rows `x` [M, C] against targets `y`: `_binary.binary_cross_entropy`.

    `w` (weight) and `p` (pos_weight) are [1, C] (the same for every row; ones when absent) or
    [M, C]. Per element, in the rows' dtype as the reference, with e = exp(-|x|):
    softplus(+-x) = max(+-x, 0) + log1p(e), loss = w (p y softplus(-x) + (1 - y) softplus(x)),
    gradient `grad_scale` w (sigmoid(x)(p y + 1 - y) - p y), sigmoid and log1p(e) from
    `_sigmoid_pair`. `status[k]` collects the bits of work item k (`LABEL_OUTSIDE`, `NOT_FINITE`),
    `sums[k]` the float64 sum of its losses.
    """
    n_rows, n_cols = x.shape
    pieces = (n_cols + BINARY_CHUNK - 1) // BINARY_CHUNK
    for k in prange(n_rows * pieces):
        i = k // pieces
        start = (k % pieces) * BINARY_CHUNK
        wi = i if w.shape[0] > 1 else 0
        pi = i if p.shape[0] > 1 else 0
        label_outside = False
        not_finite = False
        for c in range(start, min(start + BINARY_CHUNK, n_cols)):
            v = _widen(x[i, c])
            target = _widen(y[i, c])
            tail, sigmoid = _sigmoid_pair(v)  # log(1 + e^-|v|), sigmoid(v)
            softplus = _positive_part(v) + tail  # -log(1 - sigmoid(v))
            softplus_neg = _positive_part(-v) + tail  # -log sigmoid(v)
            positive = p[pi, c] * target  # coefficient of -log sigmoid(v)
            negative = _cast(1.0, target) - target
            # a zero coefficient adds 0, even times inf
            loss = (_cast(0.0, v) if positive == 0 else positive * softplus_neg) + (
                negative * softplus
            )
            g = sigmoid * (positive + negative) - positive
            loss = loss * w[wi, c]
            g = g * w[wi, c]
            label_outside |= not (target >= 0 and target <= 1)
            not_finite |= not (math.isfinite(loss) and math.isfinite(g)) or v != v
            per_element[i, c] = loss
            grad[i, c] = g * _cast(grad_scale, v)  # as `reduce_loss` scales: the same bits
        status[k] = (LABEL_OUTSIDE if label_outside else 0) | (NOT_FINITE if not_finite else 0)
        sums[k] = _span_sum(per_element, i, start, min(start + BINARY_CHUNK, n_cols))  # in cache


@_compiled(parallel=True, fastmath=False, error_model="numpy", nogil=True)
def _sigmoid_focal_rows(
    x: Any,
    y: Any,
    w: Any,
    alpha: float,
    gamma: float,
    grad_scale: float,
    per_element: Any,
    grad: Any,
    status: Any,
    sums: Any,
) -> None:
    """The sigmoid focal loss of rows `x` against targets `y`: `_binary.sigmoid_focal`, operation
    for operation, in the work items of `_binary_rows` (whose arguments these are, `alpha` < 0
    for none and `gamma` instead of a pos_weight). With m = 1 - p_t and r = p (1 - p) / m:
    loss = alpha_t m^gamma ce, gradient alpha_t m^gamma (d ce + gamma ce r (1 - 2 y)).
    """
    n_rows, n_cols = x.shape
    pieces = (n_cols + BINARY_CHUNK - 1) // BINARY_CHUNK
    weighted = alpha >= 0
    for k in prange(n_rows * pieces):
        i = k // pieces
        start = (k % pieces) * BINARY_CHUNK
        wi = i if w.shape[0] > 1 else 0
        label_outside = False
        not_finite = False
        for c in range(start, min(start + BINARY_CHUNK, n_cols)):
            v = _widen(x[i, c])
            target = _widen(y[i, c])
            zero = _cast(0.0, v)
            one = _cast(1.0, v)
            tail, p, q = _sigmoid_parts(v)  # log(1 + e^-|v|), sigmoid(v), 1 - sigmoid(v)
            softplus = _positive_part(v) + tail
            softplus_neg = _positive_part(-v) + tail
            negative = one - target
            ce = (zero if target == 0 else target * softplus_neg) + negative * softplus
            d_ce = p * (target + negative) - target
            m = negative * p + target * q  # 1 - p_t, a sum of non-negative terms
            g_ = _cast(gamma, v)
            modulator = m * m if gamma == 2 else (one if gamma == 0 else m**g_)  # 0^0 = 1
            r = p * q / m if m > 0 else zero  # in [0, 1]: m^(gamma - 1) never formed
            loss = ce * modulator
            g = modulator * (d_ce + g_ * ce * r * (one - _cast(2.0, v) * target))
            if weighted:
                a = _cast(alpha, v)
                alpha_t = a * target + (one - a) * negative
                loss = zero if alpha_t == 0 else alpha_t * loss  # silences even inf * 0
                g = zero if alpha_t == 0 else alpha_t * g
            loss = loss * w[wi, c]
            g = g * w[wi, c]
            label_outside |= not (target >= 0 and target <= 1)
            not_finite |= not (math.isfinite(loss) and math.isfinite(g)) or v != v
            per_element[i, c] = loss
            grad[i, c] = g * _cast(grad_scale, v)
        status[k] = (LABEL_OUTSIDE if label_outside else 0) | (NOT_FINITE if not_finite else 0)
        sums[k] = _span_sum(per_element, i, start, min(start + BINARY_CHUNK, n_cols))


# --- the Python side -------------------------------------------------------------------------

# Numba's default threading layer ("workqueue" where neither TBB nor OpenMP is installed) must not
# be entered from two threads at once; the service runs requests on a thread pool. Both cores
# work on one call anyway, so calls take turns.
_LAUNCH = threading.Lock()


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles separately for writable and read-only arrays, and the
    logits of a request are often read-only (`np.frombuffer`). One type, one compile."""
    view = array.view()
    view.flags.writeable = False
    return view


def _kernel_rows(x: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """Rows as the kernels take them (contiguous, read-only, 16-bit ones as their bits) and the
    dtype they compute in. KeyError for a dtype not in `NATIVE_INPUT_DTYPES`."""
    name = x.dtype.name
    dtype = np.dtype(COMPUTE_DTYPES[name])
    x = np.ascontiguousarray(x)
    if name in _HALF_BITS:
        x = x.view(_HALF_BITS[name])
    return _frozen(x), dtype


def softmax_rows(
    x: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    *,
    kind: int,
    at_label: np.ndarray | None = None,
    total: np.ndarray | None = None,
    spread: np.ndarray | None = None,
    z_loss: float = 0.0,
    param: float = 0.0,
    alpha: np.ndarray | None = None,
    grad_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel on rows `x` [M, C]: (per_sample [M] float64, lse [M] float64, grad [M, C]),
    the gradient multiplied by `grad_scale` (a `mean` reduction's 1 / divisor: no second pass).
    `x` may be of any dtype in `NATIVE_INPUT_DTYPES`; the gradient and the option vectors are in
    its compute dtype (`COMPUTE_DTYPES`: float32 for 16-bit rows).

    Where `valid` is False: `per_sample` is 0, `lse` 0 unless `z_loss` > 0, `grad` unspecified.
    """
    x, dtype = _kernel_rows(x)
    empty = _frozen(np.empty(0, dtype=dtype))  # an absent option: read-only like the others

    def vector(array: np.ndarray | None) -> np.ndarray:
        if array is None:
            return empty
        return _frozen(np.ascontiguousarray(array, dtype=dtype))

    n_rows = x.shape[0]
    per_sample = np.zeros(n_rows, dtype=np.float64)
    lse = np.zeros(n_rows, dtype=np.float64)
    grad = GRADIENTS.empty(x.shape, dtype)
    with _LAUNCH:
        _softmax_rows(
            x,
            _frozen(np.ascontiguousarray(y, dtype=np.int64)),
            _frozen(np.ascontiguousarray(valid, dtype=np.bool_)),
            kind,
            vector(at_label),
            vector(total),
            vector(spread),
            float(z_loss),
            float(param),
            vector(alpha),
            float(grad_scale),
            per_sample,
            lse,
            grad,
        )
    return per_sample, lse, grad


def binary_rows(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    p: np.ndarray | None,
    *,
    grad_scale: float = 1.0,
    kind: int = BINARY_CROSS_ENTROPY,
    gamma: float = 0.0,
    alpha: float | None = None,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """BCE with logits on rows `x` [M, C] against targets `y` [M, C] of the same dtype (any of
    `NATIVE_INPUT_DTYPES`), with a weight `w` and a pos_weight `p` of shape [C] or [M, C] (None:
    absent) in its compute dtype, that of the outputs. `kind=SIGMOID_FOCAL`: the sigmoid focal
    loss with `gamma` and `alpha` (None: no alpha_t) instead, and no pos_weight.

    Returns (per-element loss [M, C], gradient [M, C] multiplied by `grad_scale`, status, the
    float64 sum of the losses): the status ORs `LABEL_OUTSIDE` and `NOT_FINITE`; where it is not
    0 the other results are unspecified.

    Short rows reach the kernel `BINARY_CHUNK // C` at a time, as one row of that many times C
    elements (a [C] factor repeated as often): a loop over 10 elements costs as much as one over
    100. The rows that do not fill a group go as they are, in a second launch.
    """
    x, dtype = _kernel_rows(x)
    y, _ = _kernel_rows(y)
    n_rows, n_cols = x.shape
    w_rows, p_rows = (
        np.ones((1, n_cols), dtype=dtype)
        if array is None
        else np.ascontiguousarray(array, dtype=dtype).reshape(-1 if n_cols else 1, n_cols)
        for array in (w, p)
    )
    per_element = GRADIENTS.empty(x.shape, dtype)
    grad = GRADIENTS.empty(x.shape, dtype)
    group = max(1, BINARY_CHUNK // n_cols) if n_cols else 1
    whole = n_rows // group * group
    status = 0
    total = 0.0
    with _LAUNCH:
        for first, stop, size in ((0, whole, group), (whole, n_rows, 1)):
            if stop == first:
                continue
            rows = slice(first, stop)
            shape = ((stop - first) // size, size * n_cols)
            bits = np.zeros(shape[0] * -(-shape[1] // BINARY_CHUNK), dtype=np.uint8)
            sums = np.zeros(bits.shape, dtype=np.float64)
            inputs = (x[rows].reshape(shape), y[rows].reshape(shape), _grouped(w_rows, rows, shape))
            # views: the kernel writes the outputs
            outputs = (per_element[rows].reshape(shape), grad[rows].reshape(shape), bits, sums)
            if kind == SIGMOID_FOCAL:
                a = -1.0 if alpha is None else float(alpha)
                _sigmoid_focal_rows(*inputs, a, float(gamma), float(grad_scale), *outputs)
            else:
                _binary_rows(*inputs, _grouped(p_rows, rows, shape), float(grad_scale), *outputs)
            status |= int(np.bitwise_or.reduce(bits, initial=0))
            total += float(np.sum(sums))
    return per_element, grad, status, total


def _grouped(factor: np.ndarray, rows: slice, shape: tuple[int, int]) -> np.ndarray:
    """A [1, C] or [M, C] factor for `rows` of `binary_rows` grouped into rows of `shape`."""
    if factor.shape[0] == 1:  # the same for every row: repeated along the group
        return _frozen(np.tile(factor, (1, shape[1] // max(factor.shape[1], 1))))
    return _frozen(factor[rows].reshape(shape))


# Gradients of at least 1 MiB; up to 1 GiB of them kept (four 2048 x 32000 float32 ones).
GRADIENTS = ArrayPool(min_bytes=1 << 20, max_bytes=1 << 30)


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for rows of every native dtype."""
    for name in sorted(NATIVE_INPUT_DTYPES):
        dtype = np.dtype(COMPUTE_DTYPES[name])
        x = np.zeros((2, 3), dtype=dtype).astype(_native_dtype(name))
        labels = np.zeros(2, dtype=np.int64)
        valid = np.ones(2, dtype=np.bool_)
        ones = np.ones(2, dtype=dtype)
        softmax_rows(x, labels, valid, kind=CROSS_ENTROPY, at_label=ones, total=ones)
        binary_rows(x, x, None, None)
        binary_rows(x, x, None, None, kind=SIGMOID_FOCAL, gamma=2.0)


def _native_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a name in `NATIVE_INPUT_DTYPES` (bfloat16: ml_dtypes')."""
    if name == "bfloat16":
        import ml_dtypes  # the codecs' bfloat16; only needed here to make one

        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)
