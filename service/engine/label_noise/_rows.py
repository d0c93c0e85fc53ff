"""The passes over the `[N, C]` rows that everything else is computed from.

1. `group_rows`: row indices grouped by label (`order`, `starts`), and the self-confidence
   `p[i, y_i]` by row and in that order, where the thresholds and `prune_by_class` read it class
   by class;
2. `scan_rows`: one read of every row for the checks of the probabilities and the per-row
   quantities of the confident joint, the filters and the quality scores (`_kernels.scan_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from service.engine.label_noise._inputs import raise_for_status
from service.engine.label_noise._joint import NUDGE


@dataclass(frozen=True)
class ClassGroups:
    order: np.ndarray  # [N] int64: row indices by label, ascending within a label
    starts: np.ndarray  # [C + 1] int64: class k is order[starts[k]:starts[k + 1]]
    self_confidence: np.ndarray  # [N]: p[i, y_i]
    grouped_confidence: np.ndarray  # [N]: the same in `order`

    @property
    def counts(self) -> np.ndarray:
        """[C] int64: the number of rows of each label."""
        return np.diff(self.starts)

    def rows(self, k: int) -> np.ndarray:
        """The rows labelled k, ascending: what `probs[labels == k]` selects."""
        return self.order[self.starts[k] : self.starts[k + 1]]


@dataclass(frozen=True)
class RowScan:
    guess: np.ndarray  # [N] int32: the confident joint's column of the row, -1 for none
    argmax: np.ndarray  # [N] int32
    other: np.ndarray  # [N]: the largest probability of a class other than the label
    kept: np.ndarray  # [N] bool: never an issue (see `_kernels.scan_rows`)


def group_rows(probs: np.ndarray, labels: np.ndarray, *, kernels: ModuleType) -> ClassGroups:
    return ClassGroups(*kernels.group_by_class(probs, labels))


def scan_rows(
    probs: np.ndarray,
    labels: np.ndarray,
    self_confidence: np.ndarray,
    cut: np.ndarray,
    sum_tolerance: float,
    *,
    kernels: ModuleType,
) -> RowScan:
    """The scan of every row; InvalidInput for the first row that is not a distribution."""
    bits = np.dtype(f"int{8 * probs.itemsize}")  # the keys of the floats (`_kernels.scan_rows`)
    nudged = self_confidence + NUDGE  # in the probabilities' dtype, as `_reduce_issues` adds it
    status, guess, argmax, other, kept = kernels.scan_rows(
        probs, probs.view(bits), labels, cut, nudged.view(bits), sum_tolerance
    )
    raise_for_status(status, probs)
    return RowScan(guess, argmax, other.view(probs.dtype), kept)
