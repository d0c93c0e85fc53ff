"""The confident joint and what is estimated from it (Northcutt, Jiang & Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021).

- Per-class thresholds `t_k`: the mean self-confidence `p_k` over the rows labelled k (the
  paper's equation 2).
- The confident joint `C[i, j]`: rows labelled i whose only probability at or above its class's
  threshold is that of class j, or, where several are, whose argmax is j; every diagonal entry is
  at least 1.
- Calibration: each row rescaled to the count of its label, the whole to N, rounded to integers
  that keep the row totals.
- The noise matrix `P(given = i | true = j)`: the columns of the joint normalised, with
  cleanlab's clipping of noise rates to [0, 0.9999].

Everything here is O(C^2) or O(C) and follows cleanlab 2.x (`count.get_confident_thresholds`,
`count.compute_confident_joint`, `count.calibrate_confident_joint`, `count.estimate_latent`)
operation for operation, in the same dtypes and array layouts, so that the counts and matrices
are bitwise equal to its own: the comparisons and the roundings downstream depend on last bits.
"""

from __future__ import annotations

import numpy as np

# cleanlab's constants (cleanlab.internal.constants)
NUDGE = 1e-6  # FLOATING_POINT_COMPARISON: slack of the threshold comparison, the argmax nudge
THRESHOLD_FLOOR = 2 * NUDGE  # CONFIDENT_THRESHOLDS_LOWER_BOUND
ABSENT_THRESHOLD = 2  # BIG_VALUE: the threshold of a class no row is labelled with
TINY = 1e-100  # TINY_VALUE: the floor of every divisor
MAX_NOISE_RATE = 0.9999  # clip_noise_rates


def class_thresholds(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`get_confident_thresholds` from the per-class sums of self-confidence and the label counts.

    Each mean is `np.mean`'s: the sum in the probabilities' dtype divided by the count in float64,
    rounded back. The result has the dtype cleanlab's has: that of the probabilities when every
    class has a row, float64 when one has none (its threshold, 2, joins a list of float32
    scalars).
    """
    means = np.divide(sums.astype(np.float64), counts, out=np.zeros(counts.size), where=counts > 0)
    if np.all(counts > 0):
        return np.asarray(np.clip(means.astype(sums.dtype), a_min=THRESHOLD_FLOOR, a_max=None))
    means = np.where(counts > 0, means.astype(sums.dtype), ABSENT_THRESHOLD).astype(np.float64)
    return np.asarray(np.clip(means, a_min=THRESHOLD_FLOOR, a_max=None))


def confidence_cut(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`thresholds - 1e-6` in the thresholds' dtype (a float32 subtraction rounds), in the
    probabilities' `dtype`, rounded up where that is coarser: for p of that dtype, `p >= cut`
    exactly when `p >= thresholds - 1e-6`, and the comparison runs in the row's own dtype."""
    cut = thresholds - NUDGE
    rounded = cut.astype(dtype)
    return np.where(rounded < cut, np.nextafter(rounded, dtype.type(np.inf)), rounded)


def confident_joint(labels: np.ndarray, guess: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts `[given label, guessed true class]` of the rows with a guess (`guess >= 0`), the
    diagonal raised to at least 1 ("every class has a correctly labelled example")."""
    counted = guess >= 0
    cells = labels[counted] * n_classes + guess[counted]
    joint = np.bincount(cells, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    return joint


def calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """`calibrate_confident_joint`: rows scaled to the label counts, the total to N, rounded.

    The two expressions are cleanlab's own, transposes included: the layout decides the order in
    which `np.sum` adds, and so the last bits that the rounding then sees.
    """
    scaled = (joint.T / np.clip(joint.sum(axis=1), a_min=TINY, a_max=None) * label_counts).T
    scaled = scaled / np.clip(np.sum(scaled), a_min=TINY, a_max=None) * label_counts.sum()
    return _round_preserving_row_totals(scaled).astype(np.int64)


def _round_preserving_row_totals(floats: np.ndarray) -> np.ndarray:
    """cleanlab's `round_preserving_row_totals`, all rows at once: round each entry, then, in a
    row whose rounded total misses its rounded sum by d, move the |d| entries with the largest
    (d > 0) or smallest (d < 0) rounding residue `floats - ints` by one.

    "Largest" is `np.argsort(residue)[::-1][:d]`: among equal residues, those NumPy's sort puts
    last. A row's `np.argsort` along axis 1 is the one-dimensional `np.argsort` of that row, so
    equal residues resolve as in cleanlab's per-row loop.
    """
    rows = np.ascontiguousarray(floats)  # row sums pairwise over each row, as np.sum(row)
    n_classes = rows.shape[1]
    ints = rows.round()
    target = rows.sum(axis=1).round()
    position = np.arange(n_classes)
    while True:
        # Sums of whole numbers below 2^53 are exact in any order.
        missing = target - ints.sum(axis=1)
        todo = np.flatnonzero(np.abs(missing) > NUDGE)
        if todo.size == 0:
            return ints
        diff = np.round(missing[todo])
        step = np.where(diff < 0, -1.0, 1.0)
        changes = np.minimum(np.abs(diff), n_classes)[:, None]
        ranked = np.argsort(rows[todo] - ints[todo], axis=1)
        chosen = np.where(step[:, None] > 0, position >= n_classes - changes, position < changes)
        which = np.broadcast_to(todo[:, None], ranked.shape)[chosen]
        ints[which, ranked[chosen]] += np.broadcast_to(step[:, None], ranked.shape)[chosen]


def transition_matrix(joint: np.ndarray) -> np.ndarray:
    """`P(noisy label = j | clean class = i)` in row i: cleanlab's `noise_matrix` of
    `estimate_latent(joint, labels)` transposed, rows summing to 1.

    cleanlab leaves a zero column (here a zero row) for a class that no row was counted in,
    which happens after calibration to a class without examples: such a row is set to the
    identity row instead (no evidence of noise), so that every row is a distribution.
    """
    true_counts = joint.sum(axis=0).astype(float)
    noise = joint / np.clip(true_counts, a_min=TINY, a_max=None)
    clipped = np.clip(noise, 0, MAX_NOISE_RATE)  # clip_noise_rates: not the diagonal
    np.fill_diagonal(clipped, np.diagonal(noise))
    noise = clipped / np.clip(clipped.sum(axis=0), a_min=TINY, a_max=None)
    transition = np.ascontiguousarray(noise.T)
    never_counted = np.flatnonzero(true_counts == 0)
    transition[never_counted] = 0.0
    transition[never_counted, never_counted] = 1.0
    return transition


def noise_rate(joint: np.ndarray) -> float:
    """The estimated fraction of mislabelled rows, `1 - trace(Q)` with Q the joint divided by its
    sum, the paper's estimate of the joint distribution of given and true labels (cleanlab's
    `estimate_joint(None, probs, confident_joint=joint)`).

    cleanlab's `num_label_issues(..., estimation_method="off_diagonal_calibrated")` is about
    `noise_rate * N`, but calibrates the calibrated joint a second time, which can move a count.
    """
    return float(1.0 - (joint / np.clip(float(np.sum(joint)), a_min=TINY, a_max=None)).trace())
