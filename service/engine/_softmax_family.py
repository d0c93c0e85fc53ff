"""Softmax losses on class-index labels that reshape cross-entropy's `-log p_y`.

Each is a function of `log p_y = (x_y - shift) - log_sum` (never the log of a softmax), so the
gradient of every one but forward correction is `s (softmax(x) - e_y)` with the per-row factor
`s = -dL / d log p_y`, because `d log p_y / d x_k = delta_ky - p_k`:

- focal (Lin et al., "Focal Loss for Dense Object Detection", 2017), softmax form
- poly-1 (Leng et al., "PolyLoss", 2022)
- symmetric cross-entropy (Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy
  Labels", 2019)
- generalized cross-entropy (Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep
  Neural Networks with Noisy Labels", 2018)

Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", 2021) is cross-entropy
on shifted logits, and forward correction (Patrini et al., "Making Deep Neural Networks Robust to
Label Noise: a Loss Correction Approach", 2017) is a difference of two log-sum-exps.

`mean` divides by the number of non-ignored labels for all of them; a focal `alpha` is a factor on
the loss, not a weight that enters the divisor (as in RetinaNet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from service.engine._checks import check_nonnegative, check_option_range, require
from service.engine._class_balance import resolve_class_weight
from service.engine._cross_entropy import (
    TargetMass,
    cross_entropy,
    one_call_rows,
    softmax_gradient,
)
from service.engine._dtypes import ComputeDtype, as_compute, compute_dtype_for
from service.engine._engine_path import fused_kernels, native_dtypes
from service.engine._kernels.interface import SoftmaxKernels
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._reduction import LossResult, Reduction, grad_scale
from service.engine._rows import class_indices, class_weight, finish_rows, logit_rows
from service.engine._softmax import ShiftedExp, shifted_exp
from service.errors import InvalidInput

# Rows of a transition matrix must sum to 1 within this.
TRANSITION_ROW_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LabelRows:
    """Logit rows, their class-index labels and `log p_y`, all from one softmax."""

    x: Array  # [M, C] in the compute dtype
    y: Array  # [M] class index, 0 on ignored rows
    valid: Array  # [M] bool
    parts: ShiftedExp
    log_p: Array  # [M] float64: log p_y, 0 on ignored rows (so p_y = 1 there, harmless)

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())


def focal(
    logits: Array,
    labels: Array,
    *,
    gamma: float = 2.0,
    alpha: Array | None = None,
    ignore_index: int = -100,
    class_counts: Array | None = None,
    class_balance_beta: float | None = None,
    compute_dtype: ComputeDtype | None = None,
    grad_reduction: Reduction = "sum",
) -> LossResult:
    """Softmax focal loss `-alpha_y (1 - p_y)^gamma log p_y` of `logits` [..., C], labels [...].

    `gamma = 0` is cross-entropy. A class whose `alpha` is 0 contributes 0, even at a -inf logit.
    `class_counts` (+ `class_balance_beta`) derive `alpha` as class-balanced weights (Cui et al.).
    `grad_reduction`: as `cross_entropy`'s.
    """
    xp = array_namespace(logits, labels, alpha, class_counts)
    check_option_range(gamma, "gamma", low=0.0)
    fused = fused_kernels(xp)
    x = checked_rows(logits, labels, compute_dtype, xp=xp, native=native_dtypes(fused))
    per_class = alpha is not None or class_counts is not None or class_balance_beta is not None
    if fused is not None and not per_class:
        found = one_call_rows(
            fused, fused.FOCAL, gamma, logits, x, labels, ignore_index, grad_reduction
        )
        if found is not None:  # else the checks below name the problem
            return found
    y, valid = class_indices(labels, x.shape[1], ignore_index, xp=xp)
    dtype = compute_dtype_for(logits.dtype, compute_dtype)
    a = resolve_class_weight(
        alpha, "alpha", class_counts, class_balance_beta, x.shape[1], dtype, xp=xp
    )
    if fused is not None:
        return _fused_label_loss(
            fused, fused.FOCAL, gamma, a, logits, x, y, valid, grad_reduction, xp=xp
        )
    rows = softmax_label_rows(x, y, valid, xp=xp)
    log_p = rows.log_p
    p = xp.exp(log_p)
    one_minus_p = -xp.expm1(log_p)  # exact for p near 1, where 1 - p would cancel
    modulator = one_minus_p**gamma  # 0^0 = 1: gamma = 0 is cross-entropy
    # r = -log p / (1 - p) -> 1 as p -> 1; it keeps (1 - p)^(gamma - 1) from being formed
    r = -log_p / xp.where(one_minus_p > 0, one_minus_p, 1)
    r = xp.where(one_minus_p > 0, r, 1)
    with errstate(xp, invalid="ignore"):  # 0 * inf at p = 0 (label on a -inf class): the limit 0
        p_r = xp.where(p == 0, 0, p * r)
    # d/du [-(1 - e^u)^g u] at u = log p: -(1 - p)^g + g p log p (1 - p)^(g - 1)
    #   = -(1 - p)^g (1 + g p r), so s = alpha_y (1 - p)^g (1 + g p r)
    s = modulator * (1 + gamma * p_r)
    per_sample = modulator * -log_p
    if a is not None:
        a_y = a[rows.y]
        s = a_y * s
        with errstate(xp, invalid="ignore"):  # alpha_y = 0 at a -inf logit: 0, not 0 * inf
            per_sample = xp.where(a_y == 0, 0, a_y * per_sample)
    return _finish(logits, rows, per_sample, s, xp=xp)


def poly1(
    logits: Array,
    labels: Array,
    *,
    epsilon: float = 1.0,
    ignore_index: int = -100,
    compute_dtype: ComputeDtype | None = None,
    grad_reduction: Reduction = "sum",
) -> LossResult:
    """Poly-1 loss `-log p_y + epsilon (1 - p_y)`; `epsilon >= -1` keeps it decreasing in p_y.

    `grad_reduction`: as `cross_entropy`'s."""
    xp = array_namespace(logits, labels)
    check_option_range(epsilon, "epsilon", low=-1.0)
    fused = fused_kernels(xp)
    x = checked_rows(logits, labels, compute_dtype, xp=xp, native=native_dtypes(fused))
    if fused is not None:
        found = one_call_rows(
            fused, fused.POLY1, epsilon, logits, x, labels, ignore_index, grad_reduction
        )
        if found is not None:  # else the checks below name the problem
            return found
    y, valid = class_indices(labels, x.shape[1], ignore_index, xp=xp)
    if fused is not None:
        return _fused_label_loss(
            fused, fused.POLY1, epsilon, None, logits, x, y, valid, grad_reduction, xp=xp
        )
    rows = softmax_label_rows(x, y, valid, xp=xp)
    per_sample = -rows.log_p - epsilon * xp.expm1(rows.log_p)
    # d/du [-u + eps (1 - e^u)] = -1 - eps p, so s = 1 + eps p
    s = 1 + epsilon * xp.exp(rows.log_p)
    return _finish(logits, rows, per_sample, s, xp=xp)


def symmetric_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_zero: float = -4.0,
    ignore_index: int = -100,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """`alpha CE + beta RCE` with the reverse cross-entropy `RCE = -log_zero (1 - p_y)`.

    RCE is `-sum_k p_k log q_k` for the one-hot target q with `log 0` clipped to `log_zero`.
    With `alpha = 0` the loss is bounded: a label on a -inf class costs `-beta log_zero`.
    """
    xp = array_namespace(logits, labels)
    check_option_range(alpha, "alpha", low=0.0)
    check_option_range(beta, "beta", low=0.0)
    require(math.isfinite(log_zero), "log_zero", f"expected a finite value <= 0, got {log_zero}")
    check_option_range(log_zero, "log_zero", low=-math.inf, high=0.0)
    rows = label_rows(logits, labels, ignore_index, compute_dtype, xp=xp)
    log_p = rows.log_p
    rce = beta * log_zero * xp.expm1(log_p)  # -log_zero (1 - p), times beta
    per_sample = rce if alpha == 0 else rce - alpha * log_p  # alpha = 0: no 0 * inf
    # d/du [-alpha u - beta log_zero (1 - e^u)] = -alpha + beta log_zero p, s = alpha - beta A p
    s = alpha - (beta * log_zero) * xp.exp(log_p)
    return _finish(logits, rows, per_sample, s, xp=xp)


def generalized_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    q: float = 0.7,
    ignore_index: int = -100,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """`(1 - p_y^q) / q` for `0 < q <= 1`: cross-entropy as q -> 0, MAE (times 1/q) at q = 1.

    Bounded by 1/q, so a label on a -inf class costs 1/q rather than being rejected.
    """
    xp = array_namespace(logits, labels)
    check_option_range(q, "q", low=0.0, high=1.0, open_low=True)
    rows = label_rows(logits, labels, ignore_index, compute_dtype, xp=xp)
    q_log_p = q * rows.log_p
    per_sample = -xp.expm1(q_log_p) / q  # 1 - p^q = -expm1(q log p): exact as q -> 0
    # d/dx_k [(1 - p_y^q) / q] = -p_y^q (delta_ky - p_k), so s = p_y^q
    s = xp.exp(q_log_p)
    return _finish(logits, rows, per_sample, s, xp=xp)


def logit_adjusted_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    class_prior: Array | None = None,
    class_counts: Array | None = None,
    tau: float = 1.0,
    ignore_index: int = -100,
    compute_dtype: ComputeDtype | None = None,
    grad_reduction: Reduction = "sum",
) -> LossResult:
    """Cross-entropy on `x + tau log prior`, from `class_prior` [C] or `class_counts` [C].

    Counts are normalised to a prior; the prior's scale does not matter (the softmax is shift
    invariant). A class of prior 0 gets a -inf logit, the masked class of cross-entropy: no loss
    from it unless a label names it, which is rejected as infinite. The gradient with respect to
    `x` is the one with respect to the adjusted logits, `softmax(x + tau log prior) - e_y`.
    """
    xp = array_namespace(logits, labels, class_prior, class_counts)
    check_option_range(tau, "tau", low=0.0)
    if (class_prior is None) == (class_counts is None):
        raise InvalidInput(
            "class_prior: give exactly one of class_prior and class_counts", field="class_prior"
        )
    field, given = (
        ("class_counts", class_counts) if class_prior is None else ("class_prior", class_prior)
    )
    x = logit_rows(logits, compute_dtype, xp=xp)
    _require_index_labels(logits, labels)
    prior = class_weight(given, x.shape[1], np.dtype(np.float64), xp=xp, field=field)
    total = float(xp.sum(prior))
    require(total > 0, field, "at least one value must be > 0")
    adjusted = x
    if tau:  # tau = 0 is plain cross-entropy, also where the prior is 0 (no 0 * -inf)
        with errstate(xp, divide="ignore"):  # log 0 = -inf: that class is masked
            log_prior = (tau * xp.log(prior / total)).astype(x.dtype)
        # Shift invariance: adjust x - max, whose large entries are small and exact, so the
        # adjustment is not rounded away as it would be on 1e4 + log prior in float32.
        adjusted = _minus_row_max(x, xp=xp) + log_prior
    return cross_entropy(
        adjusted.reshape(logits.shape),
        labels,
        ignore_index=ignore_index,
        compute_dtype=compute_dtype,
        grad_reduction=grad_reduction,
    )


def forward_corrected_cross_entropy(
    logits: Array,
    labels: Array,
    *,
    transition_matrix: Array,
    ignore_index: int = -100,
    compute_dtype: ComputeDtype | None = None,
) -> LossResult:
    """`-log (softmax(x) @ T)_y`, `T[i, j]` = P(observed label j | clean class i).

    With `z_k = (x_k - shift) + log T[k, y]` the loss is `log_sum(x) - lse(z)`, a log-sum-exp
    shifted by its own maximum, so a label whose probability underflows (|x| ~ 1e4) still has a
    finite loss; adding log T to `x - shift` rather than to `x` keeps it from being rounded away
    at |x| ~ 1e4. The gradient is `softmax(x) - softmax(z)`. `T` = identity is cross-entropy.
    """
    xp = array_namespace(logits, labels, transition_matrix)
    x = logit_rows(logits, compute_dtype, xp=xp)
    n_classes = x.shape[1]
    t = _transition_matrix(transition_matrix, n_classes, xp=xp)
    _require_index_labels(logits, labels)
    y, valid = class_indices(labels, n_classes, ignore_index, xp=xp)
    with errstate(xp, divide="ignore"):  # T = 0: log 0 = -inf, no mass from that clean class
        log_t_columns = xp.log(as_compute(t, x.dtype)).T  # [label, clean class]
    parts_x = shifted_exp(x, xp=xp)
    parts_z = shifted_exp(_minus_row_max(x, xp=xp) + log_t_columns[y], xp=xp)
    with errstate(xp, invalid="ignore"):  # -inf - -inf on all -inf rows: ignored or rejected
        per_sample = parts_x.log_sum - parts_z.lse  # = log_sum - log sum_j exp(x_j - shift) T_jy
    # d/dx_k [lse(x) - lse(z)] = p_k - softmax(z)_k, as dz_j / dx_k = delta_jk
    q = parts_z.exp
    with errstate(xp, divide="ignore", invalid="ignore"):  # 0/0 on rows ignored or rejected
        q *= (1 / parts_z.sum).astype(q.dtype)
    ones = xp.ones(x.shape[0], dtype=np.float64)
    grad = softmax_gradient(parts_x, ones, TargetMass(ones, q, None, valid, 0.0), xp=xp)
    return finish_rows(logits, per_sample, grad, valid, float(xp.count_nonzero(valid)), xp=xp)


def label_rows(
    logits: Array,
    labels: Array,
    ignore_index: int,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
) -> LabelRows:
    """Checked rows, class indices and `log p_y` from one softmax."""
    x, y, valid = index_rows(logits, labels, ignore_index, compute_dtype, xp=xp)
    return softmax_label_rows(x, y, valid, xp=xp)


def index_rows(
    logits: Array,
    labels: Array,
    ignore_index: int,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
    native: frozenset[str] = frozenset(),
) -> tuple[Array, Array, Array]:
    """Checked rows [M, C] in the compute dtype (or a `native` one: see `logit_rows`), class
    indices [M] (0 where ignored), valid [M]."""
    x = checked_rows(logits, labels, compute_dtype, xp=xp, native=native)
    y, valid = class_indices(labels, x.shape[1], ignore_index, xp=xp)
    return x, y, valid


def checked_rows(
    logits: Array,
    labels: Array,
    compute_dtype: ComputeDtype | None,
    *,
    xp: ModuleType,
    native: frozenset[str] = frozenset(),
) -> Array:
    """`index_rows`' rows [M, C], once labels of the right shape are given."""
    x = logit_rows(logits, compute_dtype, xp=xp, native=native)
    _require_index_labels(logits, labels)
    return x


def softmax_label_rows(x: Array, y: Array, valid: Array, *, xp: ModuleType) -> LabelRows:
    """`log p_y = (x_y - shift) - log_sum` of checked rows, from one softmax."""
    parts = shifted_exp(x, xp=xp)
    with errstate(xp, invalid="ignore"):  # -inf - -inf only on an all -inf row
        log_p = (x[xp.arange(x.shape[0]), y] - parts.shift) - parts.log_sum
    return LabelRows(x, y, valid, parts, xp.where(valid, log_p, 0))


def _fused_label_loss(
    fused: SoftmaxKernels,
    kind: int,
    param: float,
    alpha: Array | None,
    logits: Array,
    x: Array,
    y: Array,
    valid: Array,
    grad_reduction: Reduction,
    *,
    xp: ModuleType,
) -> LossResult:
    """Focal or poly-1 from the fused kernel. Its `_kernels/label_terms.py` repeats the formulas
    of `focal` and `poly1` above: change them together (the fused-kernel tests compare)."""
    divisor = float(xp.count_nonzero(valid))
    scale = grad_scale(grad_reduction, divisor)
    per_sample, _, grad = fused.softmax_rows(
        x, y, valid, kind=kind, param=param, alpha=alpha, grad_scale=scale
    )
    return finish_rows(logits, per_sample, grad, valid, divisor, xp=xp, grad_scale=scale)


def _finish(
    logits: Array, rows: LabelRows, per_sample: Array, s: Array, *, xp: ModuleType
) -> LossResult:
    """Gradient `s (softmax(x) - e_y)` of L(log p_y), s = -dL/d log p_y; `mean` over n_valid."""
    s = xp.where(rows.valid, s, 0).astype(rows.x.dtype)
    target = TargetMass(s, None, (rows.y, s), rows.valid, float(rows.n_valid))
    grad = softmax_gradient(rows.parts, s, target, xp=xp)
    return finish_rows(logits, per_sample, grad, rows.valid, target.divisor, xp=xp)


def _minus_row_max(x: Array, *, xp: ModuleType) -> Array:
    """x - max per row, a new array; an all -inf row is shifted by 0 (as in `shifted_exp`)."""
    shift = xp.max(x, axis=-1, keepdims=True)
    with errstate(xp, over="ignore"):  # |x| near the float max: x - shift = -inf, exp = 0
        return x - xp.where(xp.isfinite(shift), shift, 0)


def _require_index_labels(logits: Array, labels: Array) -> None:
    require(
        labels.shape == logits.shape[:-1],
        "labels",
        f"expected class indices of shape logits.shape[:-1] = {list(logits.shape[:-1])}, "
        f"got {list(labels.shape)}",
    )


def _transition_matrix(t: Array, n_classes: int, *, xp: ModuleType) -> Array:
    """`T` [C, C]: finite, >= 0, every row (a clean class) a distribution within 1e-6."""
    field = "transition_matrix"
    require(
        t.shape == (n_classes, n_classes),
        field,
        f"expected shape [{n_classes}, {n_classes}], got {list(t.shape)}",
    )
    with errstate(xp, over="ignore"):  # an overflow to inf is reported by the check
        t64 = as_compute(t, np.dtype(np.float64))
    check_nonnegative(t64, field, xp)
    sums = xp.sum(t64, axis=1)
    off = xp.abs(sums - 1) > TRANSITION_ROW_TOLERANCE
    if bool(xp.any(off)):
        row = int(xp.argmax(off))
        raise InvalidInput(
            f"{field}: every row must sum to 1, but row {row} sums to {float(sums[row])}",
            field=field,
        )
    return t64
