"""Knowledge distillation: KL(target || student) on temperature-softened softmaxes.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015). With student
logits x, temperature T and target probabilities p (`softmax(target_logits / T)` or given as
`target_probs`), per sample (a row over the last axis)

    loss = T^2 sum_c p_c (log p_c - log q_c),   q = softmax(x / T)
    d loss / dx = T (q sum_c p_c - p)            [= T (q - p) for a distribution p]

The T^2 keeps the gradient's scale independent of T (the chain rule through x / T gives 1/T).
This is `T**2 * F.kl_div(F.log_softmax(x / T), p, reduction="batchmean")`, except that `mean`
divides by the number of rows, all leading axes together, where PyTorch's `batchmean` divides by
the first axis only. A class with p_c = 0 contributes 0 (0 log 0 = 0) even where its student
logit is -inf, where PyTorch's `0 * -inf` gives NaN.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from service.engine._checks import check_option_range, check_unit_interval, first_position, require
from service.engine._cross_entropy import PROBABILITY_SUM_TOLERANCE
from service.engine._dtypes import ComputeDtype, as_compute
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult
from service.engine._rows import finish_rows, logit_rows
from service.engine._softmax import ShiftedExp, shifted_exp
from service.errors import InvalidInput


def kl_divergence(
    logits: Array,
    *,
    target_logits: Array | None = None,
    target_probs: Array | None = None,
    temperature: float = 1.0,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """`T^2 KL(p || softmax(logits / T))` per row of `logits` [..., C]; `mean` is `batchmean`.

    Give exactly one target, of the logits' shape: `target_logits` (softened by the same T) or
    `target_probs` (rows in [0, 1] summing to 1 within 1e-6). The gradient is for the student
    logits only; the target is a constant.
    """
    xp = array_namespace(logits, target_logits, target_probs)
    check_option_range(temperature, "temperature", low=0.0, open_low=True)
    if target_probs is not None and target_logits is None:
        field, target = "target_probs", target_probs
    elif target_logits is not None and target_probs is None:
        field, target = "target_logits", target_logits
    else:
        raise InvalidInput(
            "target_logits: give exactly one of target_logits and target_probs",
            field="target_logits",
        )
    require(
        target.shape == logits.shape,
        field,
        f"expected the logits' shape {list(logits.shape)}, got {list(target.shape)}",
    )
    x = logit_rows(logits, compute_dtype, xp=xp)
    dtype = x.dtype
    with np.errstate(over="ignore"):  # a temperature whose square overflows is rejected
        t_squared = dtype.type(temperature) ** 2
    require(bool(np.isfinite(t_squared)), "temperature", f"temperature^2 overflows {dtype}")
    scaled = _soften(x, temperature, "logits", xp=xp)
    student = shifted_exp(scaled, xp=xp)
    if field == "target_logits":
        t = _soften(_target_rows(target, dtype, xp=xp), temperature, field, xp=xp)
        parts = shifted_exp(t, xp=xp)
        empty = parts.sum[:, 0] == 0
        if bool(xp.any(empty)):
            raise InvalidInput(
                f"{field}: every logit of the row at index "
                f"{first_position(empty.reshape(logits.shape[:-1]), xp)} is -inf",
                field=field,
            )
        log_p = _log_softmax_rows(t, parts, xp=xp)
        p = parts.exp
        p *= (1 / parts.sum).astype(dtype)
    else:
        p = _probability_rows(target, dtype, xp=xp)
        with errstate(xp, divide="ignore"):  # log 0 = -inf, only where p = 0 (masked below)
            log_p = xp.log(p)
    log_q = _log_softmax_rows(scaled, student, xp=xp)
    with errstate(xp, invalid="ignore"):  # -inf - -inf where p = 0 and q = 0: masked
        terms = xp.where(p == 0, 0, p * (log_p - log_q))  # 0 log 0 = 0
    per_sample = xp.sum(terms, axis=-1) * t_squared
    # T^2 d/dx [-sum_c p_c log q_c(x / T)] = T (q sum(p) - p); the entropy of p is a constant
    grad = student.exp
    mass = xp.sum(p, axis=-1, dtype=np.float64)
    with errstate(xp, invalid="ignore", divide="ignore"):  # 0/0 on an all -inf row: rejected
        grad *= (temperature * mass / student.sum[:, 0]).astype(dtype)[:, None]
    grad -= dtype.type(temperature) * p
    return finish_rows(logits, per_sample, grad, None, float(x.shape[0]), xp=xp)


def _target_rows(target_logits: Array, dtype: np.dtype, *, xp: ModuleType) -> Array:
    """`target_logits` as [M, C] rows in the student's compute dtype; -inf masks a class."""
    with errstate(xp, over="ignore"):  # float64 -> float32 may overflow: rejected just below
        t = as_compute(target_logits, dtype)
    if t is not target_logits and bool(xp.any(xp.isposinf(t))):
        position = first_position(xp.isposinf(t), xp)
        raise InvalidInput(
            f"target_logits: value at index {position} overflows {dtype.name}",
            field="target_logits",
        )
    return t.reshape(-1, target_logits.shape[-1])


def _soften(x: Array, temperature: float, field: str, *, xp: ModuleType) -> Array:
    """x / T, rejecting a division that overflows (finite x, tiny T)."""
    if temperature == 1:
        return x
    with errstate(xp, over="ignore"):
        scaled = x / x.dtype.type(temperature)
    overflow = xp.isinf(scaled) & xp.isfinite(x)
    if bool(xp.any(overflow)):
        raise InvalidInput(
            f"temperature: {field} / temperature overflows {x.dtype}",
            field="temperature",
        )
    return scaled


def _log_softmax_rows(x: Array, parts: ShiftedExp, *, xp: ModuleType) -> Array:
    """log softmax = (x - shift) - log_sum: exact for the large classes, finite for the small."""
    with errstate(xp, invalid="ignore"):  # an all -inf row gives NaN: rejected by the caller
        return (x - parts.shift[:, None]) - parts.log_sum[:, None].astype(x.dtype)


def _probability_rows(probs: Array, dtype: np.dtype, *, xp: ModuleType) -> Array:
    """`target_probs` as [M, C] rows in `dtype`: in [0, 1], each summing to 1 within 1e-6."""
    field = "target_probs"
    check_unit_interval(probs, field, xp)
    sums = xp.sum(probs, axis=-1, dtype=np.float64).reshape(-1)
    resolution = float(np.finfo(probs.dtype).eps) if probs.dtype.kind in "fV" else 0.0
    off = xp.abs(sums - 1) > max(PROBABILITY_SUM_TOLERANCE, resolution)
    if bool(xp.any(off)):
        position = first_position(off.reshape(probs.shape[:-1]), xp)
        raise InvalidInput(
            f"{field}: probabilities must sum to 1 over the class axis, but the row at index "
            f"{position} sums to {float(sums[int(xp.argmax(off))])}",
            field=field,
        )
    return as_compute(probs, dtype).reshape(-1, probs.shape[-1])
