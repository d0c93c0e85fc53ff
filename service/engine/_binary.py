"""Binary cross-entropy on logits, as `torch.nn.functional.binary_cross_entropy_with_logits`.

Per element, with pos_weight p and weight w:
    loss = w * (p y softplus(-x) + (1 - y) softplus(x))      [-log sigmoid(x) = softplus(-x)]
    d loss / dx = w * (sigmoid(x) (p y + 1 - y) - p y)
softplus(x) = max(x, 0) + log1p(exp(-|x|)) never overflows, and softplus(-x) = softplus(x) - x
reuses it. A term with zero coefficient is 0 even at x = -inf, where PyTorch returns NaN for a
label of exactly 0. `mean` divides by the number of elements, as PyTorch.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from service.engine._checks import (
    check_broadcastable,
    check_nonnegative,
    check_unit_interval,
    first_position,
    require,
)
from service.engine._dtypes import ComputeDtype, as_compute, compute_dtype_for
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult
from service.errors import InvalidInput


def binary_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    weight: Array | None = None,
    pos_weight: Array | None = None,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """Elementwise BCE of `logits` against targets in [0, 1] of the same shape.

    `weight` broadcasts to the logits' shape; `pos_weight` too (typically [C], one per class on
    the last axis). Returns the elementwise loss and its gradient.
    """
    xp = array_namespace(logits, labels, weight, pos_weight)
    require(
        labels.shape == logits.shape,
        "labels",
        f"expected the logits' shape {list(logits.shape)}, got {list(labels.shape)}",
    )
    check_unit_interval(labels, "labels", xp)
    dtype = compute_dtype_for(logits.dtype, compute_dtype)
    x = as_compute(logits, dtype)
    y = as_compute(labels, dtype)
    w = _broadcast_weight(weight, "weight", logits.shape, dtype, xp=xp)
    p = _broadcast_weight(pos_weight, "pos_weight", logits.shape, dtype, xp=xp)

    with errstate(xp, invalid="ignore", over="ignore"):
        softplus = xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))  # -log(1 - sigmoid(x))
        softplus_neg = softplus - x  # -log sigmoid(x); +inf at x = -inf
        positive = y if p is None else p * y  # coefficient of -log sigmoid(x)
        negative = 1 - y  # coefficient of -log(1 - sigmoid(x))
        # 0 * inf = 0: a label of exactly 0 at a -inf logit costs nothing.
        per_element = xp.where(positive == 0, 0, positive * softplus_neg) + negative * softplus
        grad = xp.exp(-softplus_neg) * (positive + negative) - positive  # sigmoid(x) = exp(-sp(-x))
    if w is not None:
        per_element = per_element * w
        grad *= w
    infinite = ~xp.isfinite(per_element)
    if bool(xp.any(infinite)):
        position = first_position(infinite, xp)
        raise InvalidInput(
            f"logits: the loss at index {position} is infinite: a positive target meets a "
            "-inf logit",
            field="logits",
        )
    numel = per_element.size
    return LossResult(
        per_sample=per_element, grads={"logits": grad}, n_valid=numel, divisor=float(numel)
    )


def _broadcast_weight(
    weight: Array | None, field: str, shape: tuple[int, ...], dtype: np.dtype, *, xp: ModuleType
) -> Array | None:
    if weight is None:
        return None
    check_broadcastable(weight.shape, shape, field)
    with errstate(xp, over="ignore"):  # an overflow to inf is reported by the check
        w = as_compute(weight, dtype)
    check_nonnegative(w, field, xp)
    return w
