"""The label-noise report: one call from probabilities (or logits) and labels to every output."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from service.engine._cross_entropy import PROBABILITY_SUM_TOLERANCE
from service.engine.label_noise import _joint
from service.engine.label_noise._filters import issue_mask
from service.engine.label_noise._inputs import logit_probabilities, probability_inputs
from service.engine.label_noise._options import FilterBy, RankBy, check_options
from service.engine.label_noise._rows import group_rows, scan_rows
from service.engine.label_noise._scores import label_quality


@dataclass(frozen=True)
class LabelNoiseReport:
    """What confident learning estimates about the labels of one dataset (N rows, C classes)."""

    label_issues: np.ndarray  # [min(n_issues, max_issues)] int64: row indices, likeliest first
    label_quality: np.ndarray  # [N] float64 in [0, 1]: low = the label is likely wrong
    n_issues: int  # rows flagged, before `max_issues` cuts `label_issues`
    noise_rate: float  # estimated fraction of wrong labels: 1 - trace of the normalised joint
    confident_joint: np.ndarray  # [C, C] int64: [given label, true class] counts
    class_thresholds: np.ndarray  # [C] float64: mean self-confidence per class (2: no rows)
    transition_matrix: np.ndarray  # [C, C] float64: row i = P(given label | true class i)


def find_label_issues(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    filter_by: FilterBy = "prune_by_noise_rate",
    rank_by: RankBy = "self_confidence",
    calibrate: bool = True,
    max_issues: int | None = None,
) -> LabelNoiseReport:
    """The report of out-of-sample probabilities `probs` [N, C] and labels [N] (see the package
    docstring for the conventions and cleanlab's names for each output)."""
    check_options(filter_by, rank_by, max_issues)
    p, y, tolerance = probability_inputs(probs, labels)
    return _report(p, y, tolerance, filter_by, rank_by, calibrate, max_issues)


def find_label_issues_from_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    filter_by: FilterBy = "prune_by_noise_rate",
    rank_by: RankBy = "self_confidence",
    calibrate: bool = True,
    max_issues: int | None = None,
) -> LabelNoiseReport:
    """`find_label_issues` of `softmax(logits)`, formed in the compute dtype (`_inputs`)."""
    check_options(filter_by, rank_by, max_issues)
    p, y = logit_probabilities(logits, labels)
    return _report(p, y, PROBABILITY_SUM_TOLERANCE, filter_by, rank_by, calibrate, max_issues)


def _report(
    probs: np.ndarray,
    labels: np.ndarray,
    sum_tolerance: float,
    filter_by: FilterBy,
    rank_by: RankBy,
    calibrate: bool,
    max_issues: int | None,
) -> LabelNoiseReport:
    kernels = compiled_kernels()
    n_classes = probs.shape[1]
    groups = group_rows(probs, labels, kernels=kernels)
    thresholds = _joint.class_thresholds(
        kernels.class_sums(groups.grouped_confidence, groups.starts), groups.counts
    )
    scan = scan_rows(
        probs,
        labels,
        groups.self_confidence,
        _joint.confidence_cut(thresholds, probs.dtype),
        sum_tolerance,
        kernels=kernels,
    )
    joint = _joint.confident_joint(labels, scan.guess, n_classes)
    if calibrate:
        joint = _joint.calibrate(joint, groups.counts)
    mask = issue_mask(filter_by, probs, labels, joint, scan, groups, kernels=kernels)
    scores = label_quality(rank_by, probs, groups.self_confidence, scan.other, kernels=kernels)
    issues = np.flatnonzero(mask)
    # cleanlab's `order_label_issues`: `np.argsort` of the issues' scores in their own dtype
    ranked = issues[np.argsort(scores[issues])]
    return LabelNoiseReport(
        label_issues=ranked if max_issues is None else ranked[:max_issues],
        label_quality=scores.astype(np.float64),
        n_issues=int(issues.size),
        noise_rate=_joint.noise_rate(joint),
        confident_joint=joint,
        class_thresholds=thresholds.astype(np.float64),
        transition_matrix=_joint.transition_matrix(joint),
    )


def warm_up() -> None:
    """Compile the kernels for float32 and float64 rows now, or load them from numba's disk cache,
    so that no request waits for it (seconds to compile, well under one to load)."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    for dtype in (np.float32, np.float64):
        probs = np.full((6, 3), 0.1, dtype=dtype)
        probs[np.arange(6), labels] = 0.8
        # `both` runs both pruning kernels, the entropy ranking the last one
        find_label_issues(probs, labels, filter_by="both", rank_by="confidence_weighted_entropy")


@functools.cache
def compiled_kernels() -> ModuleType:
    """The numba kernels (`_kernels`), imported on first use: `import service.engine` never
    loads numba. Each compiles once per process and dtype, or loads from numba's disk cache."""
    return importlib.import_module("service.engine.label_noise._kernels")
