"""Percentile bootstrap intervals for ece, mce, brier, nll and accuracy.

Each of `n_bootstrap` resamples draws N samples with replacement (NumPy's PCG64 seeded with
`seed`) and recomputes the metrics in the bins of the full sample; the interval is the
`(1 - level) / 2` and `(1 + level) / 2` quantiles of the resampled values (linear
interpolation). It runs on the host, so a seed gives the same intervals on every backend, and
it is vectorised: resamples are drawn in blocks of at most `BLOCK_ELEMENTS` indices, and the
per-bin sums of a whole block are one `bincount`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.engine.calibration._bins import to_host
from service.engine.calibration._inputs import Samples

BLOCK_ELEMENTS = 2**22
METRICS = ("ece", "mce", "brier", "nll", "accuracy")


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float


@dataclass(frozen=True)
class BootstrapIntervals:
    n_bootstrap: int
    confidence_level: float
    seed: int
    ece: Interval | None
    mce: Interval | None
    brier: Interval | None
    nll: Interval | None
    accuracy: Interval | None


def bootstrap(
    per_sample: Samples,
    bin_index: object,
    n_bins: int,
    *,
    n_bootstrap: int,
    confidence_level: float,
    seed: int,
) -> BootstrapIntervals:
    """Intervals for `per_sample` whose bins (of the full sample) are `bin_index` [N]."""
    n = int(per_sample.confidence.shape[0])
    if n == 0 or n_bootstrap == 0:
        return BootstrapIntervals(n_bootstrap, confidence_level, seed, None, None, None, None, None)
    conf = to_host(per_sample.confidence).astype(np.float64)
    outcome = to_host(per_sample.outcome).astype(np.float64)
    hit = to_host(per_sample.hit).astype(np.float64)
    brier = to_host(per_sample.brier).astype(np.float64)
    nll = to_host(per_sample.nll).astype(np.float64)
    bins = to_host(bin_index).astype(np.int64)
    rng = np.random.default_rng(seed)
    values = {name: np.empty(n_bootstrap) for name in METRICS}
    block = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n_bootstrap, block):
        rows = min(block, n_bootstrap - start)
        idx = rng.integers(0, n, size=(rows, n))
        # One flat cell per (resample, bin): a single bincount gives every resample's bins.
        cell = (bins[idx] + n_bins * np.arange(rows)[:, None]).reshape(-1)
        size = rows * n_bins
        count = np.bincount(cell, minlength=size).reshape(rows, n_bins)
        gap = np.abs(
            np.bincount(cell, weights=(outcome - conf)[idx].reshape(-1), minlength=size)
        ).reshape(rows, n_bins)
        out = slice(start, start + rows)
        values["ece"][out] = gap.sum(axis=1) / n
        with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: masked out
            per_bin = np.where(count > 0, gap / count, 0.0)
        values["mce"][out] = per_bin.max(axis=1)
        values["brier"][out] = brier[idx].mean(axis=1)
        values["nll"][out] = nll[idx].mean(axis=1)
        values["accuracy"][out] = hit[idx].mean(axis=1)
    tail = (1 - confidence_level) / 2
    intervals = {}
    for name, samples in values.items():
        lower, upper = np.quantile(samples, [tail, 1 - tail])
        intervals[name] = Interval(float(lower), float(upper))
    return BootstrapIntervals(n_bootstrap, confidence_level, seed, **intervals)
