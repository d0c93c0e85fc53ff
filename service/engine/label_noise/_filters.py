"""Which rows are label issues: cleanlab's `filter.find_label_issues` filters (Northcutt et al.,
JAIR 2021, whose "C_confusion" is `predicted_neq_given`, "C_{y~,y*}" `confident_learning`).

- `prune_by_noise_rate` (cleanlab's default): for every off-diagonal cell (given k, true j) of the
  prune counts, the rows labelled k with the largest margin `p_j - p_k`, as many as the cell
  counts;
- `prune_by_class`: per class k, the rows labelled k with the smallest `p_k`, as many as the
  class's off-diagonal counts;
- `both`: rows flagged by both; `confident_learning`: the rows counted off the diagonal of the
  (uncalibrated) confident joint; `predicted_neq_given`: argmax != label.

The prune counts are the confident joint transposed, with each diagonal entry raised to at least
1 (`min_examples_per_class=1`) by taking as much from the column's other entries
(`_keep_at_least_n_per_class`). Classes with at most one row are never pruned. Whatever the
filter, a row whose label is the argmax once its probability gains 1e-6 is never an issue
(`_reduce_issues`).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from service.engine.label_noise._options import FilterBy
from service.engine.label_noise._rows import ClassGroups, RowScan


def issue_mask(
    filter_by: FilterBy,
    probs: np.ndarray,
    labels: np.ndarray,
    joint: np.ndarray,
    scan: RowScan,
    groups: ClassGroups,
    *,
    kernels: ModuleType,
) -> np.ndarray:
    """[N] bool: the rows `filter_by` flags; `joint` is the confident joint the pruning
    filters count from (calibrated or not, as the caller chose)."""
    if filter_by == "predicted_neq_given":
        mask = scan.argmax != labels
    elif filter_by == "confident_learning":
        mask = (scan.guess >= 0) & (scan.guess != labels)
    else:
        counts = prune_counts(joint)
        if filter_by != "prune_by_class":
            mask = _by_noise_rate(probs, labels, counts, scan, groups, kernels=kernels)
        if filter_by != "prune_by_noise_rate":
            by_class = _by_class(probs, counts, groups, kernels=kernels)
            mask = by_class if filter_by == "prune_by_class" else mask & by_class
    return np.asarray(mask & ~scan.kept)


def prune_counts(joint: np.ndarray) -> np.ndarray:
    """`_keep_at_least_n_per_class(joint.T, n=1, frac_noise=1.0)`: [true class, given label].

    A diagonal entry below 1 (a calibrated class rounded to no correct row) is raised to 1, and
    the column's other non-zero entries lowered by the same amount shared among them, floored at
    0, then truncated to integers (cleanlab's `astype(int)` in `_reduce_prune_counts`, which
    changes nothing else when `frac_noise` is 1; the final rounding of whole numbers neither).
    """
    counts = joint.T
    diagonal = np.diagonal(counts)
    raised = np.maximum(diagonal, 1)
    shared_by = np.maximum(np.count_nonzero(counts, axis=0) - 1.0, 1.0)
    lowered = counts - (raised - diagonal) / shared_by
    lowered[lowered < 0] = 0
    np.fill_diagonal(lowered, raised)
    return np.asarray(lowered, dtype=np.int64)


def _by_noise_rate(
    probs: np.ndarray,
    labels: np.ndarray,
    counts: np.ndarray,
    scan: RowScan,
    groups: ClassGroups,
    *,
    kernels: ModuleType,
) -> np.ndarray:
    mask, cells = kernels.prune_by_noise_rate(probs, labels, counts, scan.kept)
    for k, j in cells:  # the m-th largest margin is tied with the next: cleanlab's sort decides
        rows = groups.rows(k)
        margin = probs[rows, j] - probs[rows, k]
        mask[rows[np.argsort(-margin)[: counts[j, k]]]] = True
    return np.asarray(mask)


def _by_class(
    probs: np.ndarray, counts: np.ndarray, groups: ClassGroups, *, kernels: ModuleType
) -> np.ndarray:
    off_diagonal = groups.counts - np.diagonal(counts)
    mask, classes = kernels.prune_by_class(
        groups.grouped_confidence, groups.order, groups.starts, off_diagonal
    )
    for k in classes:  # a tie at the cut, as above
        rows = groups.rows(k)
        mask[rows[np.argsort(probs[rows, k])[: off_diagonal[k]]]] = True
    return np.asarray(mask)
