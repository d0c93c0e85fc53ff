"""compute: a state -> the calibration metrics. Pure, on the host, O(size of the state).

With `n_b`, `S_b` and `A_b` the count, sum of confidences and sum of outcomes of bin `b`, `N`
the sample count, `conf_b = S_b / n_b` and `acc_b = A_b / n_b`:

- `ece`   = sum_b (n_b / N) |acc_b - conf_b|  = sum_b |A_b - S_b| / N   (L1; Guo et al. 2017)
- `mce`   = max over non-empty bins of |acc_b - conf_b|                  (max norm)
- `rmsce` = sqrt(sum_b (n_b / N) (acc_b - conf_b)^2)                     (L2)
- `ece_debiased` = sqrt(max(0, sum_{b: n_b >= 2} (n_b / N) [(acc_b - conf_b)^2
                     - acc_b (1 - acc_b) / (n_b - 1)]))
  Kumar, Liang & Ma 2019 ("Verified uncertainty calibration"), their `unbiased_l2_ce`: the plug-in
  squared error of a bin overestimates (E[y] - conf)^2 by the variance of its mean label,
  acc_b (1 - acc_b) / (n_b - 1) unbiased; bins with fewer than 2 samples contribute nothing. It
  is a debiased *L2* error: compare it with `rmsce`.
- `classwise_ece` = (1 / C) sum_c sum_b |A_cb - S_cb| / N, the bins of class c holding p_c
  against the event y = c (Kull et al. 2019); binary: both classes, p and 1 - p.
- `brier`, `nll`: the per-sample sums / N; `accuracy` = hits / N; `mean_confidence` = sum_b S_b / N;
  `top_k_accuracy[k]` = hits_k / N.

A ratio with nothing to divide by is None (JSON null): every metric when N = 0, and the mean
confidence and accuracy of an empty bin. Nothing is ever NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.engine.calibration._bins import Binning
from service.engine.calibration._inputs import Task
from service.engine.calibration._state import BinSums, CalibrationState


@dataclass(frozen=True)
class BinSummary:
    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class CalibrationMetrics:
    task: Task
    n: int
    n_classes: int
    n_bins: int
    binning: Binning
    ece: float | None
    mce: float | None
    rmsce: float | None
    ece_debiased: float | None
    classwise_ece: float | None
    brier: float | None
    nll: float | None
    accuracy: float | None
    mean_confidence: float | None
    top_k_accuracy: tuple[tuple[int, float | None], ...]
    bins: tuple[BinSummary, ...]


def compute(state: CalibrationState) -> CalibrationMetrics:
    n = state.n
    b = state.bins

    def ratio(numerator: float) -> float | None:
        return numerator / n if n else None

    classwise = None
    if state.classwise is not None and n:
        classwise = float(np.sum(_abs_gap(state.classwise)) / n / state.n_classes)
    return CalibrationMetrics(
        task=state.task,
        n=n,
        n_classes=state.n_classes,
        n_bins=state.n_bins,
        binning=state.binning,
        ece=ratio(float(np.sum(_abs_gap(b)))),
        mce=max_calibration_error(b),
        rmsce=_l2(b, n, debiased=False),
        ece_debiased=_l2(b, n, debiased=True),
        classwise_ece=classwise,
        brier=ratio(state.sum_brier),
        nll=ratio(state.sum_nll),
        accuracy=ratio(state.n_correct),
        mean_confidence=ratio(math.fsum(b.sum_confidence.tolist())),
        top_k_accuracy=tuple(
            (k, ratio(hits)) for k, hits in zip(state.top_k, state.top_k_hits, strict=True)
        ),
        bins=tuple(
            BinSummary(
                lower=float(state.edges[i]),
                upper=float(state.edges[i + 1]),
                count=int(b.count[i]),
                mean_confidence=float(b.sum_confidence[i] / b.count[i]) if b.count[i] else None,
                accuracy=float(b.sum_correct[i] / b.count[i]) if b.count[i] else None,
            )
            for i in range(state.n_bins)
        ),
    )


def _abs_gap(sums: BinSums) -> np.ndarray:
    """|A_b - S_b| per bin: n_b |acc_b - conf_b| without dividing by n_b."""
    gap: np.ndarray = np.abs(sums.sum_correct - sums.sum_confidence)
    return gap


def max_calibration_error(sums: BinSums) -> float | None:
    filled = sums.count > 0
    if not np.any(filled):
        return None
    gaps = _abs_gap(sums)[filled] / sums.count[filled]
    return float(np.max(gaps))


def _l2(sums: BinSums, n: int, *, debiased: bool) -> float | None:
    if n == 0:
        return None
    count = sums.count.astype(np.float64)
    filled = count >= (2 if debiased else 1)
    c = count[filled]
    gap = (sums.sum_correct[filled] - sums.sum_confidence[filled]) / c
    per_bin = gap * gap
    if debiased:
        acc = sums.sum_correct[filled] / c
        per_bin = per_bin - acc * (1 - acc) / (c - 1)
    return math.sqrt(max(float(np.sum(c * per_bin)) / n, 0.0))
