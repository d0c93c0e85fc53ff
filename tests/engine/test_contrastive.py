"""InfoNCE: cross-entropy over query-key similarities, written out with SciPy; the chain rule
through the normalisation; ignored queries; and the rows that cannot be normalised."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax

from service.engine import cross_entropy, info_nce, reduce_loss
from service.errors import InvalidInput
from tests.conftest import to_numpy

RNG = np.random.default_rng(20261205)


def nce(xp: ModuleType, query: Any, keys: Any, labels: Any, **options: Any) -> Any:
    return info_nce(xp.asarray(query), xp.asarray(keys), xp.asarray(labels), **options)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


@pytest.mark.parametrize("normalize", [True, False])
def test_values_match_the_closed_form(xp: ModuleType, normalize: bool) -> None:
    query, keys = RNG.normal(size=(5, 3)), RNG.normal(size=(7, 3))
    labels = np.array([0, 6, 2, 2, 4])
    out = nce(xp, query, keys, labels, temperature=0.2, normalize=normalize)
    q, k = (unit_rows(query), unit_rows(keys)) if normalize else (query, keys)
    log_p = log_softmax(q @ k.T / 0.2, axis=1)
    np.testing.assert_allclose(to_numpy(out.per_sample), -log_p[np.arange(5), labels], rtol=1e-12)


def test_without_normalization_it_is_cross_entropy_on_the_similarities(xp: ModuleType) -> None:
    query, keys = RNG.normal(size=(4, 3)), RNG.normal(size=(6, 3))
    labels = np.array([1, -100, 5, 0])
    out = nce(xp, query, keys, labels, temperature=1.0, normalize=False)
    ce = cross_entropy(xp.asarray(query @ keys.T), xp.asarray(labels))
    np.testing.assert_allclose(to_numpy(out.per_sample), to_numpy(ce.per_sample), rtol=1e-13)
    g = to_numpy(ce.grads["logits"])  # dS: the chain rule through S = q k^T
    np.testing.assert_allclose(to_numpy(out.grads["query"]), g @ keys, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(out.grads["keys"]), g.T @ query, rtol=1e-12)
    assert out.n_valid == 3 and out.divisor == 3


def test_normalized_loss_ignores_row_scale(xp: ModuleType) -> None:
    query, keys = RNG.normal(size=(4, 3)), RNG.normal(size=(5, 3))
    labels = np.array([0, 1, 2, 3])
    scale = np.array([[2.0], [0.5], [10.0], [1.0]])
    out = nce(xp, query, keys, labels)
    scaled = nce(xp, query * scale, keys * 3.0, labels)
    np.testing.assert_allclose(to_numpy(scaled.per_sample), to_numpy(out.per_sample), rtol=1e-12)
    # L(s q) = L(q): the gradient scales by 1 / s and is orthogonal to q
    np.testing.assert_allclose(
        to_numpy(scaled.grads["query"]), to_numpy(out.grads["query"]) / scale, rtol=1e-10
    )
    radial = np.sum(to_numpy(out.grads["query"]) * query, axis=1)
    np.testing.assert_allclose(radial, 0, atol=1e-14)


def test_ignoring_a_query_equals_slicing_it_out(xp: ModuleType) -> None:
    query, keys = RNG.normal(size=(5, 3)), RNG.normal(size=(4, 3))
    labels = np.array([0, -1, 3, -1, 1])
    keep = labels != -1
    query[3] = 0  # an ignored padding row may be all zeros, even with normalize=True
    masked = reduce_loss(nce(xp, query, keys, labels, ignore_index=-1))
    sliced = reduce_loss(nce(xp, query[keep], keys, labels[keep]))
    assert masked.n_valid == 3
    np.testing.assert_allclose(masked.loss, sliced.loss, rtol=1e-13)
    grad = to_numpy(masked.grads["query"])
    np.testing.assert_allclose(grad[keep], to_numpy(sliced.grads["query"]), rtol=1e-12)
    assert not np.any(grad[~keep])
    np.testing.assert_allclose(
        to_numpy(masked.grads["keys"]), to_numpy(sliced.grads["keys"]), rtol=1e-12
    )


def test_a_zero_key_cannot_be_normalized(xp: ModuleType) -> None:
    keys = RNG.normal(size=(4, 3))
    keys[2] = 0
    with pytest.raises(InvalidInput, match="row 2 has norm 0") as info:
        nce(xp, RNG.normal(size=(2, 3)), keys, np.array([0, 1]))
    assert info.value.field == ("keys",)
    out = nce(xp, RNG.normal(size=(2, 3)), keys, np.array([0, 1]), normalize=False)
    assert np.all(np.isfinite(to_numpy(out.per_sample)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_low_temperature_on_aligned_rows_stays_finite(xp: ModuleType, dtype: Any) -> None:
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=dtype)
    out = nce(xp, query, keys, np.array([2, 1]), temperature=1e-4)  # logits of magnitude 1e4
    # query 0's positive is its opposite: loss (1 - (-1)) / T = 2e4, the other is exact
    np.testing.assert_allclose(to_numpy(out.per_sample), [2e4, 0.0], rtol=1e-6, atol=1e-6)
    assert all(np.all(np.isfinite(to_numpy(g))) for g in out.grads.values())
