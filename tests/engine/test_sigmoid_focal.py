"""Sigmoid focal loss: torchvision's formula written out here, the settings that make it BCE,
and the places where torchvision's `1 - p_t` cancels to 0 or its gradient is NaN."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import binary_cross_entropy, reduce_loss, sigmoid_focal
from service.errors import InvalidInput
from tests.conftest import to_numpy

RNG = np.random.default_rng(20261202)


def focal(xp: ModuleType, logits: Any, labels: Any, **options: Any) -> Any:
    arrays = {k: xp.asarray(v) for k, v in options.items() if k == "weight"}
    return sigmoid_focal(xp.asarray(logits), xp.asarray(labels), **{**options, **arrays})


def torchvision_formula(
    x: np.ndarray, y: np.ndarray, alpha: float | None, gamma: float
) -> np.ndarray:
    """torchvision.ops.sigmoid_focal_loss, reduction="none", in float64 NumPy."""
    p = 1 / (1 + np.exp(-x))
    ce = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return np.asarray(loss)


@pytest.mark.parametrize(
    ("alpha", "gamma"), [(0.25, 2.0), (None, 2.0), (0.75, 0.5), (0.25, 0.0), (1.0, 3.0)]
)
def test_values_match_torchvision(xp: ModuleType, alpha: float | None, gamma: float) -> None:
    logits = RNG.normal(size=(4, 6)) * 3
    labels = RNG.uniform(size=(4, 6))
    labels[:2] = np.round(labels[:2])
    weight = RNG.uniform(0.5, 2, size=6)
    out = focal(xp, logits, labels, alpha=alpha, gamma=gamma, weight=weight)
    expected = torchvision_formula(logits, labels, alpha, gamma) * weight
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-12)
    assert out.divisor == 24  # mean over elements, as torchvision's loss.mean()


def test_gamma_zero_without_alpha_is_binary_cross_entropy(xp: ModuleType) -> None:
    logits = RNG.normal(size=(3, 5)) * 4
    labels = RNG.uniform(size=(3, 5))
    weight = RNG.uniform(size=(3, 1))
    out = focal(xp, logits, labels, alpha=None, gamma=0.0, weight=weight)
    bce = binary_cross_entropy(xp.asarray(logits), xp.asarray(labels), weight=xp.asarray(weight))
    np.testing.assert_array_equal(to_numpy(out.per_sample), to_numpy(bce.per_sample))
    np.testing.assert_array_equal(to_numpy(out.grads["logits"]), to_numpy(bce.grads["logits"]))


def test_alpha_one_half_halves_the_loss_without_alpha(xp: ModuleType) -> None:
    logits = RNG.normal(size=8) * 3
    labels = RNG.uniform(size=8)
    half = reduce_loss(focal(xp, logits, labels, alpha=0.5), "sum")
    none = reduce_loss(focal(xp, logits, labels, alpha=None), "sum")
    np.testing.assert_allclose(half.loss, none.loss / 2, rtol=1e-15)
    np.testing.assert_allclose(
        to_numpy(half.grads["logits"]), to_numpy(none.grads["logits"]) / 2, rtol=1e-15
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_confident_correct_logit_keeps_its_tiny_loss(xp: ModuleType, dtype: Any) -> None:
    """Regression: torchvision's `1 - p_t` is exactly 0 once sigmoid(x) rounds to 1, so its loss
    is 0 and, for gamma < 1, its gradient NaN (0^(gamma - 1) * 0). Here 1 - p_t = exp(-softplus(x))
    keeps every digit, and the gradient is finite."""
    x = np.array([40.0, -40.0], dtype=dtype)
    y = np.array([1.0, 0.0], dtype=dtype)
    out = focal(xp, x, y, alpha=None, gamma=0.5)
    # ce = log1p(e^-40), 1 - p_t = e^-40 / (1 + e^-40): the loss is ce (1 - p_t)^0.5
    ce = np.log1p(np.exp(-40.0))
    expected = ce * (np.exp(-40.0) / (1 + np.exp(-40.0))) ** 0.5
    np.testing.assert_allclose(to_numpy(out.per_sample), [expected, expected], rtol=1e-6)
    grad = to_numpy(out.grads["logits"])
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad) < 1e-20)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_neg_inf_logit_with_label_zero_costs_nothing(xp: ModuleType, gamma: float) -> None:
    out = focal(xp, np.array([-np.inf, 0.0]), np.array([0.0, 1.0]), gamma=gamma)
    per_sample = to_numpy(out.per_sample)
    assert per_sample[0] == 0 and np.isfinite(per_sample[1])
    assert to_numpy(out.grads["logits"])[0] == 0


def test_alpha_zero_silences_a_label_one_at_a_neg_inf_logit(xp: ModuleType) -> None:
    out = focal(xp, np.array([-np.inf, 1.0]), np.array([1.0, 0.0]), alpha=0.0)
    assert to_numpy(out.per_sample)[0] == 0
    assert np.all(np.isfinite(to_numpy(out.grads["logits"])))
    assert to_numpy(out.grads["logits"])[0] == 0
    with pytest.raises(InvalidInput, match="not finite") as info:
        focal(xp, np.array([-np.inf, 1.0]), np.array([1.0, 0.0]), alpha=0.25)
    assert info.value.field == ("logits",)
