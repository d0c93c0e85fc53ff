"""Checks of the inputs and options, and the probabilities a report is computed from.

Probabilities compute in the engine's compute dtype (`_dtypes.compute_dtype_for`): float32 for
16- and 32-bit inputs, float64 for float64 (and for integers, which only JSON numbers give).
Logits become probabilities in that same dtype: `exp(x - max)` divided by its row sum, accumulated
in float64 (`_softmax.shifted_exp`); NaN and +inf logits are errors, -inf (a masked class) gives
probability 0 unless the whole row is -inf.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from service.engine._checks import first_position, require
from service.engine._cross_entropy import probability_sum_tolerance
from service.engine._dtypes import as_compute, compute_dtype_for
from service.engine._softmax import shifted_exp
from service.engine.calibration._inputs import class_labels
from service.errors import InvalidInput

# What `_kernels.scan_rows` finds wrong with a row: a value outside [0, 1] (or NaN), the sum.
OUTSIDE_UNIT_INTERVAL, SUM_OFF = 1, 2

Field = Literal["probs", "logits"]


def score_rows(
    scores: np.ndarray, labels: np.ndarray, field: Field
) -> tuple[np.ndarray, np.ndarray]:
    """`scores` [N, C] (N >= 1, C >= 2) as C-contiguous rows in the compute dtype, and the labels
    [N] as int64 class indices in [0, C)."""
    require(
        scores.ndim == 2,
        field,
        f"expected shape [N, C] (one row of class scores per example), got {list(scores.shape)}",
    )
    n, n_classes = scores.shape
    require(n >= 1, field, "no rows: confident learning needs at least one example")
    require(n_classes >= 2, field, f"expected at least 2 classes, got {n_classes}")
    require(
        labels.shape == (n,),
        "labels",
        f"expected shape [{n}] (one class index per row of `{field}`), got {list(labels.shape)}",
    )
    y = class_labels(labels, n_classes, "multiclass", xp=np)
    x = np.ascontiguousarray(as_compute(scores, compute_dtype_for(scores.dtype)))
    return x, y


def probability_inputs(
    probs: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """Rows, labels, and how far from 1 a row may sum (1e-6; coarser for 16-bit inputs). Values
    and row sums are checked during the scan (`raise_for_status`)."""
    p, y = score_rows(probs, labels, "probs")
    return p, y, probability_sum_tolerance(probs.dtype)


def logit_probabilities(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax rows of `logits` (see the module docstring) and the labels."""
    x, y = score_rows(logits, labels, "logits")
    bad = np.isnan(x) | np.isposinf(x)
    if bool(bad.any()):
        position = first_position(bad, np)
        raise InvalidInput(
            f"logits: values must be finite or -inf, got {float(logits[position])} at index "
            f"{position}",
            field="logits",
        )
    masked = np.all(np.isneginf(x), axis=1)
    if bool(masked.any()):
        raise InvalidInput(
            f"logits: every logit of the row at index {first_position(masked, np)} is -inf "
            "(no class has any probability)",
            field="logits",
        )
    parts = shifted_exp(x, xp=np)
    np.divide(parts.exp, parts.sum, out=parts.exp)  # float64 sums, rounded into the row dtype
    return parts.exp, y


def raise_for_status(status: np.ndarray, probs: np.ndarray) -> None:
    """InvalidInput for the first row the scan found wrong (`status` != 0), if any."""
    first = int(np.argmax(status != 0))
    if status[first] == OUTSIDE_UNIT_INTERVAL:
        row = probs[first]
        column = int(np.argmax(~((row >= 0) & (row <= 1))))
        raise InvalidInput(
            f"probs: values must lie in [0, 1], got {float(row[column])} at index "
            f"{(first, column)}",
            field="probs",
        )
    if status[first] == SUM_OFF:
        total = float(np.sum(probs[first], dtype=np.float64))
        raise InvalidInput(
            f"probs: rows must sum to 1 over the class axis, but the row at index {(first,)} "
            f"sums to {total}",
            field="probs",
        )
