"""The cases both fused kernels are checked on against the reference array code.

tests/engine/test_fused.py (numba, NumPy arrays) and tests/engine/test_fused_cuda.py (CUDA, CuPy
arrays) run the same grid: weights x ignore_index x smoothing x z-loss x reductions x 2-D/3-D x
float32/float64, focal and poly-1, and masked classes.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from service.engine import ReducedLoss, cross_entropy, focal, poly1
from tests.conftest import to_numpy

RNG = np.random.default_rng(20261128)
C = 7
TOLERANCES: dict[Any, dict[str, Any]] = {
    np.float64: {"rtol": 1e-13, "atol": 1e-15},
    np.float32: {"rtol": 1e-5, "atol": 1e-6},
}


def assert_same(result: ReducedLoss, expected: ReducedLoss, dtype: Any) -> None:
    tol = TOLERANCES[dtype]
    np.testing.assert_allclose(result.loss, expected.loss, **tol)
    assert result.n_valid == expected.n_valid
    # The divisor is a float64 sum: CuPy and NumPy may add it in another order (1 ulp).
    np.testing.assert_allclose(result.weight_sum, expected.weight_sum, rtol=1e-14)
    grad, expected_grad = to_numpy(result.grads["logits"]), to_numpy(expected.grads["logits"])
    assert grad.dtype == expected_grad.dtype and grad.shape == expected_grad.shape
    np.testing.assert_allclose(grad, expected_grad, **tol)
    if expected.per_sample is not None:
        assert result.per_sample is not None
        per_sample, expected_per_sample = to_numpy(result.per_sample), to_numpy(expected.per_sample)
        assert per_sample.dtype == expected_per_sample.dtype
        np.testing.assert_allclose(per_sample, expected_per_sample, **tol)


def batch(shape: tuple[int, ...], dtype: Any, *, ignored: bool) -> tuple[np.ndarray, np.ndarray]:
    logits = (RNG.normal(size=(*shape, C)) * 3).astype(dtype)
    labels = RNG.integers(0, C, size=shape)
    if ignored:
        labels.reshape(-1)[::3] = -100
    return logits, labels


GRID = list(
    itertools.product(
        [None, "weight", "zero-weight"],
        [False, True],  # some labels ignored
        [0.0, 0.2],  # label smoothing
        [0.0, 1e-3],  # z-loss
        ["mean", "sum", "none"],
        [(9,), (3, 4)],
        [np.float32, np.float64],
    )
)
GRID_IDS = [
    f"{w}-ign{int(i)}-ls{s}-z{z}-{r}-{len(shape) + 1}d-{np.dtype(d).name}"
    for w, i, s, z, r, shape, d in GRID
]

FAMILY = [
    (focal, {"gamma": 0.0}),
    (focal, {"gamma": 0.5}),
    (focal, {"gamma": 2.0}),
    (focal, {"gamma": 1.5, "alpha": np.array([0.25, 1.0, 0.0, 2.0, 0.5, 1.0, 3.0])}),
    (focal, {"gamma": 2.0, "class_counts": np.arange(1.0, C + 1), "class_balance_beta": 0.9}),
    (poly1, {"epsilon": 1.0}),
    (poly1, {"epsilon": -1.0}),
    (poly1, {"epsilon": 2.5}),
]
FAMILY_IDS = [
    "focal-0",
    "focal-0.5",
    "focal-2",
    "focal-alpha",
    "focal-class-balanced",
    "poly1-1",
    "poly1-minus-1",
    "poly1-2.5",
]


def masked_logits(dtype: Any, *, smoothing: bool) -> tuple[np.ndarray, np.ndarray]:
    logits = (RNG.normal(size=(5, C)) * 2).astype(dtype)
    labels = np.array([0, 3, -100, 6, 2])
    logits[:, 5] = -np.inf  # a masked class no label names (and of weight 0 when smoothing)
    if not smoothing:
        logits[1, [0, 1, 2]] = -np.inf
    logits[2, :] = -np.inf  # a fully masked row, ignored
    return logits, labels


MASKED = [
    (cross_entropy, {}),
    (cross_entropy, {"z_loss": 1e-2}),
    (cross_entropy, {"label_smoothing": 0.1, "weight": np.array([1, 2, 1, 1, 1, 0, 3.0])}),
    (focal, {"gamma": 2.0}),
    (poly1, {"epsilon": 1.0}),
]
MASKED_IDS = ["ce", "z-loss", "smoothing-zero-weight-on-masked", "focal", "poly1"]


def grid_options(weight: str | None, smoothing: float, z_loss: float, dtype: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"label_smoothing": smoothing, "z_loss": z_loss}
    if weight is not None:
        w = RNG.uniform(0.1, 3.0, size=C).astype(dtype)
        if weight == "zero-weight":
            w[[1, 4]] = 0
        options["weight"] = w
    return options
