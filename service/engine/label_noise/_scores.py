"""Label quality scores in [0, 1], low for a label that is likely wrong: cleanlab's
`rank.get_label_quality_scores`, which orders the issues of confident learning (Northcutt et al.,
JAIR 2021).

With `p` the row's probabilities and `k` its label:

- `self_confidence`: `p_k`;
- `normalized_margin`: `(p_k - max_{j != k} p_j + 1) / 2`;
- `confidence_weighted_entropy`: `log(1 + H / s) / max(H / s, 1e-6)`, with `H` the entropy of
  `p` divided by `log C` and `s = max(p_k, 1e-6)`.

Each is computed in cleanlab's dtypes (the first two in the probabilities' dtype, the third in
float64 from a float32 entropy sum for float32 rows), bit for bit: the ranking sorts these values,
and NumPy's unstable sort orders equal values by the whole array it is given.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from service.engine.label_noise._options import RankBy

CLIP = 1e-6  # cleanlab's CLIPPING_LOWER_BOUND


def label_quality(
    rank_by: RankBy,
    probs: np.ndarray,
    self_confidence: np.ndarray,
    other: np.ndarray,
    *,
    kernels: ModuleType,
) -> np.ndarray:
    """[N] scores; `self_confidence` is `p[i, y_i]`, `other` the largest other probability."""
    if rank_by == "self_confidence":
        return self_confidence
    if rank_by == "normalized_margin":
        return np.asarray((self_confidence - other + 1) / 2)
    # get_normalized_entropy: -sum(xlogy(p, p)) / log(C); np.log(C) is a float64 scalar, which
    # makes the quotient float64 even for float32 rows.
    entropy = -kernels.entropy_sums(probs) / np.log(probs.shape[1])
    scores = entropy / np.clip(self_confidence, a_min=CLIP, a_max=None)
    return np.asarray(np.log(scores + 1) / np.clip(scores, a_min=CLIP, a_max=None))
