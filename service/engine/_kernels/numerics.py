"""Scalar numerics the CPU kernels are built from: bit-level helpers, `exp`, `log` and `log1p`
polynomials LLVM can vectorise, and the widening of 16-bit floats.

numba's library `exp` and `log` are calls into the C library, which LLVM does not vectorise: a
loop that makes one per element runs at the speed of the call (about 1.0-1.5x as fast as
NumPy's `exp`). The float32 kernels use `exp_f32` (Cephes' `expf`, within 1 ulp) and, for the
binary losses, `log1p_unit_f32`; the few-class softmax kernel takes the log of its float64 row
sums with `log_row_sum`. float64 elements use the C library's `exp` and `log1p`.

float16 and bfloat16 rows reach the kernels as their bits (int16 / uint16, `HALF_BITS`): numba
has no arithmetic for them. `widen` turns an element into the float32 it stands for, exactly,
where it is read; `ordered_key` orders floats (and such bits) as integers, whose max reduction
LLVM vectorises without fast-math flags. `compiled` is `numba.njit` with numba's on-disk cache
where there is a writable place for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final, cast

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from service.engine._kernels.vector_width import request_full_width_vectors

request_full_width_vectors()  # before the first `compiled` function sets up numba's code generator


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Any]:
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
    """The 16-bit integer types that carry the bits of float16 and bfloat16 rows (`HALF_BITS`)."""
    return isinstance(numba_type, types.Integer) and cast(Any, numba_type).bitwidth == 16


@_intrinsic
def ordered_key(typingctx: Any, value: Any) -> Any:
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
def from_ordered_key(typingctx: Any, key: Any, like: Any) -> Any:
    """The float (or 16-bit float bits) of `like`'s type whose `ordered_key` is `key`."""
    if not (isinstance(like, types.Float) or _is_half(like)):
        return None
    width = like.bitwidth

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        bits = _flip_negatives(builder, args[0], width)
        return builder.bitcast(bits, context.get_value_type(like))

    return like(key, like), codegen


@_intrinsic
def f32_from_bits(typingctx: Any, bits: Any) -> Any:
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
def f32_pair_bits(typingctx: Any, first: Any, second: Any) -> Any:
    """The uint64 whose low 32 bits are those of `first` and high 32 those of `second`, both
    converted to float32 (a no-op for float32): the two as they lie in memory, little-endian."""
    if not (isinstance(first, types.Float) and isinstance(second, types.Float)):
        return None

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        i32, i64 = ir.IntType(32), ir.IntType(64)
        halves = []
        for value, numba_type in zip(args, signature.args, strict=True):
            single = context.cast(builder, value, numba_type, types.float32)
            halves.append(builder.zext(builder.bitcast(single, i32), i64))
        return builder.or_(halves[0], builder.shl(halves[1], ir.Constant(i64, 32)))

    return types.uint64(first, second), codegen


@_intrinsic
def f64_bits(typingctx: Any, value: Any) -> Any:
    """The bits of the float64 `value` as a uint64 (unsigned: AVX2 shifts 64-bit lanes
    logically only, so an arithmetic shift would leave the loop scalar)."""
    if value != types.float64:
        return None

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        return builder.bitcast(args[0], ir.IntType(64))

    return types.uint64(value), codegen


@_intrinsic
def f64_from_bits(typingctx: Any, bits: Any) -> Any:
    """The float64 whose bits are the uint64 `bits`."""
    if bits != types.uint64:
        return None

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@_intrinsic
def pow2_f32(typingctx: Any, n: Any) -> Any:
    """2**n as a float32 for an integral float32 n in [-126, 127]: the exponent bits `n + 127`."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        i32 = ir.IntType(32)
        biased = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@_intrinsic
def convert(typingctx: Any, value: Any, like: Any) -> Any:
    """`value` converted to the type of `like` (the compute dtype of a row), as NumPy's astype."""

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> ir.Value:
        return context.cast(builder, args[0], signature.args[0], signature.return_type)

    return like(value, like), codegen


# --- sums ------------------------------------------------------------------------------------


# `reassoc` lets LLVM add in vector lanes: another order than one addition after the other. A
# loop of its own: a strict float64 sum in the loop that writes the values keeps it scalar.
@compiled(fastmath={"reassoc"}, error_model="numpy")
def float64_sum(values: Any) -> float:
    """The float64 sum of a 1-D array (index it from 0, a view: see `binary`)."""
    total = 0.0
    for r in range(values.shape[0]):
        total += np.float64(values[r])
    return total


# --- exp -------------------------------------------------------------------------------------

F32 = np.float32
_LOG2E = F32(1.44269504088896341)
_LN2_HI = F32(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI with 9 significant bits: n * it
_LN2_LO = F32(-2.12194440e-4)  # is exact for |n| < 2^15 (Cody & Waite range reduction)
_EXP_P = tuple(
    F32(c)
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
EXP_F32_FLUSH: Final = F32(-87.0)
_HALF = F32(0.5)
ONE = F32(1.0)
ZERO = F32(0.0)


@numba.njit(inline="always")
def exp_f32(t: Any) -> Any:
    """exp(t) for float32 t <= 0 (-inf included): Cephes `expf`, relative error < 1.2e-7.

    t = n ln2 + r with n = round(t / ln 2), |r| <= ln2 / 2 (r computed exactly in two steps),
    exp(r) from Cephes' degree-7 minimax polynomial (peak relative error 4.2e-9 in theory),
    2^n from the exponent bits. Measured against float64 `np.exp` over [-87, 0]: < 1 ulp.
    """
    small = t < EXP_F32_FLUSH  # also -inf; the clamp keeps n >= -126 (a normal 2^n)
    t = EXP_F32_FLUSH if small else t
    n = F32(np.int32(t * _LOG2E - _HALF))  # round(t * log2 e) for t <= 0 (truncation + 1/2)
    r = t - n * _LN2_HI
    r = r - n * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + ONE
    value = p * pow2_f32(n)
    return ZERO if small else value


def exp_nonpositive(t: Any) -> Any:
    """exp(t) for t <= 0 in the type of t: resolved by numba per type (see the overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(exp_nonpositive, inline="always")
def _exp_nonpositive_impl(t: Any) -> Callable[[Any], Any] | None:
    # numba requires the implementation's parameters to match this function's, annotations too
    if t == types.float32:

        def polynomial(t: Any) -> Any:
            return exp_f32(t)

        return polynomial
    if t == types.float64:

        def library(t: Any) -> Any:
            return math.exp(t)  # the C library: accurate to < 1 ulp

        return library
    return None


# --- 16-bit rows ----------------------------------------------------------------------------
# numba has no float16 arithmetic on the CPU and no bfloat16 at all: such rows reach the kernel as
# their bits, viewed as the integer type of `HALF_BITS` (the type says which format), and every
# element is widened to float32 where it is read, exactly (both formats are subsets of float32).

HALF_BITS: Final = {"bfloat16": np.dtype(np.uint16), "float16": np.dtype(np.int16)}
_F16_EXP_MASK = np.uint32(0x7C00)
_F16_REBIAS = np.uint32((127 - 15) << 23)  # float16 exponent bias 15 -> float32's 127
_F16_MIN_NORMAL = np.float32(2.0**-14)


# Not inlined by numba (its IR check warns about the inlined selects), by LLVM all the same.
@compiled(error_model="numpy")
def f32_from_f16(bits: Any) -> Any:
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
    normal = f32_from_bits(moved)
    subnormal = f32_from_bits(moved + np.uint32(1 << 23)) - _F16_MIN_NORMAL
    magnitude = subnormal if exponent == 0 else normal
    return -magnitude if h & np.uint32(0x8000) else magnitude


def widen(value: Any) -> Any:
    """An element as the kernel computes with it: resolved by numba per type (see the overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(widen, inline="always")
def _widen_impl(value: Any) -> Callable[[Any], Any] | None:
    if isinstance(value, types.Float):

        def identity(value: Any) -> Any:
            return value

        return identity
    if value == types.uint16:  # bfloat16: the top half of a float32

        def bfloat16(value: Any) -> Any:
            return f32_from_bits(np.uint32(value) << np.uint32(16))

        return bfloat16
    if value == types.int16:

        def float16(value: Any) -> Any:
            return f32_from_f16(value)

        return float16
    return None


@numba.njit(inline="always")
def positive_part(v: Any) -> Any:
    return v if v > 0 else convert(0.0, v)  # max(v, 0); NaN logits are flagged separately


# log1p(e) = 2 atanh(s) with s = e / (2 + e) (no 1 + e to round), for e in [0, 1], s <= 1/3:
# 2 s (1 + s^2/3 + s^4/5 + ...), the terms to s^16 / 17 (< 2e-10 of the sum): float32-exact.
_ATANH_P = tuple(F32(1.0 / (2 * k + 1)) for k in range(8, -1, -1))


@numba.njit(inline="always")
def log1p_unit_f32(e: Any) -> Any:
    s = e / (F32(2.0) + e)
    s2 = s * s
    total = ZERO
    for coefficient in _ATANH_P:  # Horner, highest power first (unrolled: a constant tuple)
        total = total * s2 + coefficient
    return F32(2.0) * s * total


def sigmoid_pair(v: Any) -> Any:
    """(log(1 + e^-|v|), sigmoid(v)) in the type of v: resolved by numba per type (overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(sigmoid_pair, inline="always")
def _sigmoid_pair_impl(v: Any) -> Callable[[Any], Any] | None:
    if v == types.float32:

        def vectorised(v: Any) -> Any:
            # polynomials and divisions only, no library calls: LLVM vectorises the loop.
            # sigmoid from e = exp(-|v|): 1 / (1 + e) for v >= 0, e / (1 + e) below, within
            # 2 ulp (the reference's exp(-softplus(-v)) is within |v| ulp)
            e = exp_f32(-abs(v))
            inverse = ONE / (ONE + e)
            return log1p_unit_f32(e), inverse if v >= 0 else e * inverse

        return vectorised
    if v == types.float64:

        def library(v: Any) -> Any:
            # the reference's operations, with the C library's exp and log1p
            tail = math.log1p(math.exp(-abs(v)))
            return tail, math.exp(-(positive_part(-v) + tail))

        return library
    return None


def sigmoid_parts(v: Any) -> Any:
    """(log(1 + e^-|v|), sigmoid(v), 1 - sigmoid(v)): `sigmoid_pair` and the complement, which
    neither form by subtraction (it keeps every digit of a confident logit's 1 - p_t)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(sigmoid_parts, inline="always")
def _sigmoid_parts_impl(v: Any) -> Callable[[Any], Any] | None:
    if v == types.float32:

        def vectorised(v: Any) -> Any:
            e = exp_f32(-abs(v))
            inverse = ONE / (ONE + e)
            small = e * inverse  # e / (1 + e): sigmoid(-|v|)
            if v >= 0:
                return log1p_unit_f32(e), inverse, small
            return log1p_unit_f32(e), small, inverse

        return vectorised
    if v == types.float64:

        def library(v: Any) -> Any:
            # the reference's: exp(-softplus(-v)) and exp(-softplus(v))
            tail = math.log1p(math.exp(-abs(v)))
            sigmoid = math.exp(-(positive_part(-v) + tail))
            return tail, sigmoid, math.exp(-(positive_part(v) + tail))

        return library
    return None


# --- log of a row sum -------------------------------------------------------------------------
# log(s) = k ln 2 + log1p(f) for s = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)); log1p(f) =
# 2 atanh(u) with u = f / (2 + f), written f - (f^2/2 - u (f^2/2 + R)), R = sum_k 2 u^2k / (2k + 1)
# (an identity, since 2u = f - u f): the big term f is exact, the series only corrects it. With
# |u| <= 0.1716 ten terms leave < 1e-17 of the sum. ln 2 is split so that k ln2_hi is exact
# (`exp_f32` has its own float32 split).
_SQRT2 = math.sqrt(2.0)
_MANTISSA_BITS = np.uint64((1 << 52) - 1)
_ONE_BITS = np.uint64(1023 << 52)  # the exponent field of 1.0
_EXPONENT_SHIFT = np.uint64(52)
# The float64 2^52 + e has the integer e in its low mantissa bits: exponent fields become floats
# with integer operations only (AVX2 has no vector int64 -> float64 conversion).
_TWO_52_BITS = np.uint64(0x433 << 52)
_TWO_52_PLUS_BIAS = 2.0**52 + 1023
_LN2_HI_F64 = float(  # ln 2 with its low 32 mantissa bits cleared
    (np.array([math.log(2.0)]).view(np.uint64) & np.uint64(0xFFFF_FFFF_0000_0000)).view(np.float64)[
        0
    ]
)
_LN2_LO_F64 = float(
    Decimal("0.69314718055994530941723212145817656807550013436") - Decimal(_LN2_HI_F64)
)
_ATANH_2 = tuple(2.0 / (2 * k + 1) for k in range(10, 0, -1))  # 2/21, ..., 2/3


@numba.njit(inline="always")
def log_row_sum(s: float) -> float:
    """log(s) for a finite float64 row sum s >= 1 (its largest term is 1): `log1p(s - 1)` within
    1 ulp, from bit operations, multiplications, additions and one division only, so a loop over
    rows of it vectorises (the C library's `log1p` is a call per row)."""
    bits = f64_bits(s)
    k: float = f64_from_bits((bits >> _EXPONENT_SHIFT) | _TWO_52_BITS) - _TWO_52_PLUS_BIAS
    m: float = f64_from_bits((bits & _MANTISSA_BITS) | _ONE_BITS)  # s / 2^k in [1, 2), exact
    over = m >= _SQRT2  # down to [sqrt(1/2), sqrt(2)), exactly
    m = m * 0.5 if over else m
    k = k + 1.0 if over else k
    f = m - 1.0  # exact (Sterbenz)
    u = f / (2.0 + f)
    z = u * u
    series = 0.0
    for coefficient in _ATANH_2:  # Horner, highest power first
        series = series * z + coefficient
    half_square = 0.5 * f * f
    return k * _LN2_HI_F64 + (
        f - (half_square - (u * (half_square + z * series) + k * _LN2_LO_F64))
    )
