"""Scores and labels -> the per-sample quantities every calibration statistic is built from.

`[N]` scores are binary (the positive class's logit or probability); `[N, C]` scores are
multiclass. Both become `[N, K]` rows (K = 2 for binary: the logit `x` becomes the logits
`[0, x]`, whose softmax is `[sigmoid(-x), sigmoid(x)]`; the probability `p` becomes `[1 - p, p]`),
so one code path serves both. Log-probabilities come from the engine's `log_softmax`.

Per sample (`Samples`):

- `confidence`: multiclass, the top-label probability `max_c p_c`; binary, `p` itself (as
  torchmetrics' `binary_calibration_error` and Kumar et al. bin the positive-class probability);
- `outcome`: what `confidence` predicts: multiclass, 1 if the top label is right; binary, the label;
- `hit`: the prediction (argmax, the first class on ties; binary: `p > 0.5`) equals the label;
- `brier`: `sum_c (p_c - 1[c = y])^2` (multiclass), `(p - y)^2` (binary, scikit-learn's form);
- `nll`: `-log p_y`, with `p_y` clipped below at the float64 machine epsilon as scikit-learn's
  `log_loss` does, so a zero-probability label costs 36.04 rather than infinity.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

from service.engine._checks import check_unit_interval, first_position, require
from service.engine._cross_entropy import probability_sum_tolerance
from service.engine._dtypes import as_compute, compute_dtype_for
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._softmax import log_softmax
from service.errors import InvalidInput

Task = Literal["binary", "multiclass"]

EPS = float(np.finfo(np.float64).eps)
NLL_CAP = -float(np.log(EPS))  # 36.04: the largest per-sample NLL, as scikit-learn's log_loss


@dataclass(frozen=True)
class Predictions:
    """Validated predictions as `[N, K]` rows, on the inputs' backend."""

    task: Task
    n_classes: int  # C; 2 for binary
    logits: Array  # [N, K]: what temperature scaling divides (log-probabilities for `probs`)
    log_probs: Array  # [N, K]
    probs: Array  # [N, K]: the given probabilities exactly, or exp(log_probs)
    ranking: Array  # [N, K]: the scores argmax and top-k order by (the raw logits or probs)
    labels: Array  # [N] int64

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Samples:
    """Per-sample quantities ([N] each, float64 or bool); never part of a state."""

    confidence: Array
    outcome: Array
    hit: Array
    brier: Array
    nll: Array
    rank: Array  # [N] int64: classes ranked above the label (argmax order), for top-k


def predictions(
    *, logits: Array | None = None, probs: Array | None = None, labels: Array
) -> Predictions:
    """Check the inputs and form log-probabilities (exactly one of `logits` and `probs`)."""
    if (logits is None) == (probs is None):
        given = "both" if logits is not None else "neither"
        raise InvalidInput(
            f"logits: give exactly one of `logits` and `probs`, got {given}", field="logits"
        )
    scores: Array = logits if logits is not None else probs
    field = "logits" if logits is not None else "probs"
    xp = array_namespace(scores, labels)
    require(
        scores.ndim in (1, 2),
        field,
        f"expected shape [N] (binary) or [N, C] (multiclass), got {list(scores.shape)}",
    )
    task: Task = "binary" if scores.ndim == 1 else "multiclass"
    n_classes = 2 if task == "binary" else int(scores.shape[1])
    require(n_classes >= 1, field, "the class axis (the last one) is empty")
    require(
        labels.shape == scores.shape[:1],
        "labels",
        f"expected shape [{scores.shape[0]}] (one class index per row of `{field}`), "
        f"got {list(labels.shape)}",
    )
    y = class_labels(labels, n_classes, task, xp=xp)
    dtype = compute_dtype_for(scores.dtype)
    with errstate(xp, over="ignore"):  # float64 -> float32 overflow: rejected just below
        x = as_compute(scores, dtype)
    if x is not scores and bool(xp.any(xp.isinf(x) & xp.isfinite(scores))):
        position = first_position(xp.isinf(x) & xp.isfinite(scores), xp)
        raise InvalidInput(
            f"{field}: value at index {position} overflows {dtype.name}", field=field
        )
    if logits is not None:
        masked = xp.all(xp.isneginf(x), axis=-1) if task == "multiclass" else None
        if masked is not None and bool(xp.any(masked)):
            position = first_position(masked, xp)
            raise InvalidInput(
                f"logits: every logit of the row at index {position} is -inf (no class has "
                "any probability)",
                field="logits",
            )
        rows = xp.stack([xp.zeros_like(x), x], axis=-1) if task == "binary" else x
        return from_logit_rows(task, rows, y)
    p = probability_rows(x, task, xp=xp, given_dtype=scores.dtype)
    with errstate(xp, divide="ignore"):  # log 0 = -inf: a class with no probability
        log_p = xp.log(p)
    return Predictions(task, n_classes, log_p, log_p, p, p, y)


def from_logit_rows(task: Task, rows: Array, labels: Array) -> Predictions:
    """Predictions of checked logit rows [N, K] (binary: [0, x]) and checked labels."""
    log_p = log_softmax(rows, axis=-1)
    n_classes = 2 if task == "binary" else int(rows.shape[1])
    return Predictions(task, n_classes, rows, log_p, array_namespace(rows).exp(log_p), rows, labels)


def class_labels(labels: Array, n_classes: int, task: Task, *, xp: ModuleType) -> Array:
    """Class indices in [0, C) (binary: 0 or 1) as int64; `2.0` is class 2, `0.5` an error."""
    require(labels.dtype.kind != "b", "labels", "class indices must be integers, got booleans")
    y = labels
    if y.dtype.kind not in "iu":
        y = y.astype(np.float64)
        fractional = y != xp.floor(y)
        if bool(xp.any(fractional)):
            position = first_position(fractional, xp)
            raise InvalidInput(
                f"labels: class indices must be integers, got {float(y[position])} "
                f"at index {position}",
                field="labels",
            )
    outside = (y < 0) | (y >= n_classes)
    if bool(xp.any(outside)):
        position = first_position(outside, xp)
        label = labels[position]
        shown = int(label) if labels.dtype.kind in "iu" else float(label)
        expected = "0 or 1 (binary scores)" if task == "binary" else f"in [0, {n_classes})"
        raise InvalidInput(
            f"labels: label {shown} at index {position} is not {expected}", field="labels"
        )
    return y.astype(np.int64)


def probability_rows(p: Array, task: Task, *, xp: ModuleType, given_dtype: np.dtype) -> Array:
    """Probabilities in [0, 1] as [N, K] rows; multiclass rows must sum to 1 within 1e-6, or
    within the resolution of the dtype they were given in (float16, bfloat16) if coarser."""
    check_unit_interval(p, "probs", xp)
    if task == "binary":
        return xp.stack([1 - p, p], axis=-1)
    sums = xp.sum(p, axis=-1, dtype=np.float64)
    off = xp.abs(sums - 1) > probability_sum_tolerance(given_dtype)
    if bool(xp.any(off)):
        position = first_position(off, xp)
        raise InvalidInput(
            f"probs: rows must sum to 1 over the class axis, but the row at index {position} "
            f"sums to {float(sums[position])}",
            field="probs",
        )
    return p


def samples(pred: Predictions) -> Samples:
    """The per-sample quantities of `pred` (see the module docstring)."""
    xp = array_namespace(pred.probs)
    n = pred.n
    rows = xp.arange(n)
    y = pred.labels
    top = xp.argmax(pred.ranking, axis=-1) if n else xp.zeros(0, dtype=np.int64)
    hit = top == y
    p = pred.probs
    if pred.task == "binary":
        confidence = p[:, 1].astype(np.float64)
        outcome = y.astype(np.float64)
        brier = (confidence - outcome) ** 2
    else:
        confidence = p[rows, top].astype(np.float64)
        outcome = hit.astype(np.float64)
        # sum_c (p_c - 1[c = y])^2 from the difference itself: p_y^2 - 2 p_y + 1 would cancel
        # for a confident row.
        diff = p.astype(np.float64)
        diff[rows, y] -= 1
        brier = xp.sum(diff * diff, axis=-1)
    log_p_y = pred.log_probs[rows, y].astype(np.float64)
    nll = xp.minimum(-log_p_y, NLL_CAP)  # clipped like scikit-learn's log_loss; -inf -> cap
    return Samples(confidence, outcome, hit, brier, nll, label_rank(pred.ranking, y, xp=xp))


def label_rank(ranking: Array, y: Array, *, xp: ModuleType) -> Array:
    """Classes ordered before the label: scored higher, or equal with a smaller index.

    The same order as argmax's (the first maximum wins), so top-1 accuracy equals accuracy.
    """
    n, k = ranking.shape
    at_label = ranking[xp.arange(n), y][:, None]
    before = (ranking > at_label) | ((ranking == at_label) & (xp.arange(k) < y[:, None]))
    return xp.count_nonzero(before, axis=-1).astype(np.int64)
