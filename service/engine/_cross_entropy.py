"""Softmax cross-entropy with PyTorch's conventions (`torch.nn.functional.cross_entropy`).

Every variant is `loss = sum_c a_c (lse - x_c)` for a per-sample target mass vector `a` with total
`A`, whose gradient is `A * softmax(x) - a`:

- class index y, class weights w, smoothing eps:  a = (1 - eps) w_y e_y + (eps / C) w
- probabilities t:                                  a = w * ((1 - eps) t + eps / C)
- z-loss (PaLM, Chowdhery et al. 2022) adds `z * lse^2`, whose gradient is `2 z lse softmax(x)`.

`mean` divides by sum(w_y) over non-ignored class indices, or by the number of samples for
probability targets, exactly as PyTorch does (its smoothing term included). A class with no
target mass contributes nothing, even when its logit is -inf (0 log 0 = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import ml_dtypes
import numpy as np

from service.engine._checks import check_option_range, check_unit_interval, first_position
from service.engine._class_balance import resolve_class_weight
from service.engine._dtypes import ComputeDtype, as_compute, compute_dtype_for
from service.engine._engine_path import fused_kernels, native_dtypes
from service.engine._kernels.interface import SoftmaxKernels
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult, Reduction, grad_scale
from service.engine._rows import class_indices, finish_rows, kept_ones, logit_rows
from service.engine._softmax import ShiftedExp, shifted_exp
from service.errors import InvalidInput

# Probability rows must sum to 1 within this, or within the labels' dtype resolution if coarser.
PROBABILITY_SUM_TOLERANCE = 1e-6


def probability_sum_tolerance(dtype: np.dtype) -> float:
    """How far from 1 rows of probabilities given in `dtype` may sum: `PROBABILITY_SUM_TOLERANCE`,
    or the dtype's resolution where that is coarser (float16, bfloat16; ml_dtypes' `finfo` knows
    both, NumPy's not bfloat16)."""
    if dtype.kind not in "fV":
        return PROBABILITY_SUM_TOLERANCE
    resolution = float(ml_dtypes.finfo(dtype).eps)  # type: ignore[no-untyped-call]
    return max(PROBABILITY_SUM_TOLERANCE, resolution)


@dataclass(frozen=True)
class TargetMass:
    """The target mass `a` of every row, in the form that is cheap for its label kind."""

    total: Array  # [M]: A = sum_c a_c
    spread: Array | None  # [C] or [M, C]: the part of `a` spread over classes; None: nothing
    at_label: tuple[Array, Array] | None  # (class index [M], mass [M]): the part at one class
    valid: Array | None  # [M] bool; None when every row counts
    divisor: float  # what `mean` divides by


def cross_entropy(
    logits: Array,
    labels: Array,
    *,
    weight: Array | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    class_counts: Array | None = None,
    class_balance_beta: float | None = None,
    compute_dtype: ComputeDtype | None = None,
    grad_reduction: Reduction = "sum",
) -> LossResult:
    """Cross-entropy of `logits` [..., C] against class indices [...] or probabilities [..., C].

    The label kind follows from the shape. `class_counts` (+ `class_balance_beta`) derive
    `weight` as Cui et al.'s class-balanced weights. Returns per-sample losses (0 for ignored
    labels) and the gradient with respect to `logits`, both from one softmax. `grad_reduction`
    is the reduction the caller will apply: the fused kernels fold its scale into the gradient
    (`LossResult.grad_scale`), so that `reduce_loss` has nothing left to do. The result is the
    same either way; the default, `sum`, gives the gradient of the sum.
    """
    xp = array_namespace(logits, labels, weight, class_counts)
    check_option_range(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    check_option_range(z_loss, "z_loss", low=0.0)
    index_labels = labels.shape == logits.shape[:-1]
    fused = fused_kernels(xp) if index_labels else None
    # 16-bit logits reach the kernel as they are; the reference widens them (`logit_rows`)
    x = logit_rows(logits, compute_dtype, xp=xp, native=native_dtypes(fused))
    dtype = compute_dtype_for(logits.dtype, compute_dtype)
    n_classes = x.shape[1]
    w = resolve_class_weight(
        weight, "weight", class_counts, class_balance_beta, n_classes, dtype, xp=xp
    )
    if labels.shape == logits.shape:
        target = probability_target(labels, w, label_smoothing, dtype, xp=xp)
    elif index_labels:
        plain = weight is None and class_counts is None and not label_smoothing and not z_loss
        if fused is not None and plain:
            found = one_call_rows(
                fused, fused.CROSS_ENTROPY, 0.0, logits, x, labels, ignore_index, grad_reduction
            )
            if found is not None:  # else the checks below name the problem
                return found
        y, valid = class_indices(labels, n_classes, ignore_index, xp=xp)
        target = class_index_target(y, valid, w, label_smoothing, n_classes, dtype, xp=xp)
        if fused is not None:
            return _fused_cross_entropy(
                fused, logits, x, target, label_smoothing, z_loss, grad_reduction, xp=xp
            )
    else:
        raise InvalidInput(
            f"labels: shape {list(labels.shape)} is neither logits.shape[:-1] = "
            f"{list(logits.shape[:-1])} (class indices) nor logits.shape = {list(logits.shape)} "
            "(probabilities)",
            field="labels",
        )
    parts = shifted_exp(x, xp=xp, dot_with=target.spread)
    per_sample = cross_entropy_rows(x, parts, target, xp=xp)
    scale = target.total
    if z_loss:
        per_sample = per_sample + z_loss_term(z_loss, parts.lse, x.dtype, xp=xp)
        scale = scale + (2 * z_loss) * parts.lse
    grad = softmax_gradient(parts, scale, target, xp=xp)
    return finish_rows(logits, per_sample, grad, target.valid, target.divisor, xp=xp)


def one_call_rows(
    fused: SoftmaxKernels,
    kind: int,
    param: float,
    logits: Array,
    x: Array,
    labels: Array,
    ignore_index: int,
    grad_reduction: Reduction,
) -> LossResult | None:
    """Cross-entropy, focal or poly-1 (`kind`) of checked rows `x` against class indices, with no
    per-class option, in one call of the kernel module (`class_index_rows`), or None where the
    general path must take it: labels of another type, rows it does not take, anything
    irregular (whose message the general path's checks give)."""
    if not _integer_labels(labels, ignore_index):
        return None
    found = fused.class_index_rows(
        x, labels.reshape(-1), ignore_index, mean=grad_reduction == "mean", kind=kind, param=param
    )
    if found is None:
        return None
    per_sample, grad, n_valid, total, scale = found
    return LossResult(
        per_sample=per_sample.reshape(logits.shape[:-1]),
        grads={"logits": grad.reshape(logits.shape)},
        n_valid=n_valid,
        divisor=float(n_valid),
        grad_scale=scale,
        total=total,
    )


def _integer_labels(labels: Array, ignore_index: int) -> bool:
    """Labels and ignore_index that `class_index_rows` reads as int64 without changing them."""
    kind, size = labels.dtype.kind, labels.dtype.itemsize
    return (kind == "i" or (kind == "u" and size < 8)) and -(2**63) <= ignore_index < 2**63


def _fused_cross_entropy(
    fused: SoftmaxKernels,
    logits: Array,
    x: Array,
    target: TargetMass,
    label_smoothing: float,
    z_loss: float,
    grad_reduction: Reduction,
    *,
    xp: ModuleType,
) -> LossResult:
    """The same loss from the fused kernel (`_kernels`): one pass over each row (`x` in any of
    its `NATIVE_INPUT_DTYPES`), the gradient written already scaled for `grad_reduction`."""
    assert target.at_label is not None  # class-index targets
    y, at_label = target.at_label
    scale = grad_scale(grad_reduction, target.divisor)
    per_sample, lse, grad = fused.softmax_rows(
        x,
        y,
        target.valid,
        kind=fused.CROSS_ENTROPY,
        at_label=at_label,
        total=target.total,
        spread=target.spread if label_smoothing else None,  # else zeros: nothing to spread
        z_loss=z_loss,
        grad_scale=scale,
    )
    if z_loss:
        per_sample += z_loss_term(z_loss, lse, grad.dtype, xp=xp)
    return finish_rows(
        logits,
        per_sample,
        grad,
        target.valid,
        target.divisor,
        xp=xp,
        grad_scale=scale,
    )


def z_loss_term(z_loss: float, lse: Array, dtype: np.dtype, *, xp: ModuleType) -> Array:
    """`z_loss * lse^2` per row (PaLM's z-loss); an overflow from a finite `lse` is an error."""
    with errstate(xp, over="ignore"):  # checked just below
        z_term = z_loss * lse * lse
    if bool(xp.any(xp.isposinf(z_term) & xp.isfinite(lse))):
        raise InvalidInput(f"z_loss: z_loss * logsumexp^2 overflows {dtype}", field="z_loss")
    return z_term


def class_index_target(
    y: Array,
    valid: Array,
    w: Array | None,
    label_smoothing: float,
    n_classes: int,
    dtype: np.dtype,
    *,
    xp: ModuleType,
) -> TargetMass:
    """a = (1 - eps) w_y e_y + (eps / C) w; ignored rows carry no label mass."""
    if w is None:
        n_valid = int(xp.count_nonzero(valid))
        all_valid = n_valid == valid.shape[0]
        w_y = kept_ones(valid.shape[0], dtype, xp=xp) if all_valid else valid.astype(dtype)
        if not label_smoothing:  # a = e_y: w_y is the mass and the total, the divisor a count
            spread = xp.zeros(n_classes, dtype=dtype)
            return TargetMass(w_y, spread, (y, w_y), valid, float(n_valid))
    else:
        w_y = xp.where(valid, w[y], 0)
    uniform = xp.ones(n_classes, dtype=dtype) if w is None else w
    spread = uniform * dtype.type(label_smoothing / n_classes)
    at_label = w_y * dtype.type(1.0 - label_smoothing)
    total = at_label + xp.sum(spread)
    divisor = float(xp.sum(w_y, dtype=np.float64))
    return TargetMass(total, spread, (y, at_label), valid, divisor)


def probability_target(
    labels: Array, w: Array | None, label_smoothing: float, dtype: np.dtype, *, xp: ModuleType
) -> TargetMass:
    """a = w * ((1 - eps) t + eps / C) for probability rows t; `mean` divides by the row count."""
    check_unit_interval(labels, "labels", xp)
    sums = xp.sum(labels, axis=-1, dtype=np.float64).reshape(-1)
    resolution = float(np.finfo(labels.dtype).eps) if labels.dtype.kind in "fV" else 0.0
    tolerance = max(PROBABILITY_SUM_TOLERANCE, resolution)
    off = xp.abs(sums - 1) > tolerance
    if bool(xp.any(off)):
        position = first_position(off.reshape(labels.shape[:-1]), xp)
        raise InvalidInput(
            f"labels: probabilities must sum to 1 over the class axis, but the row at index "
            f"{position} sums to {float(sums[int(xp.argmax(off))])}",
            field="labels",
        )
    n_classes = labels.shape[-1]
    t = as_compute(labels, dtype).reshape(-1, n_classes)
    if label_smoothing:
        t = t * dtype.type(1.0 - label_smoothing) + dtype.type(label_smoothing / n_classes)
    a = t if w is None else t * w
    return TargetMass(xp.sum(a, axis=-1), a, None, None, float(t.shape[0]))


def cross_entropy_rows(x: Array, parts: ShiftedExp, target: TargetMass, *, xp: ModuleType) -> Array:
    """sum_c a_c (lse - x_c) = A log_sum - sum_c a_c (x_c - shift), per row.

    Written with the shifted logits so the label term of a confident row is exact: for
    x_y = max, it is log_sum - 0, not (max + log_sum) - x_y, which rounds to 0 at |x| ~ 1e4.
    """
    # NaN can only arise on an all -inf row (log_sum = -inf): ignored, or rejected as infinite.
    with errstate(xp, invalid="ignore"):
        per_sample = target.total * parts.log_sum - parts.dot
        if target.at_label is not None:
            y, mass = target.at_label
            shifted_at_label = x[xp.arange(x.shape[0]), y] - parts.shift
            # 0 * -inf: no mass on a masked class adds 0
            per_sample -= xp.where(mass == 0, 0, mass * shifted_at_label)
    return per_sample


def softmax_gradient(
    parts: ShiftedExp, scale: Array, target: TargetMass, *, xp: ModuleType
) -> Array:
    """scale * softmax - a, written into the exp buffer of `parts` (one pass over it)."""
    grad = parts.exp
    with errstate(xp, invalid="ignore", divide="ignore"):  # 0/0 on all -inf rows: masked later
        grad *= (scale / parts.sum[:, 0]).astype(grad.dtype)[:, None]
    if target.spread is not None:
        grad -= target.spread
    if target.at_label is not None:
        y, mass = target.at_label
        grad[xp.arange(grad.shape[0]), y] -= mass
    return grad
