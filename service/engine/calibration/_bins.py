"""Bin edges and bin assignment.

Bin `i` is `[edges[i], edges[i + 1])`; the last bin is closed, `[edges[n - 1], 1]`, so a
confidence of exactly 1.0 lands in the last bin (torchmetrics adds a phantom `n+1`-th bin for it).

- `uniform`: `edges[i] = i / n`, each edge the correctly rounded quotient (not `i * (1 / n)`),
  so a confidence equal to the float64 value of `i / n` starts bin `i`.
- `quantile`: equal mass (Nixon et al. 2019, "adaptive" calibration error): the interior edges are
  the `i / n` quantiles of the confidences (linear interpolation), the outer ones 0 and 1. Edges
  depend on the data, so such states cannot be merged. Tied confidences can leave bins empty.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

import numpy as np

from service.engine._namespace import Array

Binning = Literal["uniform", "quantile"]
BINNINGS: tuple[Binning, ...] = ("uniform", "quantile")


def uniform_edges(n_bins: int) -> np.ndarray:
    """`[0, 1/n, ..., 1]` in float64, each edge `i / n` correctly rounded."""
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def quantile_edges(values: Array, n_bins: int, *, xp: ModuleType) -> np.ndarray:
    """Equal-mass edges of `values` ([N]: one set; [N, C]: one set per column, as [C, n + 1])."""
    n = values.shape[0]
    if n == 0:
        edges = uniform_edges(n_bins)
        return edges if values.ndim == 1 else np.tile(edges, (values.shape[1], 1))
    q = xp.asarray(uniform_edges(n_bins))
    edges = to_host(xp.quantile(values.astype(np.float64), q, axis=0)).T  # [C, n + 1] or [n + 1]
    edges = np.array(edges, dtype=np.float64)
    edges[..., 0] = 0.0
    edges[..., -1] = 1.0
    return edges


def assign(values: Array, edges: np.ndarray, *, xp: ModuleType) -> Array:
    """Bin index (int64) of every value in [0, 1]: `[lo, hi)`, the last bin closed.

    `edges` is `[n + 1]` (shared) or `[C, n + 1]` (per column of `values [N, C]`).
    """
    n_bins = edges.shape[-1] - 1
    if edges.ndim == 1 and np.array_equal(edges, uniform_edges(n_bins)):
        # floor(v n) can be one off from comparing v with the edges (v n rounds), so compare with
        # the edges below and above it, computed as edges[i] is: i / n, correctly rounded.
        v = values.astype(np.float64)
        below = xp.floor(v * n_bins)
        index = below - (v < below / n_bins) + (v >= (below + 1) / n_bins)
        return xp.clip(index, 0, n_bins - 1).astype(np.int64)
    # Count the interior edges at or below each value: one pass per edge, any edge layout.
    e = xp.asarray(edges)
    b = xp.zeros(values.shape, dtype=np.int64)
    for i in range(1, n_bins):
        b += values >= (e[i] if edges.ndim == 1 else e[:, i])
    return b


def to_host(array: Array) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (states and small summaries live on the host)."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)
