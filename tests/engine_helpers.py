"""Helpers for engine tests: central finite differences of a scalar loss."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def finite_difference_grad(
    loss: Callable[[np.ndarray], float], x: np.ndarray, step: float = 1e-6
) -> np.ndarray:
    """d loss / d x by central differences, in float64: O(step^2) truncation error."""
    grad = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        if not np.isfinite(x[index]):
            continue
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (loss(plus) - loss(minus)) / (2 * step)
    return grad
