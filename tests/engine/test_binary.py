"""Binary cross-entropy properties: gradient against finite differences, extreme and -inf logits,
broadcast weights, and rejected inputs."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import binary_cross_entropy, reduce_loss
from service.errors import InvalidInput
from tests.conftest import to_numpy
from tests.engine_helpers import finite_difference_grad

RNG = np.random.default_rng(7)


def bce(xp: ModuleType, logits: Any, labels: Any, reduction: str = "mean", **options: Any) -> Any:
    arrays: dict[str, Any] = {k: None if v is None else xp.asarray(v) for k, v in options.items()}
    result = binary_cross_entropy(xp.asarray(logits), xp.asarray(labels), **arrays)
    return reduce_loss(result, reduction)  # type: ignore[arg-type]


def closed_form(x: np.ndarray, y: np.ndarray, w: Any = 1.0, p: Any = 1.0) -> np.ndarray:
    """-w (p y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))), written out in float64."""
    sigmoid = 1 / (1 + np.exp(-x))
    return np.asarray(-w * (p * y * np.log(sigmoid) + (1 - y) * np.log1p(-sigmoid)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_gradient(xp: ModuleType, reduction: str) -> None:
    logits = RNG.normal(size=(3, 4)) * 2
    labels = RNG.uniform(size=(3, 4))
    labels[0] = [0, 1, 0, 1]
    weight = RNG.uniform(0.5, 2, size=(3, 1))
    pos_weight = RNG.uniform(0.5, 3, size=4)
    out = bce(xp, logits, labels, reduction, weight=weight, pos_weight=pos_weight)
    per_element = closed_form(logits, labels, weight, pos_weight)
    expected = per_element.mean() if reduction == "mean" else per_element.sum()
    np.testing.assert_allclose(out.loss, expected, rtol=1e-12)

    def loss(x: np.ndarray) -> float:
        return float(bce(np, x, labels, reduction, weight=weight, pos_weight=pos_weight).loss)

    numeric = finite_difference_grad(loss, logits)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), numeric, rtol=1e-6, atol=1e-9)


def test_extreme_logits_are_finite_and_exact(xp: ModuleType) -> None:
    logits = np.array([1e4, -1e4, 1e4, -1e4, 40.0])
    labels = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    out = bce(xp, logits, labels, "none")
    np.testing.assert_allclose(to_numpy(out.per_sample), [0.0, 0.0, 1e4, 1e4, 40.0], rtol=1e-15)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), [0.0, 0.0, 1.0, -1.0, 1.0])


def test_neg_inf_logit_with_label_zero_costs_nothing(xp: ModuleType) -> None:
    out = bce(xp, np.array([-np.inf, 0.0]), np.array([0.0, 1.0]), "none", pos_weight=[2.0, 2.0])
    np.testing.assert_allclose(to_numpy(out.per_sample), [0.0, 2 * np.log(2)])
    assert to_numpy(out.grads["logits"])[0] == 0


def test_neg_inf_logit_with_a_positive_label_is_rejected(xp: ModuleType) -> None:
    with pytest.raises(InvalidInput, match="not finite") as info:
        bce(xp, np.array([-np.inf]), np.array([0.5]))
    assert info.value.field == ("logits",)


def test_float32_computes_in_float32(xp: ModuleType) -> None:
    logits = RNG.normal(size=(2, 3)).astype(np.float32)
    labels = np.array([[0, 1, 1], [1, 0, 0]], dtype=np.float32)
    out = bce(xp, logits, labels, "none")
    assert to_numpy(out.grads["logits"]).dtype == np.float32
    reference = closed_form(logits.astype(np.float64), labels.astype(np.float64))
    np.testing.assert_allclose(to_numpy(out.per_sample), reference, rtol=1e-6)


@pytest.mark.parametrize(
    ("labels", "options", "field", "message"),
    [
        (np.full((2, 3), 0.5)[:1], {}, "labels", r"expected the logits' shape \[2, 3\]"),
        (np.full((2, 3), 1.5), {}, "labels", r"\[0, 1\]"),
        (np.full((2, 3), 0.5), {"weight": np.ones(2)}, "weight", "does not broadcast"),
        (np.full((2, 3), 0.5), {"pos_weight": -np.ones(3)}, "pos_weight", "finite and >= 0"),
        (np.full((2, 3), 0.5), {"pos_weight": np.ones((1, 2, 3))}, "pos_weight", "broadcast"),
    ],
)
def test_bad_input_names_the_field(
    xp: ModuleType, labels: Any, options: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        bce(xp, np.zeros((2, 3)), labels, **options)
    assert info.value.field == (field,)
