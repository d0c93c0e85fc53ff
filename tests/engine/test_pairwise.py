"""Bradley-Terry / DPO and the triplet margin loss: closed forms, the reference-free and
reference-matched special cases, scores of 1e4, and the subgradients PyTorch chooses at a swap
tie, a hinge of exactly 0 and a distance of exactly 0."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import bradley_terry, reduce_loss, triplet_margin
from tests.conftest import to_numpy

RNG = np.random.default_rng(20261204)


def bt(xp: ModuleType, chosen: Any, rejected: Any, **options: Any) -> Any:
    arrays = {k: xp.asarray(v) for k, v in options.items() if k.startswith("ref_")}
    return bradley_terry(xp.asarray(chosen), xp.asarray(rejected), **{**options, **arrays})


def triplet(xp: ModuleType, anchor: Any, positive: Any, negative: Any, **options: Any) -> Any:
    arrays = (xp.asarray(anchor), xp.asarray(positive), xp.asarray(negative))
    return triplet_margin(*arrays, **options)


@pytest.mark.parametrize(("beta", "margin"), [(1.0, 0.0), (0.1, 0.0), (2.0, 0.7)])
def test_dpo_matches_the_closed_form(xp: ModuleType, beta: float, margin: float) -> None:
    c, r, rc, rr = (RNG.normal(size=7) * 3 for _ in range(4))
    out = bt(xp, c, r, beta=beta, margin=margin, ref_chosen=rc, ref_rejected=rr)
    z = beta * ((c - r) - (rc - rr)) - margin
    np.testing.assert_allclose(to_numpy(out.per_sample), np.logaddexp(0, -z), rtol=1e-13)
    sigmoid_neg_z = 1 / (1 + np.exp(z))
    np.testing.assert_allclose(to_numpy(out.grads["chosen"]), -beta * sigmoid_neg_z, rtol=1e-13)
    np.testing.assert_allclose(to_numpy(out.grads["rejected"]), beta * sigmoid_neg_z, rtol=1e-13)
    assert out.divisor == 7


def test_equal_references_are_no_references(xp: ModuleType) -> None:
    c, r, ref = RNG.normal(size=5), RNG.normal(size=5), RNG.normal(size=5)
    plain = bt(xp, c, r, beta=0.5)
    matched = bt(xp, c, r, beta=0.5, ref_chosen=ref, ref_rejected=ref)
    np.testing.assert_allclose(to_numpy(matched.per_sample), to_numpy(plain.per_sample))
    one_sided = bt(xp, c, r, beta=0.5, ref_chosen=ref)
    shifted = bt(xp, c - ref, r, beta=0.5)  # a missing reference counts as 0
    np.testing.assert_allclose(
        to_numpy(one_sided.per_sample), to_numpy(shifted.per_sample), rtol=1e-15
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_of_magnitude_1e4_are_exact(xp: ModuleType, dtype: Any) -> None:
    chosen = np.array([-1e4, 1e4, 0.0], dtype=dtype)
    rejected = np.array([1e4, -1e4, 0.0], dtype=dtype)
    out = bt(xp, chosen, rejected)
    np.testing.assert_allclose(to_numpy(out.per_sample), [2e4, 0.0, np.log(2)], rtol=1e-7)
    np.testing.assert_allclose(to_numpy(out.grads["chosen"]), [-1.0, 0.0, -0.5], rtol=1e-7)


def test_a_confident_pair_keeps_its_tiny_loss(xp: ModuleType) -> None:
    """-log sigmoid(40) = log1p(e^-40), not 1 - sigmoid rounded to 0."""
    out = bt(xp, np.array([40.0]), np.array([0.0]))
    np.testing.assert_allclose(to_numpy(out.per_sample), [np.log1p(np.exp(-40.0))], rtol=1e-15)


def pairwise_distance(x1: np.ndarray, x2: np.ndarray, p: float, eps: float) -> np.ndarray:
    return np.asarray(np.linalg.norm(x1 - x2 + eps, ord=p, axis=-1))


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0])
def test_triplet_matches_the_closed_form(xp: ModuleType, p: float, swap: bool) -> None:
    a = RNG.normal(size=(8, 4))
    pos = a + RNG.normal(size=(8, 4)) * 0.5
    # the first half of the negatives lie far out (inactive hinges), the rest close by
    neg = a + RNG.normal(size=(8, 4)) * np.repeat([5.0, 0.2], 4)[:, None]
    out = triplet(xp, a, pos, neg, p=p, swap=swap, margin=1.5)
    d_neg = pairwise_distance(a, neg, p, 1e-6)
    if swap:
        d_neg = np.minimum(d_neg, pairwise_distance(pos, neg, p, 1e-6))
    expected = np.maximum(pairwise_distance(a, pos, p, 1e-6) - d_neg + 1.5, 0)
    assert 0 < np.count_nonzero(expected) < 8  # some hinges active, some not
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-13)
    inactive = expected == 0
    for grad in out.grads.values():
        assert not np.any(to_numpy(grad)[inactive])


def test_swap_tie_splits_the_gradient_evenly(xp: ModuleType) -> None:
    """As PyTorch's `minimum` backward: d(a, n) == d(p, n) sends half to each."""
    a = np.array([[0.0, 0.0]])
    p = np.array([[0.0, 0.0]])  # d(a, n) == d(p, n) exactly
    n = np.array([[0.6, 0.8]])
    out = reduce_loss(triplet(xp, a, p, n, eps=0.0, swap=True, margin=2.0), "sum")
    assert out.loss == pytest.approx(0.0 - 1.0 + 2.0)  # d(a, p) - min(1, 1) + margin
    unit = np.array([[0.6, 0.8]])  # the gradient of |x - n| at x = 0 is -unit
    # d(a, p) = 0 has gradient 0; each of a and p gets half of +unit from -d_neg
    np.testing.assert_allclose(to_numpy(out.grads["anchor"]), unit / 2)
    np.testing.assert_allclose(to_numpy(out.grads["positive"]), unit / 2)
    np.testing.assert_allclose(to_numpy(out.grads["negative"]), -unit)


def test_a_hinge_of_exactly_zero_passes_its_gradient(xp: ModuleType) -> None:
    """As PyTorch's clamp_min backward ([h >= 0]): at h = 0 the gradient is that of h."""
    a, p, n = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]])
    out = triplet(xp, a, p, n, eps=0.0, margin=1.0)
    assert to_numpy(out.per_sample)[0] == 0
    np.testing.assert_allclose(to_numpy(out.grads["positive"]), [[1.0, 0.0]])
    np.testing.assert_allclose(to_numpy(out.grads["negative"]), [[-1.0, 0.0]])
    np.testing.assert_allclose(to_numpy(out.grads["anchor"]), [[0.0, 0.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embeddings_of_magnitude_1e4_are_accurate(xp: ModuleType, dtype: Any) -> None:
    a = np.array([[1e4, -1e4, 0.0]], dtype=dtype)
    p = np.array([[1e4, -1e4, 3.0]], dtype=dtype)
    n = np.array([[1e4, -1e4, 5.0]], dtype=dtype)
    out = triplet(xp, a, p, n, eps=0.0, margin=4.0)
    np.testing.assert_allclose(to_numpy(out.per_sample), [3.0 - 5.0 + 4.0], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(out.grads["anchor"]), [[0, 0, -1.0 + 1.0]], atol=1e-6)
