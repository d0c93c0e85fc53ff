"""Helpers for engine tests: central finite differences of a scalar loss, the engine path."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

from service.engine import _engine_path

# The two implementations of the softmax losses (service/engine/_engine_path.py).
ENGINE_PATHS = ("reference", "fused")


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


def use_engine_path(path: str, xp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the rest of the test on `path`; the fused kernels only take NumPy arrays."""
    if path == "fused" and xp is not np:
        pytest.skip("the fused kernels run on NumPy arrays only")
    pin_engine_path(path, monkeypatch)


def pin_engine_path(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`set_engine_path(path)` for the rest of the test; the previous path is back after it."""
    monkeypatch.setattr(_engine_path, "_chosen", _engine_path.checked_engine_path(path))
