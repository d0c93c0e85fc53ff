"""Inputs and outputs of the losses over a class axis, which work on rows.

Logits `[..., C]` become rows `[M, C]` (a view when contiguous); class weights and class-index
labels are checked once here for every such loss; `finish_rows` masks ignored rows, rejects
infinite losses and restores the leading shape.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from service.engine._checks import check_nonnegative, first_position, require
from service.engine._dtypes import ComputeDtype, as_compute, compute_dtype_for, read_as_is
from service.engine._namespace import Array, errstate
from service.engine._reduction import LossResult
from service.errors import InvalidInput


def logit_rows(
    logits: Array,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
    native: frozenset[str] = frozenset(),
) -> Array:
    """`logits` [..., C] as [M, C] rows in the compute dtype, or as they are where their dtype is
    `native` to the kernel about to read them (`_engine_path.native_dtypes`: 16-bit rows are
    widened element by element inside it) and the compute dtype is their default one."""
    require(logits.ndim >= 1, "logits", "expected at least one axis (the class axis), got a scalar")
    require(logits.shape[-1] >= 1, "logits", "the class axis (the last one) is empty")
    if read_as_is(logits.dtype, compute_dtype, native):
        return logits.reshape(-1, logits.shape[-1])
    dtype = compute_dtype_for(logits.dtype, compute_dtype)
    with errstate(xp, over="ignore"):  # float64 -> float32 may overflow: rejected just below
        x = as_compute(logits, dtype)
    if x is not logits and bool(xp.any(xp.isposinf(x))):
        position = first_position(xp.isposinf(x), xp)
        raise InvalidInput(
            f"logits: value at index {position} overflows {dtype.name}", field="logits"
        )
    return x.reshape(-1, logits.shape[-1])


def class_weight(
    weight: Array, n_classes: int, dtype: np.dtype, *, xp: ModuleType, field: str = "weight"
) -> Array:
    """One factor per class (a weight, focal alpha, a prior, counts): shape [C], finite, >= 0."""
    require(
        weight.shape == (n_classes,),
        field,
        f"expected shape [{n_classes}] (one value per class), got {list(weight.shape)}",
    )
    with errstate(xp, over="ignore"):  # an overflow to inf is reported by the check
        w = as_compute(weight, dtype)
    check_nonnegative(w, field, xp)
    return w


def class_indices(
    labels: Array, n_classes: int, ignore_index: int, *, xp: ModuleType
) -> tuple[Array, Array]:
    """Class-index labels [...] -> (indices [M] with ignored rows set to 0, valid mask [M]).

    Labels may arrive as floats (JSON `2.0`): they must then be whole numbers. An index outside
    [0, C) that is not `ignore_index` is an error, never a silent 0 or NaN.
    """
    flat = labels.reshape(-1)
    require(flat.dtype.kind != "b", "labels", "class indices must be integers, got booleans")
    if flat.dtype.kind in "iu" and flat.size:
        # The common case, every label a class and none ignore_index, in two reductions
        # instead of the checks below (five passes and two arrays of M).
        low, high = int(flat.min()), int(flat.max())  # methods: no dispatch
        if low >= 0 and high < n_classes and not low <= ignore_index <= high:
            return flat.astype(np.int64, copy=False), xp.ones(flat.shape, dtype=bool)
    if flat.dtype.kind not in "iu":
        flat = flat.astype(np.float64)  # float16 / bfloat16 / float32 labels: check as float64
        fractional = flat != xp.floor(flat)
        if bool(xp.any(fractional)):
            position = first_position(fractional.reshape(labels.shape), xp)
            raise InvalidInput(
                f"labels: class indices must be integers, got {float(labels[position])} "
                f"at index {position}",
                field="labels",
            )
    valid = flat != ignore_index
    out_of_range = valid & ((flat < 0) | (flat >= n_classes))
    if bool(xp.any(out_of_range)):
        position = first_position(out_of_range.reshape(labels.shape), xp)
        label = labels[position]
        shown = int(label) if labels.dtype.kind in "iu" else float(label)  # 1e+300, not 301 digits
        raise InvalidInput(
            f"labels: label {shown} at index {position} is outside "
            f"[0, {n_classes}) and is not ignore_index ({ignore_index})",
            field="labels",
        )
    indices = xp.where(valid, flat, 0).astype(np.int64)
    return indices, valid


# Up to this many rows, `kept_ones` hands out views of one array per dtype (4 MiB of float32).
KEPT_ONES_ROWS = 1 << 20
_KEPT_ONES: dict[np.dtype, np.ndarray] = {}


def kept_ones(n_rows: int, dtype: np.dtype, *, xp: ModuleType) -> Array:
    """A read-only [n_rows] of ones (True for bool): for NumPy up to `KEPT_ONES_ROWS` rows a view
    of an array kept between calls, which saves the pass that makes it (the unit mass and the
    valid rows of the common target: every label a class, no weight)."""
    if xp is not np or n_rows > KEPT_ONES_ROWS:
        return xp.ones(n_rows, dtype=dtype)
    kept = _KEPT_ONES.get(dtype)
    if kept is None or kept.shape[0] < n_rows:
        kept = np.ones(max(n_rows, 1024), dtype=dtype)
        kept.flags.writeable = False  # shared by every call: no one may write it
        _KEPT_ONES[dtype] = kept  # a race only makes one more of them
    return kept[:n_rows]


def finish_rows(
    logits: Array,
    per_sample: Array,
    grad: Array,
    valid: Array | None,
    divisor: float,
    *,
    xp: ModuleType,
    grad_scale: float = 1.0,
) -> LossResult:
    """Zero the ignored rows, reject infinite losses and give rows their leading shape back.

    `grad_scale` is the factor the kernel folded into `grad` (`LossResult.grad_scale`)."""
    lead_shape = logits.shape[:-1]
    if valid is None:
        n_valid = per_sample.shape[0]
    else:
        n_valid = int(xp.count_nonzero(valid))
        if n_valid < per_sample.shape[0]:  # else nothing to mask: two passes saved
            per_sample = xp.where(valid, per_sample, 0)
            grad[~valid] = 0
    per_sample = per_sample.astype(grad.dtype, copy=False)
    # The sum `reduce_loss` needs, taken here: it is finite when every loss is, so the losses
    # themselves are only looked at when it is not (a float64 sum of float64 losses may also
    # overflow from finite ones: then they are all finite, and the sum stays inf).
    with errstate(xp, over="ignore"):
        total = float(per_sample.sum(dtype=np.float64))
    if not math.isfinite(total):
        finite = xp.isfinite(per_sample)
        if not bool(finite.all()):
            position = first_position((~finite).reshape(lead_shape), xp)
            raise InvalidInput(
                f"logits: the loss at index {position} is not finite in {grad.dtype}: the "
                "target puts probability mass on a class whose logit is -inf (or so far below "
                "the largest that its log-probability overflows), or an option overflows it",
                field="logits",
            )
    return LossResult(
        per_sample=per_sample.reshape(lead_shape),
        grads={"logits": grad.reshape(logits.shape)},
        n_valid=n_valid,
        divisor=divisor,
        grad_scale=grad_scale,
        total=total,
    )
