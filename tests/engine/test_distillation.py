"""KL-divergence distillation: T^2 KL(p || softmax(x / T)) against SciPy's log-softmax, the
gradient T (q - p), the `batchmean` divisor, 0 log 0, and the targets that are rejected."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax, softmax

from service.engine import kl_divergence, reduce_loss
from service.errors import InvalidInput
from tests.conftest import to_numpy

RNG = np.random.default_rng(20261203)


def kl(xp: ModuleType, logits: Any, **options: Any) -> Any:
    arrays = {k: xp.asarray(v) for k, v in options.items() if k.startswith("target")}
    return kl_divergence(xp.asarray(logits), **{**options, **arrays})


@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_values_and_gradient_match_the_closed_form(xp: ModuleType, temperature: float) -> None:
    logits, target = RNG.normal(size=(2, 3, 5)) * 3, RNG.normal(size=(2, 3, 5)) * 3
    out = kl(xp, logits, target_logits=target, temperature=temperature)
    log_p = log_softmax(target / temperature, axis=-1)
    log_q = log_softmax(logits / temperature, axis=-1)
    expected = temperature**2 * np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-12)
    # d/dx T^2 KL = T (q - p): the T from x / T does not cancel the T^2 entirely
    grad = temperature * (np.exp(log_q) - np.exp(log_p))
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), grad, rtol=1e-12, atol=1e-15)


def test_target_logits_equal_their_softmax_as_target_probs(xp: ModuleType) -> None:
    logits, target = RNG.normal(size=(4, 6)), RNG.normal(size=(4, 6)) * 2
    from_logits = kl(xp, logits, target_logits=target, temperature=2.0)
    from_probs = kl(xp, logits, target_probs=softmax(target / 2.0, axis=-1), temperature=2.0)
    np.testing.assert_allclose(
        to_numpy(from_logits.per_sample), to_numpy(from_probs.per_sample), rtol=1e-12
    )
    np.testing.assert_allclose(
        to_numpy(from_logits.grads["logits"]),
        to_numpy(from_probs.grads["logits"]),
        rtol=1e-12,
        atol=1e-15,
    )


def test_a_student_equal_to_its_teacher_costs_nothing(xp: ModuleType) -> None:
    logits = RNG.normal(size=(3, 4)) * 5
    out = kl(xp, logits, target_logits=logits + 7.0, temperature=3.0)  # shift invariant
    np.testing.assert_allclose(to_numpy(out.per_sample), 0, atol=1e-14)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), 0, atol=1e-15)


def test_mean_divides_by_every_row_not_the_first_axis(xp: ModuleType) -> None:
    """PyTorch's batchmean divides [B, T, C] by B; the service's mean is over all B * T rows."""
    logits, target = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 3, 4))
    result = kl(xp, logits, target_logits=target)
    assert result.divisor == 6 and result.n_valid == 6
    out = reduce_loss(result, "mean")
    np.testing.assert_allclose(out.loss, float(np.sum(to_numpy(result.per_sample))) / 6)


def test_zero_target_mass_on_a_neg_inf_student_logit_contributes_nothing(xp: ModuleType) -> None:
    """Regression: PyTorch's kl_div computes 0 * -inf = NaN there; 0 log 0 = 0 by convention."""
    logits = np.array([[1.0, -np.inf, 0.5, 2.0]])
    probs = np.array([[0.25, 0.0, 0.5, 0.25]])
    out = kl(xp, logits, target_probs=probs)
    finite = np.array([1.0, 0.5, 2.0])
    log_q = log_softmax(finite)
    expected = np.sum(probs[0, [0, 2, 3]] * (np.log(probs[0, [0, 2, 3]]) - log_q))
    np.testing.assert_allclose(to_numpy(out.per_sample), [expected], rtol=1e-12)
    grad = to_numpy(out.grads["logits"])
    assert grad[0, 1] == 0 and np.all(np.isfinite(grad))


def test_neg_inf_target_logit_masks_its_class(xp: ModuleType) -> None:
    logits = RNG.normal(size=(1, 4))
    target = np.array([[0.3, -np.inf, 1.0, -0.2]])
    out = kl(xp, logits, target_logits=target)
    probs = softmax(target, axis=-1)
    assert probs[0, 1] == 0
    reference = kl(xp, logits, target_probs=probs)
    np.testing.assert_allclose(to_numpy(out.per_sample), to_numpy(reference.per_sample), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_magnitude_1e4_are_exact(xp: ModuleType, dtype: Any) -> None:
    logits = np.array([[1e4, 0.0, -1e4]], dtype=dtype)
    probs = np.array([[0.5, 0.5, 0.0]], dtype=dtype)
    out = kl(xp, logits, target_probs=probs)
    # log q = [0, -1e4, -2e4]: KL = 0.5 (log 0.5 - 0) + 0.5 (log 0.5 + 1e4)
    np.testing.assert_allclose(to_numpy(out.per_sample), [np.log(0.5) + 5e3], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), [[0.5, -0.5, 0.0]], atol=1e-7)


def test_target_mass_on_a_neg_inf_student_logit_is_rejected(xp: ModuleType) -> None:
    with pytest.raises(InvalidInput, match="not finite") as info:
        kl(xp, np.array([[0.0, -np.inf]]), target_probs=np.array([[0.5, 0.5]]))
    assert info.value.field == ("logits",)


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({}, "target_logits", "exactly one"),
        (
            {"target_logits": np.zeros((2, 3)), "target_probs": np.full((2, 3), 1 / 3)},
            "target_logits",
            "exactly one",
        ),
        ({"target_logits": np.full((2, 3), -np.inf)}, "target_logits", "-inf"),
        ({"target_logits": np.zeros((2, 3)), "temperature": 1e-300}, "temperature", "overflows"),
        ({"target_logits": np.zeros((2, 3)), "temperature": 1e200}, "temperature", "overflows"),
    ],
    ids=["neither", "both", "all-neg-inf-row", "logits-over-temperature", "temperature-squared"],
)
def test_bad_targets_are_rejected_naming_the_field(
    xp: ModuleType, options: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        kl(xp, np.full((2, 3), 1e10), **options)
    assert info.value.field == (field,)
