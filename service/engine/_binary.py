"""Losses on independent sigmoid outputs: binary cross-entropy and sigmoid focal loss.

Binary cross-entropy follows `torch.nn.functional.binary_cross_entropy_with_logits`. Per element,
with pos_weight p and weight w:
    loss = w * (p y softplus(-x) + (1 - y) softplus(x))      [-log sigmoid(x) = softplus(-x)]
    d loss / dx = w * (sigmoid(x) (p y + 1 - y) - p y)
softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)) never overflows, and the two share the log1p.
A term with zero coefficient is 0 even at x = -inf, where PyTorch returns NaN for a label of
exactly 0. `mean` divides by the number of elements, as PyTorch.

The sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", 2017) is that
cross-entropy times `(1 - p_t)^gamma`, with torchvision's `sigmoid_focal_loss` conventions.

On NumPy arrays, both run in one compiled pass (`_kernels.cpu.binary_rows`, see `_engine_path`) that
computes these formulas per element and checks the targets on the way; the array code here is the
reference it is tested against, the CuPy path, and what raises the errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from service.engine._checks import (
    check_broadcastable,
    check_nonnegative,
    check_option_range,
    check_unit_interval,
    first_position,
    require,
)
from service.engine._dtypes import ComputeDtype, as_compute, compute_dtype_for, read_as_is
from service.engine._engine_path import fused_kernels, native_dtypes
from service.engine._kernels.interface import SIGMOID_FOCAL
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult, Reduction, grad_scale
from service.errors import InvalidInput


def binary_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    weight: Array | None = None,
    pos_weight: Array | None = None,
    compute_dtype: ComputeDtype | None = None,
    grad_reduction: Reduction = "sum",
) -> LossResult:
    """Elementwise BCE of `logits` against targets in [0, 1] of the same shape.

    `weight` broadcasts to the logits' shape; `pos_weight` too (typically [C], one per class on
    the last axis). Returns the elementwise loss and its gradient. `grad_reduction`: as
    `cross_entropy`'s (the fused kernel folds `mean`'s 1 / divisor into the gradient).
    """
    xp = array_namespace(logits, labels, weight, pos_weight)
    kernels = fused_kernels(xp)
    if kernels is not None and hasattr(kernels, "binary_rows"):  # numba's; CUDA has none yet
        return _fused_elementwise(
            kernels,
            logits,
            labels,
            weight,
            pos_weight,
            compute_dtype,
            grad_reduction,
            lambda: _reference_binary_cross_entropy(
                logits, labels, weight, pos_weight, compute_dtype, xp=xp
            ),
            xp=xp,
        )
    return _reference_binary_cross_entropy(logits, labels, weight, pos_weight, compute_dtype, xp=xp)


def _reference_binary_cross_entropy(
    logits: Array,
    labels: Array,
    weight: Array | None,
    pos_weight: Array | None,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
) -> LossResult:
    x, y, w = _logits_and_targets(logits, labels, weight, compute_dtype, xp=xp)
    p = broadcast_weight(pos_weight, "pos_weight", logits.shape, x.dtype, xp=xp)
    positive = y if p is None else p * y  # coefficient of -log sigmoid(x)
    per_element, grad = bce_terms(*softplus_pair(x, xp=xp), positive, 1 - y, xp=xp)
    return finish_elements(per_element, grad, w, xp=xp)


def sigmoid_focal(
    logits: Array,
    labels: Array,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    weight: Array | None = None,
    compute_dtype: ComputeDtype | None = None,
    grad_reduction: Reduction = "sum",
) -> LossResult:
    """torchvision's `sigmoid_focal_loss`: `alpha_t (1 - p_t)^gamma BCE(x, y)` per element.

    p = sigmoid(x), p_t = p y + (1 - p)(1 - y), alpha_t = alpha y + (1 - alpha)(1 - y);
    `alpha=None` leaves alpha_t out (torchvision's `alpha < 0`) and `gamma = 0` is BCE.
    `weight` broadcasts and multiplies each element, and `mean` divides by the number of
    elements. An element whose alpha_t is 0 costs nothing, even a label 1 at a -inf logit.
    `grad_reduction`: as `binary_cross_entropy`'s.
    """
    xp = array_namespace(logits, labels, weight)
    if alpha is not None:
        check_option_range(alpha, "alpha", low=0.0, high=1.0)
    check_option_range(gamma, "gamma", low=0.0)
    kernels = fused_kernels(xp)
    if kernels is not None and hasattr(kernels, "binary_rows"):
        return _fused_elementwise(
            kernels,
            logits,
            labels,
            weight,
            None,
            compute_dtype,
            grad_reduction,
            lambda: _reference_sigmoid_focal(
                logits, labels, alpha, gamma, weight, compute_dtype, xp=xp
            ),
            xp=xp,
            kind=SIGMOID_FOCAL,
            gamma=gamma,
            alpha=alpha,
        )
    return _reference_sigmoid_focal(logits, labels, alpha, gamma, weight, compute_dtype, xp=xp)


def _reference_sigmoid_focal(
    logits: Array,
    labels: Array,
    alpha: float | None,
    gamma: float,
    weight: Array | None,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
) -> LossResult:
    x, y, w = _logits_and_targets(logits, labels, weight, compute_dtype, xp=xp)
    softplus, softplus_neg = softplus_pair(x, xp=xp)
    ce, d_ce = bce_terms(softplus, softplus_neg, y, 1 - y, xp=xp)  # d_ce = sigmoid(x) - y
    p = xp.exp(-softplus_neg)  # sigmoid(x)
    q = xp.exp(-softplus)  # 1 - sigmoid(x), without the cancellation of 1 - p
    m = (1 - y) * p + y * q  # 1 - p_t, a sum of non-negative terms
    modulator = m**gamma  # 0^0 = 1: gamma = 0 is BCE
    # dm/dx = p q (1 - 2y); r = p q / m is in [0, 1] since m >= min(p, q), so the factor
    # m^(gamma - 1) never forms (it is inf at m = 0 for gamma < 1, where the limit is 0).
    r = xp.where(m > 0, p * q / xp.where(m > 0, m, 1), 0)
    with errstate(xp, invalid="ignore"):  # inf * 0 at a -inf logit: rejected, or alpha_t = 0
        per_element = ce * modulator
        # d/dx [ce m^g] = (p - y) m^g + g ce m^g r (1 - 2y)
        grad = modulator * (d_ce + gamma * ce * r * (1 - 2 * y))
        if alpha is not None:
            alpha_t = alpha * y + (1 - alpha) * (1 - y)
            per_element = xp.where(alpha_t == 0, 0, alpha_t * per_element)
            grad = xp.where(alpha_t == 0, 0, alpha_t * grad)
    return finish_elements(per_element, grad, w, xp=xp)


def _fused_elementwise(
    kernels: Any,  # `_kernels.cpu`: the only kernel module with `binary_rows`
    logits: Array,
    labels: Array,
    weight: Array | None,
    pos_weight: Array | None,
    compute_dtype: ComputeDtype | None,
    grad_reduction: Reduction,
    reference: Callable[[], LossResult],
    *,
    xp: ModuleType,
    **options: Any,
) -> LossResult:
    """The same loss from the fused kernel (`_kernels.cpu.binary_rows` with `options`: BCE or the
    sigmoid focal loss): one pass over the elements that also checks the targets, the gradient
    written already scaled for `grad_reduction`.

    Errors are the reference's, in its order: the kernel only says that something is wrong, and
    the `reference` code then says what.
    """
    _require_same_shape(logits, labels)
    shape = logits.shape
    dtype = compute_dtype_for(logits.dtype, compute_dtype)
    # The kernel reads a pair of one native dtype (16-bit uploads) as it is, else the compute dtype
    native = native_dtypes(kernels)
    cast = labels.dtype != logits.dtype or not read_as_is(logits.dtype, compute_dtype, native)
    if cast and labels.dtype != dtype:  # a cast may round a value into [0, 1]: check them first
        check_unit_interval(labels, "labels", xp)
    try:
        w = broadcast_weight(weight, "weight", shape, dtype, xp=xp)
        p = broadcast_weight(pos_weight, "pos_weight", shape, dtype, xp=xp)
    except InvalidInput:
        check_unit_interval(labels, "labels", xp)  # the reference reports bad labels first
        raise
    rows = (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)
    x = (as_compute(logits, dtype) if cast else logits).reshape(rows)
    y = (as_compute(labels, dtype) if cast else labels).reshape(rows)
    divisor = float(x.size)
    scale = grad_scale(grad_reduction, divisor)
    per_element, grad, status, total = kernels.binary_rows(
        x, y, _factor_rows(w, shape), _factor_rows(p, shape), grad_scale=scale, **options
    )
    if status:  # a target outside [0, 1], a loss not finite or a NaN logit: the reference
        return reference()  # code raises its own error (and any result it gives is right)
    return LossResult(
        per_sample=per_element.reshape(shape),
        grads={"logits": grad.reshape(shape)},
        n_valid=x.size,
        divisor=divisor,
        grad_scale=scale,
        total=total,
    )


def _factor_rows(factor: Array | None, shape: tuple[int, ...]) -> Array | None:
    """A factor that broadcasts to `shape`, as the kernel takes it: [C] where every row gets the
    same values (a view), else [M, C] (copied only where the broadcast needs it)."""
    if factor is None:
        return None
    full = np.broadcast_to(factor, shape)
    if not shape:
        return full.reshape(1)
    n_rows = math.prod(shape[:-1])
    repeated = zip(full.strides[:-1], shape[:-1], strict=True)
    if n_rows and all(stride == 0 or n == 1 for stride, n in repeated):
        return full[(0,) * (len(shape) - 1)]
    return full.reshape(n_rows, shape[-1])


def softplus_pair(x: Array, *, xp: ModuleType) -> tuple[Array, Array]:
    """(softplus(x), softplus(-x)) = (-log(1 - sigmoid(x)), -log sigmoid(x)), never overflowing.

    softplus(x) = max(x, 0) + log1p(exp(-|x|)), and softplus(-x) shares the log1p term: unlike
    softplus(x) - x it keeps the tiny loss e^-x of a confident x > 0. sigmoid(x) =
    exp(-softplus(-x)) and 1 - sigmoid(x) = exp(-softplus(x)) follow without cancellation.
    Both are +inf where their argument is.
    """
    tail = xp.log1p(xp.exp(-xp.abs(x)))  # log(1 + e^-|x|), in (0, log 2]
    return xp.maximum(x, 0) + tail, xp.maximum(-x, 0) + tail


def bce_terms(
    softplus: Array, softplus_neg: Array, positive: Array, negative: Array, *, xp: ModuleType
) -> tuple[Array, Array]:
    """`positive * -log sigmoid(x) + negative * -log(1 - sigmoid(x))` and its derivative in x.

    d/dx = sigmoid(x) (positive + negative) - positive. A zero coefficient on an infinite log
    contributes 0, not 0 * inf = NaN.
    """
    with errstate(xp, invalid="ignore"):
        per_element = xp.where(positive == 0, 0, positive * softplus_neg) + negative * softplus
        grad = xp.exp(-softplus_neg) * (positive + negative) - positive  # sigmoid = exp(-sp(-x))
    return per_element, grad


def broadcast_weight(
    weight: Array | None, field: str, shape: tuple[int, ...], dtype: np.dtype, *, xp: ModuleType
) -> Array | None:
    """An elementwise factor that broadcasts to `shape`: finite and >= 0, in `dtype`."""
    if weight is None:
        return None
    check_broadcastable(weight.shape, shape, field)
    with errstate(xp, over="ignore"):  # an overflow to inf is reported by the check
        w = as_compute(weight, dtype)
    check_nonnegative(w, field, xp)
    return w


def _logits_and_targets(
    logits: Array,
    labels: Array,
    weight: Array | None,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
) -> tuple[Array, Array, Array | None]:
    """Logits and [0, 1] targets of one shape, and the broadcast weight, in the compute dtype."""
    _require_same_shape(logits, labels)
    check_unit_interval(labels, "labels", xp)
    dtype = compute_dtype_for(logits.dtype, compute_dtype)
    w = broadcast_weight(weight, "weight", logits.shape, dtype, xp=xp)
    return as_compute(logits, dtype), as_compute(labels, dtype), w


def _require_same_shape(logits: Array, labels: Array) -> None:
    require(
        labels.shape == logits.shape,
        "labels",
        f"expected the logits' shape {list(logits.shape)}, got {list(labels.shape)}",
    )


def finish_elements(
    per_element: Array,
    grad: Array,
    w: Array | None,
    *,
    field: str = "logits",
    reason: str = "a positive target meets a -inf logit",
    xp: ModuleType,
) -> LossResult:
    """The result of an elementwise loss: weighted, checked finite, `mean` over elements.

    `field` is the differentiated input (the key of `grads`, and the field an error names);
    `reason` says how a loss can fail to be finite.
    """
    with errstate(xp, over="ignore", invalid="ignore"):  # non-finite results are rejected below
        if w is not None:
            per_element = per_element * w
            grad = grad * w
        bad = ~(xp.isfinite(per_element) & xp.isfinite(grad))
    if bool(xp.any(bad)):
        position = first_position(bad, xp)
        raise InvalidInput(
            f"{field}: the loss at index {position} is not finite in {per_element.dtype}: {reason}",
            field=field,
        )
    numel = per_element.size
    return LossResult(
        per_sample=per_element, grads={field: grad}, n_valid=numel, divisor=float(numel)
    )
