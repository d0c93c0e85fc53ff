"""MSE, MAE and Huber: closed forms, PyTorch's subgradient sign(0) = 0, Huber's seam at delta and
its two limits, and the weighted mean's divisor."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import huber, mae, mse, reduce_loss
from tests.conftest import to_numpy

RNG = np.random.default_rng(20261206)


def call(xp: ModuleType, fn: Any, x: Any, y: Any, **options: Any) -> Any:
    arrays = {k: xp.asarray(v) for k, v in options.items() if k == "weight"}
    return fn(xp.asarray(x), xp.asarray(y), **{**options, **arrays})


def test_values_and_gradients_match_the_closed_forms(xp: ModuleType) -> None:
    x, y = RNG.normal(size=(3, 4)) * 2, RNG.normal(size=(3, 4)) * 2
    d = x - y
    for fn, value, grad in [
        (mse, d**2, 2 * d),
        (mae, np.abs(d), np.sign(d)),
        (
            huber,
            np.where(np.abs(d) <= 1, d**2 / 2, np.abs(d) - 0.5),
            np.clip(d, -1, 1),
        ),
    ]:
        out = call(xp, fn, x, y)
        np.testing.assert_allclose(to_numpy(out.per_sample), value, rtol=1e-15)
        np.testing.assert_allclose(to_numpy(out.grads["predictions"]), grad, rtol=1e-15)


def test_mae_gradient_is_zero_where_prediction_equals_target(xp: ModuleType) -> None:
    out = call(xp, mae, np.array([1.0, 2.0, -3.0]), np.array([1.0, 0.0, -3.0]))
    np.testing.assert_array_equal(to_numpy(out.grads["predictions"]), [0.0, 1.0, 0.0])


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_is_continuous_at_delta(xp: ModuleType, delta: float) -> None:
    y = np.zeros(4)
    x = np.array([delta, -delta, np.nextafter(delta, 0), np.nextafter(delta, 9)])
    out = call(xp, huber, x, y, delta=delta)
    np.testing.assert_allclose(to_numpy(out.per_sample), delta**2 / 2, rtol=1e-14)
    np.testing.assert_allclose(
        to_numpy(out.grads["predictions"]), [delta, -delta, delta, delta], rtol=1e-14
    )


def test_huber_limits_are_half_mse_and_shifted_mae(xp: ModuleType) -> None:
    x, y = RNG.normal(size=10), RNG.normal(size=10)
    wide = call(xp, huber, x, y, delta=100.0)
    np.testing.assert_allclose(
        to_numpy(wide.per_sample), to_numpy(call(xp, mse, x, y).per_sample) / 2, rtol=1e-15
    )
    far = x + 10 * np.sign(x - y)  # |d| > 10 >= delta everywhere
    narrow = call(xp, huber, far, y, delta=0.1)
    l1 = to_numpy(call(xp, mae, far, y).per_sample)
    np.testing.assert_allclose(to_numpy(narrow.per_sample), 0.1 * (l1 - 0.05), rtol=1e-14)


@pytest.mark.parametrize("fn", [mse, mae, huber])
def test_weighted_mean_divides_by_the_number_of_elements(xp: ModuleType, fn: Any) -> None:
    x, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    weight = np.array([0.0, 2.0, 0.5])  # broadcast over rows
    out = reduce_loss(call(xp, fn, x, y, weight=weight), "mean")
    plain = to_numpy(call(xp, fn, x, y).per_sample)
    np.testing.assert_allclose(out.loss, np.mean(plain * weight), rtol=1e-14)
    assert out.weight_sum == 12
    assert not np.any(to_numpy(out.grads["predictions"])[:, 0])
