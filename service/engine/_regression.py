"""Elementwise regression losses with PyTorch's conventions: `mse_loss`, `l1_loss`, `huber_loss`.

Per element, with d = prediction - target:

    mse:    d^2                                         d/dx = 2 d
    mae:    |d|                                         d/dx = sign(d)   (0 at d = 0, as PyTorch)
    huber:  d^2 / 2 if |d| <= delta,                    d/dx = d if |d| <= delta,
            delta (|d| - delta / 2) otherwise                  delta sign(d) otherwise

PyTorch has no `weight` for these; here it broadcasts to the predictions' shape and multiplies each
element, and `mean` divides by the number of elements, as `(w * loss).mean()` would (not by the
sum of the weights). Only the predictions get a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from service.engine._binary import broadcast_weight, finish_elements
from service.engine._checks import check_option_range, require
from service.engine._dtypes import ComputeDtype, as_compute, compute_dtype_for
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult

# (d, xp) -> (loss, d loss / d d), elementwise
Elementwise = Callable[[Array, ModuleType], tuple[Array, Array]]


def mse(
    predictions: Array,
    targets: Array,
    *,
    weight: Array | None = None,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """Squared error `(x - y)^2` per element, as `F.mse_loss`."""

    def squared(d: Array, xp: ModuleType) -> tuple[Array, Array]:
        return d * d, 2 * d  # d/dd d^2 = 2 d

    return _elementwise(predictions, targets, weight, compute_dtype, squared)


def mae(
    predictions: Array,
    targets: Array,
    *,
    weight: Array | None = None,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """Absolute error `|x - y|` per element, as `F.l1_loss`; its gradient at x = y is 0."""

    def absolute(d: Array, xp: ModuleType) -> tuple[Array, Array]:
        return xp.abs(d), xp.sign(d)  # d/dd |d| = sign(d), with PyTorch's sign(0) = 0

    return _elementwise(predictions, targets, weight, compute_dtype, absolute)


def huber(
    predictions: Array,
    targets: Array,
    *,
    weight: Array | None = None,
    delta: float = 1.0,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """Huber loss, quadratic within `delta` (> 0) of the target and linear beyond, as
    `F.huber_loss`; `delta = 1` is also `F.smooth_l1_loss` with `beta = 1`."""
    check_option_range(delta, "delta", low=0.0, open_low=True)

    def huberized(d: Array, xp: ModuleType) -> tuple[Array, Array]:
        size = xp.abs(d)
        inside = size <= delta  # both branches agree at |d| = delta, value and slope
        loss = xp.where(inside, 0.5 * d * d, delta * (size - 0.5 * delta))
        # d/dd: d inside, delta sign(d) outside (the gradient is clipped at delta)
        return loss, xp.where(inside, d, delta * xp.sign(d))

    return _elementwise(predictions, targets, weight, compute_dtype, huberized)


def _elementwise(
    predictions: Array,
    targets: Array,
    weight: Array | None,
    compute_dtype: ComputeDtype | None,
    loss_of: Elementwise,
) -> LossResult:
    """Check the inputs, apply `loss_of` to d = x - y and the weight; `mean` over elements."""
    xp = array_namespace(predictions, targets, weight)
    require(
        targets.shape == predictions.shape,
        "targets",
        f"expected the predictions' shape {list(predictions.shape)}, got {list(targets.shape)}",
    )
    dtype = compute_dtype_for(predictions.dtype, compute_dtype)
    w = broadcast_weight(weight, "weight", predictions.shape, dtype, xp=xp)
    with errstate(xp, over="ignore", invalid="ignore"):  # non-finite results are rejected below
        d = as_compute(predictions, dtype) - as_compute(targets, dtype)
        per_element, grad = loss_of(d, xp)
    return finish_elements(
        per_element,
        grad,
        w,
        field="predictions",
        reason="an input is infinite, or the error overflows",
        xp=xp,
    )
