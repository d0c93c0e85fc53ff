"""Binary cross-entropy with logits and the sigmoid focal loss, element by element: the CPU
kernels of `_binary.binary_cross_entropy` and `_binary.sigmoid_focal`.

One pass per element computes the loss, the gradient (already scaled by the caller's
`grad_scale`) and the checks the reference makes (targets in [0, 1], finite results). float32
elements use polynomials for exp and log1p only (`numerics.sigmoid_pair`), so that LLVM
vectorises the loop; float64 ones the C library's. A work item is a row, or `BINARY_CHUNK`
elements of a long one, so that the threads get work whatever the shape; each reports its status
bits and the float64 sum of its losses. As the softmax kernels, each comes compiled twice: over
numba's threads and serially (`cpu` picks by size).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from service.engine._kernels.numerics import (
    F32,
    ONE,
    ZERO,
    compiled,
    convert,
    exp_f32,
    float64_sum,
    log_row_sum,
    positive_part,
    sigmoid_pair,
    sigmoid_parts,
    widen,
)

# Elements per work item of the binary kernels: a row, or a piece of a long one (a 1-D batch is one
# row), so that both cores get work whatever the shape.
BINARY_CHUNK: Final = 4096
LABEL_OUTSIDE: Final = 1  # status bits of a work item: a label not in [0, 1] (or NaN)
NOT_FINITE: Final = 2  # a loss or gradient element not finite (or a NaN logit)


@numba.njit(inline="always")
def _binary_item(
    k: int,
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
    """Work item k of `binary_rows_parallel` / `_serial`."""
    n_cols = x.shape[1]
    pieces = (n_cols + BINARY_CHUNK - 1) // BINARY_CHUNK
    i = k // pieces
    start = (k % pieces) * BINARY_CHUNK
    wi = i if w.shape[0] > 1 else 0
    pi = i if p.shape[0] > 1 else 0
    label_outside = False
    not_finite = False
    stop = min(start + BINARY_CHUNK, n_cols)
    # Views, indexed from 0: an index LLVM cannot prove non-negative (numba wraps negative
    # ones around) turns every load into a gather and every store into a scatter.
    xs, ys, ws, ps = x[i, start:stop], y[i, start:stop], w[wi, start:stop], p[pi, start:stop]
    losses, grads = per_element[i, start:stop], grad[i, start:stop]
    for c in range(stop - start):
        v = widen(xs[c])
        target = widen(ys[c])
        tail, sigmoid = sigmoid_pair(v)  # log(1 + e^-|v|), sigmoid(v)
        softplus = positive_part(v) + tail  # -log(1 - sigmoid(v))
        softplus_neg = positive_part(-v) + tail  # -log sigmoid(v)
        positive = ps[c] * target  # coefficient of -log sigmoid(v)
        negative = convert(1.0, target) - target
        # a zero coefficient adds 0, even times inf
        loss = (convert(0.0, v) if positive == 0 else positive * softplus_neg) + (
            negative * softplus
        )
        g = sigmoid * (positive + negative) - positive
        loss = loss * ws[c]
        g = g * ws[c]
        label_outside |= not (target >= 0 and target <= 1)
        not_finite |= not (math.isfinite(loss) and math.isfinite(g)) or v != v
        losses[c] = loss
        grads[c] = g * convert(grad_scale, v)  # as `reduce_loss` scales: the same bits
    status[k] = (LABEL_OUTSIDE if label_outside else 0) | (NOT_FINITE if not_finite else 0)
    sums[k] = float64_sum(losses)  # in cache


@compiled(parallel=True, fastmath=False, error_model="numpy", nogil=True)
def binary_rows_parallel(
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
    `sigmoid_pair`. `status[k]` collects the bits of work item k (`LABEL_OUTSIDE`, `NOT_FINITE`),
    `sums[k]` the float64 sum of its losses.
    """
    pieces = (x.shape[1] + BINARY_CHUNK - 1) // BINARY_CHUNK
    for k in prange(x.shape[0] * pieces):
        _binary_item(k, x, y, w, p, grad_scale, per_element, grad, status, sums)


@compiled(fastmath=False, error_model="numpy", nogil=True)
def binary_rows_serial(
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
    pieces = (x.shape[1] + BINARY_CHUNK - 1) // BINARY_CHUNK
    for k in range(x.shape[0] * pieces):
        _binary_item(k, x, y, w, p, grad_scale, per_element, grad, status, sums)


def unit_power(m: Any, g: Any) -> Any:
    """m ** g for m in [0, 1] and g > 0 in their compute dtype: resolved per type (overload)."""
    raise NotImplementedError("compiled only")  # pragma: no cover


@overload(unit_power, inline="always")
def _unit_power_impl(m: Any, g: Any) -> Callable[[Any, Any], Any] | None:
    if m == types.float32:

        def polynomial(m: Any, g: Any) -> Any:
            # exp(g log m), with log m = -log(1 / m) in float64 (`log_row_sum`, for sums >= 1:
            # 1 / m rounds at 2^-53) and the exponent rounded once to float32 before `exp_f32`:
            # a relative error of about |g log m| 2^-24, at most 2.2e-6 where m^g is above 1e-15.
            # The library's `powf` is a call per element: the loop around it stays scalar.
            positive = m > ZERO
            inverse = 1.0 / np.float64(m if positive else ONE)
            log_m = -log_row_sum(inverse if inverse >= 1.0 else 1.0)  # m a rounding above 1: 0
            value = exp_f32(F32(np.float64(g) * log_m))
            return value if positive else ZERO

        return polynomial
    if m == types.float64:

        def library(m: Any, g: Any) -> Any:
            return m**g  # the C library's pow: float64 rows keep its bits

        return library
    return None


def _sigmoid_focal_span(squared: bool) -> Any:
    """The sigmoid focal loss over one span (views), as (a label outside [0, 1], a result not
    finite): compiled twice, `squared` a constant of each. gamma = 2 has the modulator m * m;
    any other gamma m ** gamma, `unit_power` (float32: polynomials that vectorise; float64: the
    library's pow, whose call per element keeps that loop scalar)."""

    def span(
        xs: Any,
        ys: Any,
        ws: Any,
        alpha: float,
        gamma: float,
        grad_scale: float,
        losses: Any,
        grads: Any,
    ) -> tuple[bool, bool]:
        weighted = alpha >= 0
        label_outside = False
        not_finite = False
        for c in range(xs.shape[0]):
            v = widen(xs[c])
            target = widen(ys[c])
            zero = convert(0.0, v)
            one = convert(1.0, v)
            tail, p, q = sigmoid_parts(v)  # log(1 + e^-|v|), sigmoid(v), 1 - sigmoid(v)
            softplus = positive_part(v) + tail
            softplus_neg = positive_part(-v) + tail
            negative = one - target
            ce = (zero if target == 0 else target * softplus_neg) + negative * softplus
            d_ce = p * (target + negative) - target
            m = negative * p + target * q  # 1 - p_t, a sum of non-negative terms
            g_ = convert(gamma, v)
            modulator = m * m if squared else (one if gamma == 0 else unit_power(m, g_))  # 0^0 = 1
            r = p * q / m if m > 0 else zero  # in [0, 1]: m^(gamma - 1) never formed
            loss = ce * modulator
            g = modulator * (d_ce + g_ * ce * r * (one - convert(2.0, v) * target))
            if weighted:
                a = convert(alpha, v)
                alpha_t = a * target + (one - a) * negative
                loss = zero if alpha_t == 0 else alpha_t * loss  # silences even inf * 0
                g = zero if alpha_t == 0 else alpha_t * g
            loss = loss * ws[c]
            g = g * ws[c]
            label_outside |= not (target >= 0 and target <= 1)
            not_finite |= not (math.isfinite(loss) and math.isfinite(g)) or v != v
            losses[c] = loss
            grads[c] = g * convert(grad_scale, v)
        return label_outside, not_finite

    return compiled(error_model="numpy")(span)


_SQUARED_SPAN = _sigmoid_focal_span(squared=True)
_POWER_SPAN = _sigmoid_focal_span(squared=False)


@numba.njit(inline="always")
def _sigmoid_focal_item(
    k: int,
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
    """Work item k of `sigmoid_focal_rows_parallel` / `_serial`."""
    n_cols = x.shape[1]
    pieces = (n_cols + BINARY_CHUNK - 1) // BINARY_CHUNK
    i = k // pieces
    start = (k % pieces) * BINARY_CHUNK
    wi = i if w.shape[0] > 1 else 0
    stop = min(start + BINARY_CHUNK, n_cols)
    xs, ys, ws = x[i, start:stop], y[i, start:stop], w[wi, start:stop]  # views: see above
    losses, grads = per_element[i, start:stop], grad[i, start:stop]
    spans = (xs, ys, ws, alpha, gamma, grad_scale, losses, grads)
    if gamma == 2:  # the paper's and torchvision's default
        outside, not_finite = _SQUARED_SPAN(*spans)
    else:
        outside, not_finite = _POWER_SPAN(*spans)
    status[k] = (LABEL_OUTSIDE if outside else 0) | (NOT_FINITE if not_finite else 0)
    sums[k] = float64_sum(losses)


@compiled(parallel=True, fastmath=False, error_model="numpy", nogil=True)
def sigmoid_focal_rows_parallel(
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
    for operation, in the work items of `binary_rows_parallel` (whose arguments these are,
    `alpha` < 0 for none and `gamma` instead of a pos_weight). With m = 1 - p_t and
    r = p (1 - p) / m: loss = alpha_t m^gamma ce,
    gradient alpha_t m^gamma (d ce + gamma ce r (1 - 2 y)).
    """
    pieces = (x.shape[1] + BINARY_CHUNK - 1) // BINARY_CHUNK
    for k in prange(x.shape[0] * pieces):
        _sigmoid_focal_item(k, x, y, w, alpha, gamma, grad_scale, per_element, grad, status, sums)


@compiled(fastmath=False, error_model="numpy", nogil=True)
def sigmoid_focal_rows_serial(
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
    pieces = (x.shape[1] + BINARY_CHUNK - 1) // BINARY_CHUNK
    for k in range(x.shape[0] * pieces):
        _sigmoid_focal_item(k, x, y, w, alpha, gamma, grad_scale, per_element, grad, status, sums)
