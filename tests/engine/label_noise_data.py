"""Seeded datasets with known label noise for the label-noise engine's tests."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax


def draw(
    n: int,
    c: int,
    *,
    seed: int,
    noise: float = 0.2,
    flips: str = "symmetric",
    imbalance: float = 0.0,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a classifier mostly right about the true class, and labels of which a
    fraction `noise` is another class: any other (`symmetric`) or the next one (`next`).
    `imbalance` > 0 draws the true classes from a Zipf-like prior 1 / (k + 1)^imbalance."""
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, c + 1) ** imbalance
    true = rng.choice(c, size=n, p=prior / prior.sum())
    logits = rng.standard_normal((n, c))
    logits[np.arange(n), true] += 4.0 * rng.uniform(0.5, 1.5, n)
    logits *= rng.uniform(0.5, 2.0, (n, 1))  # some rows confident, some not
    labels = true.copy()
    flipped = rng.random(n) < noise
    shift = rng.integers(1, c, n) if flips == "symmetric" else np.ones(n, dtype=np.int64)
    labels[flipped] = (true[flipped] + shift[flipped]) % c
    return softmax(logits, axis=1).astype(dtype), labels


def quantised(seed: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities in steps of 0.05: margins and self-confidences tie everywhere, also at the
    cuts of the pruning filters, where only the order of NumPy's sort decides."""
    probs, labels = draw(4000, 5, seed=seed, dtype=np.float64)
    steps = np.round(probs * 20) / 20
    steps[:, -1] = 1 - steps[:, :-1].sum(axis=1)
    valid = steps[:, -1] >= 0
    return steps[valid].astype(dtype), labels[valid]
