"""Class-balanced weights (Cui et al. 2019) on cross-entropy and focal."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import cross_entropy, focal, reduce_loss
from service.errors import InvalidInput
from tests.conftest import to_numpy

# Every test runs on both implementations (the reference array code and the fused kernels).
pytestmark = pytest.mark.usefixtures("engine_path")

RNG = np.random.default_rng(3)
LOGITS = RNG.normal(size=(8, 4))
LABELS = np.array([0, 1, 2, 3, 3, 2, 1, 0])
COUNTS = np.array([5000.0, 500.0, 50.0, 5.0])


def cui_weights(counts: np.ndarray, beta: float) -> np.ndarray:
    """The paper's formula as written: (1 - beta) / (1 - beta^n), normalised to sum C."""
    weights = (1 - beta) / (1 - np.power(beta, counts))
    return np.asarray(weights / weights.sum() * len(counts))


def loss(fn: Any, xp: ModuleType, **options: Any) -> Any:
    arrays = {k: xp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    return reduce_loss(fn(xp.asarray(LOGITS), xp.asarray(LABELS), **arrays), "mean")


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999, 0.9999])
def test_cross_entropy_counts_equal_the_explicit_weight(xp: ModuleType, beta: float) -> None:
    by_counts = loss(cross_entropy, xp, class_counts=COUNTS, class_balance_beta=beta)
    by_weight = loss(cross_entropy, xp, weight=cui_weights(COUNTS, beta))
    np.testing.assert_allclose(by_counts.loss, by_weight.loss, rtol=1e-12)
    np.testing.assert_allclose(
        to_numpy(by_counts.grads["logits"]), to_numpy(by_weight.grads["logits"]), rtol=1e-12
    )


def test_focal_counts_are_its_alpha(xp: ModuleType) -> None:
    by_counts = loss(focal, xp, class_counts=COUNTS, class_balance_beta=0.99)
    by_alpha = loss(focal, xp, alpha=cui_weights(COUNTS, 0.99))
    np.testing.assert_allclose(by_counts.loss, by_alpha.loss, rtol=1e-12)


def test_beta_zero_is_unweighted_and_default_beta_is_0_999(xp: ModuleType) -> None:
    plain = loss(cross_entropy, xp)
    assert loss(cross_entropy, xp, class_counts=COUNTS, class_balance_beta=0.0).loss == plain.loss
    default = loss(cross_entropy, xp, class_counts=COUNTS)
    np.testing.assert_allclose(
        default.loss, loss(cross_entropy, xp, weight=cui_weights(COUNTS, 0.999)).loss, rtol=1e-12
    )


def test_rarer_classes_weigh_more(xp: ModuleType) -> None:
    from service.engine._class_balance import class_balanced_weight

    weights = to_numpy(class_balanced_weight(xp.asarray(COUNTS), 0.999, 4, np.dtype("f8"), xp=xp))
    assert np.all(np.diff(weights) > 0)
    np.testing.assert_allclose(weights.sum(), 4.0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"class_counts": np.array([1.0, 0.0, 2.0, 3.0])}, "class_counts"),
        ({"class_counts": np.ones(3)}, "class_counts"),
        ({"class_counts": COUNTS, "class_balance_beta": 1.0}, "class_balance_beta"),
        ({"class_counts": COUNTS, "class_balance_beta": -0.1}, "class_balance_beta"),
        ({"class_counts": COUNTS, "weight": np.ones(4)}, "weight"),
        ({"class_balance_beta": 0.9}, "class_balance_beta"),
    ],
)
def test_bad_options_name_the_field(xp: ModuleType, options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        loss(cross_entropy, xp, **options)
    assert info.value.field == (field,)
