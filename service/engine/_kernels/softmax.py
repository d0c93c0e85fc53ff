"""Cross-entropy, focal and poly-1 over rows of logits, with their gradients: the CPU kernels.

The reference code (`_cross_entropy.py`, `_softmax_family.py`) makes about ten passes over `[M, C]`
arrays and allocates temporaries of that size; NumPy's `exp` bounds it. These kernels take the
rows one by one (spread over numba's threads, or serially for a small call: `cpu`) and, for each
row:

1. find the maximum (`shift`) through integer keys of the floats, a reduction that LLVM
   vectorises without fast-math flags (it reads the row from memory);
2. write `exp(x - shift)` into the row of the gradient and sum it in float64;
3. compute the loss of the row, and turn the exponentials into `k * exp - spread` in place,
   subtract `mass` at y, and multiply by the caller's `grad_scale` (`mean`'s 1 / divisor, see
   `_reduction`): the gradient is written once, already scaled, with the bits `reduce_loss`'s
   own pass would give it.

Steps 2 and 3 find the row and its gradient row in the core's cache (a 128k-class float32 row and
its gradient take 1 MB of a 2 MB L2): each row is read from memory once and its gradient written
once, the floor of any CE + gradient. The cost left is the exp (0.43 ns per element per core).

The numbers are the reference's, operation for operation: float32 rows compute in float32 with
a float64 row sum, `log_sum = log1p(sum - 1)` (the largest term is exactly 1), per-sample values
from the shifted logit `x_y - shift`, no contribution (and no gradient) from a -inf logit of a
class without target mass, focal's and poly-1's `s = -dL/d log p_y` from `label_terms`. What
differs, within 1e-7 relative for float32 rows and 1e-15 for float64 ones:

- float32 rows use `exp_f32` (Cephes' `expf`, a polynomial the compiler vectorises, within 1 ulp;
  NumPy's float32 `exp` is within 2 ulp): numba's library `exp` is not vectorised. float64 rows
  use the C library's `exp`.
- the row sums and the label-smoothing dot product are added in another order, in float64.

float16 and bfloat16 rows are read as they are (`NATIVE_INPUT_DTYPES`), as their bits, each
element widened to float32 where it is read (`numerics.widen`, exact); the maximum is found on the
bits. They compute as float32 rows, bit for bit, with a float32 gradient, and no float32 copy of
the logits is made.

Ignored rows are skipped (`finish_rows` zeroes their gradient rows), except that with a z-loss
their log-sum-exp is computed, as the reference checks the z-loss term of every row for overflow.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import prange

from service.engine._kernels.interface import CROSS_ENTROPY
from service.engine._kernels.label_terms import label_terms
from service.engine._kernels.numerics import (
    compiled,
    convert,
    exp_nonpositive,
    from_ordered_key,
    ordered_key,
    widen,
)

# --- passes over row i of a matrix ----------------------------------------------------------
# They index the matrix, not a row view: a view takes a reference (an atomic count shared by the
# threads) per row, which costs more than a 10-class row. Strict ones are inlined into the kernel.


@numba.njit(inline="always")
def _row_max(x: Any, i: int) -> Any:
    """The row's maximum, widened (16-bit rows: found on their bits, then widened once)."""
    top = ordered_key(x[i, 0])
    for c in range(x.shape[1]):
        key = ordered_key(x[i, c])
        top = key if key > top else top
    return widen(from_ordered_key(top, x[i, 0]))


# The gradient row from its exponentials: `(exp * factor - spread - mass e_label) * scale`, each
# step rounded in the row's dtype as the reference does it, then `reduce_loss` (`grad *= scale`):
# folding the scale in changes no bit. `v - 0` is `v` for every v, -0 included.


@numba.njit(inline="always")
def _scale(out: Any, i: int, factor: Any, label: int, mass: Any, scale: Any) -> None:
    zero = convert(0.0, mass)
    for c in range(out.shape[1]):
        out[i, c] = (out[i, c] * factor - (mass if c == label else zero)) * scale


@numba.njit(inline="always")
def _scale_minus(
    out: Any, i: int, factor: Any, spread: Any, label: int, mass: Any, scale: Any
) -> None:
    zero = convert(0.0, mass)
    for c in range(out.shape[1]):
        out[i, c] = (out[i, c] * factor - spread[c] - (mass if c == label else zero)) * scale


# Not inlined: these keep their own fast-math flags (LLVM still inlines them, flags and all).
# `contract` fuses the multiply-adds of the exp polynomial (0.7 -> 0.43 ns per element): each
# rounds once instead of twice, well inside the error bound of `exp_f32`.
@compiled(fastmath={"contract"}, error_model="numpy")
def _store_exp(x: Any, i: int, shift: Any, out: Any) -> None:
    for c in range(x.shape[1]):
        out[i, c] = exp_nonpositive(widen(x[i, c]) - shift)


# `reassoc` lets LLVM split these float64 sums into vector lanes: another summation order, no
# other change (they only add, and multiply by exact products).
@compiled(fastmath={"reassoc"}, error_model="numpy")
def _row_sum(values: Any, i: int) -> float:
    total = 0.0
    for c in range(values.shape[1]):
        total += np.float64(values[i, c])
    return total


@compiled(fastmath={"reassoc"}, error_model="numpy")
def _shifted_dot(x: Any, i: int, shift: Any, weights: Any) -> float:
    """sum_c w_c (x_c - shift) of row i; a zero weight adds 0 even where x_c = -inf."""
    total = 0.0
    for c in range(x.shape[1]):
        w = weights[c]
        shifted = widen(x[i, c]) - shift  # in the row's compute dtype, as the reference
        total += 0.0 if w == 0 else np.float64(w) * np.float64(shifted)
    return total


# --- the kernels -----------------------------------------------------------------------------


@numba.njit(inline="always")
def _softmax_row(
    i: int,
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
    """Row i: `per_sample` (float64, before any z-loss term), `lse` and `grad_scale` times the
    gradient (see module).

    CROSS_ENTROPY: target mass `at_label` at y plus `spread` (empty: none), of total `total`;
    FOCAL / POLY1: `label_terms` of log p_y with `param` gamma / epsilon, focal's `alpha`
    (empty: none). A row with `valid` False gets neither loss nor gradient, nor `lse` unless
    z_loss > 0.
    """
    if not valid[i] and z_loss == 0:
        return
    shift = _row_max(x, i)
    if not math.isfinite(shift):  # every logit -inf: exp is 0 everywhere, no inf - inf
        shift = convert(0.0, shift)
    _store_exp(x, i, shift, grad)
    exp_sum = _row_sum(grad, i)  # >= 1: the largest term is exactly 1
    log_sum = math.log1p(exp_sum - 1)  # -inf when every logit is -inf
    lse[i] = shift + log_sum
    if not valid[i]:
        return
    smoothing = spread.shape[0] > 0
    label = y[i]
    shifted_at_label = widen(x[i, label]) - shift
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
        loss, s = label_terms(kind, param, np.float64(shifted_at_label) - log_sum)
        if alpha.shape[0] > 0:
            alpha_y = alpha[label]
            s = alpha_y * s
            loss = 0.0 if alpha_y == 0 else alpha_y * loss  # alpha_y = 0 at -inf: 0
        mass = convert(s, shift)
        scale = mass
    factor = convert(scale / exp_sum, shift)
    scale_out = convert(grad_scale, shift)  # as `reduce_loss` casts its factor
    if smoothing:
        _scale_minus(grad, i, factor, spread, label, mass, scale_out)
    else:
        _scale(grad, i, factor, label, mass, scale_out)
    per_sample[i] = loss


# Two compiled forms of one loop, the rows spread over numba's threads or not (`cpu`: small
# calls run serially). Absent options are empty arrays, so each has one set of argument types
# per native dtype of the rows: a process compiles, or loads from the cache, four of each.
@compiled(parallel=True, fastmath=False, error_model="numpy", nogil=True)
def softmax_rows_parallel(
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
    for i in prange(x.shape[0]):
        _softmax_row(
            i, x, y, valid, kind, at_label, total, spread, z_loss, param, alpha, grad_scale,
            per_sample, lse, grad,
        )  # fmt: skip


@compiled(fastmath=False, error_model="numpy", nogil=True)
def softmax_rows_serial(
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
    for i in range(x.shape[0]):
        _softmax_row(
            i, x, y, valid, kind, at_label, total, spread, z_loss, param, alpha, grad_scale,
            per_sample, lse, grad,
        )  # fmt: skip
