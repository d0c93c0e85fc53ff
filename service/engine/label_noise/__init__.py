"""Confident learning: likely label errors and the label noise of a dataset.

Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70
(2021), as cleanlab 2.x implements it. From out-of-sample (cross-validated) probabilities
`probs` [N, C], or logits, and the given labels [N]:

    find_label_issues(probs, labels, *, filter_by, rank_by, calibrate, max_issues)
        -> LabelNoiseReport

- `label_issues`: the flagged rows, likeliest first: cleanlab's `filter.find_label_issues(labels,
  probs, filter_by=..., return_indices_ranked_by=rank_by)`, the same rows in the same order;
  `max_issues` keeps the first ones, `n_issues` counts them all;
- `label_quality` [N]: `rank.get_label_quality_scores(labels, probs, method=rank_by)`;
- `confident_joint` [C, C], rows the given label, columns the true class:
  `count.compute_confident_joint(labels, probs, calibrate=calibrate)`; `class_thresholds` [C]:
  `count.get_confident_thresholds`;
- `transition_matrix` [C, C]: row i is P(given label | true class i), the convention of the
  `forward-corrected-cross-entropy` loss: `count.estimate_latent(confident_joint, labels)`'s
  `noise_matrix`, transposed;
- `noise_rate`: the estimated fraction of wrong labels, `1 - trace(Q)` with Q the confident joint
  divided by its sum: `1 - count.estimate_joint(None, probs, confident_joint=...).trace()`.

`calibrate` decides the joint that everything is estimated from: the pruning filters count from
it (cleanlab's `find_label_issues(..., confident_joint=compute_confident_joint(...,
calibrate=calibrate))`; cleanlab's default is the calibrated one), as do the transition matrix
and the noise rate. `confident_learning` flags the off-diagonal rows of the uncalibrated joint
either way, as cleanlab does.

Edge cases, as cleanlab (no warnings, though):
- a class without rows has threshold 2, so no row is confident in it; calibrated, its row of the
  joint is zero; it is never pruned, nor is a class with a single row;
- labels of a single class are accepted (cleanlab refuses them unless that class is 0);
- a class that no row is counted in (a zero column of the joint: after calibration, a class
  without rows that no row's argmax falls in) has the identity row in `transition_matrix`, where
  cleanlab's matrix has a zero column: the one departure, so that every row sums to 1.

Errors (`service.errors.InvalidInput`, naming the field): `probs`/`logits` not [N, C] with N >= 1
and C >= 2; probabilities outside [0, 1], NaN, or rows not summing to 1 within 1e-6 (the
resolution of float16 and bfloat16 inputs where coarser); NaN or +inf logits, or a row of -inf;
`labels` not of shape [N], not whole numbers, or outside [0, C); an unknown `filter_by` or
`rank_by`; `max_issues` negative. Inputs are never written to.

Probabilities compute in float32 for 16- and 32-bit inputs and in float64 for float64 (cleanlab
then gets the same array). The numba kernels (`_kernels`) compile, or load from numba's disk cache,
on the first call, or at `warm_up()`.
"""

from service.engine.label_noise._options import FILTERS, RANKINGS, FilterBy, RankBy
from service.engine.label_noise._report import (
    LabelNoiseReport,
    find_label_issues,
    find_label_issues_from_logits,
    warm_up,
)

__all__ = [
    "FILTERS",
    "RANKINGS",
    "FilterBy",
    "LabelNoiseReport",
    "RankBy",
    "find_label_issues",
    "find_label_issues_from_logits",
    "warm_up",
]
