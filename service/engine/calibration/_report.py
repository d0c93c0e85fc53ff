"""One call per request: inputs -> state -> metrics, plus the extras that need the samples."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from service.engine._checks import check_option_range, require
from service.engine._namespace import Array, array_namespace
from service.engine.calibration import _smooth
from service.engine.calibration._bins import BINNINGS, Binning, assign
from service.engine.calibration._bootstrap import BootstrapIntervals, bootstrap
from service.engine.calibration._inputs import Predictions, from_logit_rows, predictions, samples
from service.engine.calibration._metrics import CalibrationMetrics, compute
from service.engine.calibration._smooth import SmoothEce
from service.engine.calibration._state import CalibrationState
from service.engine.calibration._temperature import fit_temperature, scale_logits
from service.engine.calibration._update import merge, update
from service.errors import FieldPath, InvalidInput, shown

MAX_TOP_K_ENTRIES = 32


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted T (divide logits by it), and what it changes."""

    value: float
    converged: bool
    iterations: int
    nll_before: float | None
    nll_after: float | None
    ece_before: float | None
    ece_after: float | None


@dataclass(frozen=True)
class CalibrationReport:
    metrics: CalibrationMetrics
    state: CalibrationState
    temperature: TemperatureFit | None = None
    bootstrap: BootstrapIntervals | None = None
    smooth_ece: SmoothEce | None = None


def calibration_report(
    *,
    logits: Array | None = None,
    probs: Array | None = None,
    labels: Array,
    n_bins: int = 15,
    binning: Binning = "uniform",
    top_k: Sequence[int] = (),
    fit_temperature: bool = False,
    n_bootstrap: int = 0,
    confidence_level: float = 0.95,
    seed: int | None = None,
    smooth_ece: bool = False,
    max_bootstrap: int | None = None,
) -> CalibrationReport:
    """The calibration report of `logits` or `probs` ([N] binary, [N, C] multiclass).

    `max_bootstrap` caps `n_bootstrap` (the service's setting). Without a `seed`, one is drawn
    and reported, so any bootstrap can be reproduced.
    """
    check_options(n_bins, binning, top_k, n_bootstrap, confidence_level, seed, max_bootstrap)
    pred = predictions(logits=logits, probs=probs, labels=labels)
    per_sample = samples(pred)
    state = update(pred, per_sample, n_bins=n_bins, binning=binning, top_k=top_k)
    metrics = compute(state)
    temperature = _temperature(pred, metrics, n_bins, binning) if fit_temperature else None
    intervals = None
    if n_bootstrap:
        seed = secrets.randbits(63) if seed is None else seed
        bin_index = assign(per_sample.confidence, state.edges, xp=array_namespace(pred.probs))
        intervals = bootstrap(
            per_sample,
            bin_index,
            n_bins,
            n_bootstrap=n_bootstrap,
            confidence_level=confidence_level,
            seed=seed,
        )
    smooth = None
    if smooth_ece:
        smooth = _smooth.smooth_ece(per_sample.confidence, per_sample.outcome)
    return CalibrationReport(metrics, state, temperature, intervals, smooth)


def calibration_state(
    *,
    logits: Array | None = None,
    probs: Array | None = None,
    labels: Array,
    n_bins: int = 15,
    binning: Binning = "uniform",
    top_k: Sequence[int] = (),
) -> CalibrationState:
    """The state alone (no metrics): what a batch adds to a sum of states."""
    check_options(n_bins, binning, top_k, 0, 0.5, None, None)
    pred = predictions(logits=logits, probs=probs, labels=labels)
    return update(pred, samples(pred), n_bins=n_bins, binning=binning, top_k=top_k)


def merge_report(
    states: Sequence[CalibrationState], field: FieldPath = ("states",)
) -> CalibrationReport:
    """The metrics of the union of the shards whose states are given."""
    state = merge(states, field)
    return CalibrationReport(compute(state), state)


def check_options(
    n_bins: int,
    binning: str,
    top_k: Sequence[int],
    n_bootstrap: int,
    confidence_level: float,
    seed: int | None,
    max_bootstrap: int | None,
) -> None:
    """The options' ranges, one message style (the API's schema checks the same bounds)."""
    require(n_bins >= 1, "n_bins", f"expected an integer >= 1, got {n_bins}")
    require(
        binning in BINNINGS, "binning", f"expected 'uniform' or 'quantile', got {shown(binning)}"
    )
    require(
        len(top_k) <= MAX_TOP_K_ENTRIES,
        "top_k",
        f"expected at most {MAX_TOP_K_ENTRIES} values of k, got {len(top_k)}",
    )
    for i, k in enumerate(top_k):
        if k < 1:
            raise InvalidInput(f"top_k[{i}]: expected k >= 1, got {k}", field=("top_k", i))
    require(n_bootstrap >= 0, "n_bootstrap", f"expected an integer >= 0, got {n_bootstrap}")
    if max_bootstrap is not None:
        require(
            n_bootstrap <= max_bootstrap,
            "n_bootstrap",
            f"expected at most {max_bootstrap} resamples (the service's max_bootstrap), "
            f"got {n_bootstrap}",
        )
    check_option_range(
        confidence_level, "confidence_level", low=0, high=1, open_low=True, open_high=True
    )
    require(seed is None or seed >= 0, "seed", f"expected an integer >= 0, got {seed}")


def _temperature(
    pred: Predictions, before: CalibrationMetrics, n_bins: int, binning: Binning
) -> TemperatureFit:
    solution = fit_temperature(pred.logits, pred.labels)
    scaled = from_logit_rows(pred.task, scale_logits(pred.logits, solution.value), pred.labels)
    after_state = update(scaled, samples(scaled), n_bins=n_bins, binning=binning, top_k=())
    after = compute(after_state)
    return TemperatureFit(
        value=solution.value,
        converged=solution.converged,
        iterations=solution.iterations,
        nll_before=before.nll,
        nll_after=after.nll,
        ece_before=before.ece,
        ece_after=after.ece,
    )
