"""A batch's calibration state (`update`) and the state of a union of shards (`merge`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from types import ModuleType

import numpy as np

from service.engine._namespace import Array, array_namespace
from service.engine.calibration._bins import Binning, assign, quantile_edges, to_host, uniform_edges
from service.engine.calibration._inputs import Predictions, Samples
from service.engine.calibration._state import (
    MAX_COUNT,
    BinSums,
    CalibrationState,
    dotted,
    keeps_classwise,
)
from service.errors import FieldPath, InvalidInput, shown


def update(
    pred: Predictions,
    per_sample: Samples,
    *,
    n_bins: int,
    binning: Binning,
    top_k: Sequence[int],
) -> CalibrationState:
    """The state of one batch."""
    xp = array_namespace(pred.probs)
    confidence = per_sample.confidence
    edges = (
        uniform_edges(n_bins) if binning == "uniform" else quantile_edges(confidence, n_bins, xp=xp)
    )
    bins = _bin_sums(
        assign(confidence, edges, xp=xp), confidence, per_sample.outcome, n_bins, xp=xp
    )
    classwise = classwise_edges = None
    if keeps_classwise(pred.n_classes, n_bins):
        classwise, classwise_edges = _classwise_sums(pred, n_bins, binning, xp=xp)
    hits = tuple(int(xp.count_nonzero(per_sample.rank < k)) for k in top_k)
    return CalibrationState(
        task=pred.task,
        n_classes=pred.n_classes,
        n_bins=n_bins,
        binning=binning,
        edges=edges,
        top_k=tuple(top_k),
        n=pred.n,
        n_correct=int(xp.count_nonzero(per_sample.hit)),
        sum_brier=float(xp.sum(per_sample.brier)),
        sum_nll=float(xp.sum(per_sample.nll)),
        top_k_hits=hits,
        bins=bins,
        classwise=classwise,
        classwise_edges=classwise_edges,
    )


def _bin_sums(
    index: Array, confidence: Array, outcome: Array, length: int, *, xp: ModuleType
) -> BinSums:
    """Scatter-add of 1, confidence and outcome (0 or 1) by flat bin index into `length` cells."""
    return BinSums(
        to_host(xp.bincount(index, minlength=length)).astype(np.int64),
        to_host(_weighted_bincount(index, confidence, length, xp=xp)),
        to_host(xp.bincount(index[outcome != 0], minlength=length)).astype(np.int64),
    )


def _weighted_bincount(index: Array, weights: Array, length: int, *, xp: ModuleType) -> Array:
    return xp.bincount(index, weights=weights.astype(np.float64), minlength=length)


def _classwise_sums(
    pred: Predictions, n_bins: int, binning: Binning, *, xp: ModuleType
) -> tuple[BinSums, np.ndarray | None]:
    """Per class c: bins of p_c against the event `label = c` (Kull et al. 2019).

    The event holds for one element per row, the label's: its sums need only those N cells.
    """
    p = pred.probs
    n, k = p.shape
    edges = None if binning == "uniform" else quantile_edges(p, n_bins, xp=xp)
    index = assign(p, uniform_edges(n_bins) if edges is None else edges, xp=xp)
    index += xp.arange(k) * n_bins  # the flat (class, bin) cell of every element
    at_label = index[xp.arange(n), pred.labels]
    length = k * n_bins
    sums = BinSums(
        to_host(xp.bincount(index.reshape(-1), minlength=length)).astype(np.int64),
        to_host(_weighted_bincount(index.reshape(-1), p.reshape(-1), length, xp=xp)),
        to_host(xp.bincount(at_label, minlength=length)).astype(np.int64),
    )
    shape = (k, n_bins)
    return BinSums(
        *(a.reshape(shape) for a in (sums.count, sums.sum_confidence, sums.sum_correct))
    ), edges


def merge(states: Sequence[CalibrationState], field: FieldPath = ("states",)) -> CalibrationState:
    """The state of the union of the shards `states` came from: their sums, added.

    States merge only when they describe the same quantity in the same bins: the same version,
    task, number of classes, uniform bins of the same count, the same top-k list and classwise
    bins in all or none. Errors name the first state that differs (`states[2].n_bins`).
    """
    if not states:
        raise InvalidInput(f"{dotted(field)}: expected at least one state", field=field)
    first = states[0]
    for i, state in enumerate(states):
        where = (*field, i)
        if not state.mergeable:
            raise InvalidInput(
                f"{dotted((*where, 'binning'))}: quantile bins depend on each shard's data and "
                "cannot be merged; compute shard states with binning=uniform",
                field=(*where, "binning"),
            )
        for name in ("version", "task", "n_classes", "n_bins", "top_k"):
            mine, theirs = getattr(state, name), getattr(first, name)
            if mine != theirs:
                raise InvalidInput(
                    f"{dotted((*where, name))}: {shown(mine)} differs from "
                    f"{dotted((*field, 0, name))} = {shown(theirs)}; states merge only when they "
                    "agree on version, task, n_classes, n_bins, binning and top_k",
                    field=(*where, name),
                )
        if (state.classwise is None) != (first.classwise is None):
            raise InvalidInput(
                f"{dotted((*where, 'classwise'))}: present in one state and null in another",
                field=(*where, "classwise"),
            )
    n = sum(s.n for s in states)  # Python integers: exact
    if n > MAX_COUNT:
        # Each bin's count is at most n: below 2^53 no sum of counts can leave int64 (or the
        # integers JSON carries exactly); above it, the sums would wrap around.
        raise InvalidInput(
            f"{dotted(field)}: the states count {n} samples together, more than 2^53 = "
            f"{MAX_COUNT}, the largest count a state holds exactly",
            field=field,
        )
    classwise = None
    if first.classwise is not None:
        classwise = first.classwise
        for state in states[1:]:
            assert state.classwise is not None  # checked above
            classwise = classwise + state.classwise
    bins = first.bins
    for state in states[1:]:
        bins = bins + state.bins
    return replace(
        first,
        n=n,
        n_correct=sum(s.n_correct for s in states),
        sum_brier=math.fsum(s.sum_brier for s in states),
        sum_nll=math.fsum(s.sum_nll for s in states),
        top_k_hits=tuple(sum(h) for h in zip(*(s.top_k_hits for s in states), strict=True)),
        bins=bins,
        classwise=classwise,
    )
