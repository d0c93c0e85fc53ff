"""POST /v1/losses/cross-entropy and /v1/losses/binary-cross-entropy, through HTTP.

Reference values are computed here with plain NumPy (log-softmax and softplus written out), not
with anything imported from `service`.

Long because the two losses share the written-out references and the HTTP helpers; one module keeps
them next to every case.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import pytest
from numpy.typing import NDArray

from tests.helpers import decoded, encoded

pytestmark = pytest.mark.anyio

CE = "/v1/losses/cross-entropy"
BCE = "/v1/losses/binary-cross-entropy"
RESPONSE_FIELDS = {
    "name",
    "loss",
    "per_sample",
    "grad",
    "grads",
    "n_valid",
    "weight_sum",
    "backend",
    "dtype",
}

LOGITS = np.array(
    [
        [2.0, -1.0, 0.5, 0.0],
        [0.1, 0.2, 0.3, 0.4],
        [-3.0, 4.0, 1.0, -0.5],
    ]
)
LABELS = np.array([0, 3, 1])


# --- references, written out with NumPy --------------------------------------------------------


def log_softmax(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """log softmax over the last axis, shifted by the row maximum."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def one_hot(labels: NDArray[Any], n_classes: int) -> NDArray[np.float64]:
    return np.asarray(np.eye(n_classes)[labels], dtype=np.float64)


def softplus(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """log(1 + exp(x)) without overflow."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


# --- wire helpers ------------------------------------------------------------------------------


async def post_ok(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    assert set(result) == RESPONSE_FIELDS
    return result


# --- cross-entropy: values -----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
async def test_cross_entropy_matches_numpy(client: httpx.AsyncClient, reduction: str) -> None:
    body = {
        "logits": LOGITS.tolist(),
        "labels": LABELS.tolist(),
        "reduction": reduction,
        "return_grad": True,
    }
    result = await post_ok(client, CE, body)

    nll = -log_softmax(LOGITS)[np.arange(3), LABELS]
    grad_of_sum = np.exp(log_softmax(LOGITS)) - one_hot(LABELS, 4)
    scale = 1 / 3 if reduction == "mean" else 1.0
    assert result["name"] == "cross-entropy"
    assert result["loss"] == pytest.approx(nll.sum() * scale, rel=1e-12)
    assert result["n_valid"] == 3
    assert result["weight_sum"] == 3.0
    assert result["backend"] == "numpy"
    assert result["dtype"] == "float64"  # JSON logits are float64
    grad = np.array(result["grad"])
    assert grad.shape == (3, 4)
    np.testing.assert_allclose(grad, grad_of_sum * scale, rtol=1e-12, atol=1e-15)
    if reduction == "none":
        assert np.array(result["per_sample"]).shape == (3,)
        np.testing.assert_allclose(result["per_sample"], nll, rtol=1e-12)
    else:
        assert result["per_sample"] is None


async def test_grad_is_omitted_unless_requested(client: httpx.AsyncClient) -> None:
    result = await post_ok(client, CE, {"logits": LOGITS.tolist(), "labels": LABELS.tolist()})
    assert result["grad"] is None
    assert result["per_sample"] is None
    assert result["loss"] == pytest.approx(-log_softmax(LOGITS)[np.arange(3), LABELS].mean())


async def test_three_dimensional_logits(client: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 5))
    labels = rng.integers(0, 5, size=(2, 3))
    body = {
        "logits": logits.tolist(),
        "labels": labels.tolist(),
        "reduction": "none",
        "return_grad": True,
    }
    result = await post_ok(client, CE, body)

    logp = log_softmax(logits)
    nll = -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    per_sample = np.array(result["per_sample"])
    assert per_sample.shape == (2, 3)
    np.testing.assert_allclose(per_sample, nll, rtol=1e-12)
    grad = np.array(result["grad"])
    assert grad.shape == (2, 3, 5)
    np.testing.assert_allclose(grad, np.exp(logp) - one_hot(labels, 5), atol=1e-14)
    assert result["loss"] == pytest.approx(nll.sum(), rel=1e-12)
    assert result["n_valid"] == 6


# --- cross-entropy: wire forms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire_dtype", "out_dtype", "rtol"),
    [
        ("float16", "float32", 1e-5),
        ("bfloat16", "float32", 1e-5),
        ("float32", "float32", 1e-5),
        ("float64", "float64", 1e-12),
    ],
)
async def test_encoded_logits_give_encoded_outputs(
    client: httpx.AsyncClient, wire_dtype: str, out_dtype: str, rtol: float
) -> None:
    dtype = np.dtype(ml_dtypes.bfloat16) if wire_dtype == "bfloat16" else np.dtype(wire_dtype)
    logits = LOGITS.astype(dtype)
    body = {
        "logits": encoded(logits),
        "labels": LABELS.tolist(),
        "reduction": "none",
        "return_grad": True,
    }
    result = await post_ok(client, CE, body)

    # The reference uses the values the wire dtype actually holds.
    exact = logits.astype(np.float64)
    logp = log_softmax(exact)
    nll = -logp[np.arange(3), LABELS]
    assert result["dtype"] == out_dtype
    for name, expected in (("per_sample", nll), ("grad", np.exp(logp) - one_hot(LABELS, 4))):
        value = result[name]
        assert set(value) == {"dtype", "shape", "data"}, name
        assert value["dtype"] == out_dtype
        assert value["shape"] == list(expected.shape)
        np.testing.assert_allclose(decoded(value), expected, rtol=rtol, atol=rtol, err_msg=name)
    assert result["loss"] == pytest.approx(nll.sum(), rel=rtol)


async def test_output_encoding_json_overrides_encoded_logits(client: httpx.AsyncClient) -> None:
    body = {
        "logits": encoded(LOGITS.astype(np.float32)),
        "labels": LABELS.tolist(),
        "reduction": "none",
        "return_grad": True,
        "output_encoding": "json",
    }
    result = await post_ok(client, CE, body)
    assert isinstance(result["per_sample"], list)
    assert isinstance(result["grad"], list)
    assert np.array(result["grad"]).shape == (3, 4)
    np.testing.assert_allclose(
        result["per_sample"], -log_softmax(LOGITS)[np.arange(3), LABELS], rtol=1e-5
    )


async def test_output_encoding_base64_overrides_json_logits(client: httpx.AsyncClient) -> None:
    body = {
        "logits": LOGITS.tolist(),
        "labels": LABELS.tolist(),
        "reduction": "none",
        "return_grad": True,
        "output_encoding": "base64",
    }
    result = await post_ok(client, CE, body)
    assert result["per_sample"]["dtype"] == "float64"
    assert result["grad"]["dtype"] == "float64"
    assert result["grad"]["shape"] == [3, 4]
    np.testing.assert_allclose(
        decoded(result["per_sample"]), -log_softmax(LOGITS)[np.arange(3), LABELS], rtol=1e-12
    )


async def test_encoded_labels_and_weight(client: httpx.AsyncClient) -> None:
    weight = np.array([0.5, 2.0, 1.0, 3.0], dtype=np.float32)
    json_body = {"logits": LOGITS.tolist(), "labels": LABELS.tolist(), "weight": weight.tolist()}
    encoded_body = {
        "logits": LOGITS.tolist(),
        "labels": encoded(LABELS.astype(np.int32)),
        "weight": encoded(weight),
    }
    from_json = await post_ok(client, CE, json_body)
    from_encoded = await post_ok(client, CE, encoded_body)
    assert from_encoded["loss"] == pytest.approx(from_json["loss"], rel=1e-12)
    assert from_encoded["weight_sum"] == pytest.approx(0.5 + 3.0 + 2.0)


@pytest.mark.parametrize(
    ("logits", "compute_dtype", "rtol"),
    [
        pytest.param(encoded(LOGITS.astype(np.float32)), "float64", 1e-12, id="float32-as-float64"),
        pytest.param(LOGITS.tolist(), "float32", 1e-6, id="json-as-float32"),
    ],
)
async def test_compute_dtype(
    client: httpx.AsyncClient, logits: object, compute_dtype: str, rtol: float
) -> None:
    body = {
        "logits": logits,
        "labels": LABELS.tolist(),
        "return_grad": True,
        "output_encoding": "base64",
        "compute_dtype": compute_dtype,
    }
    result = await post_ok(client, CE, body)
    assert result["dtype"] == compute_dtype
    assert result["grad"]["dtype"] == compute_dtype
    exact = LOGITS.astype(np.float32).astype(np.float64) if compute_dtype == "float64" else LOGITS
    expected = (np.exp(log_softmax(exact)) - one_hot(LABELS, 4)) / 3
    np.testing.assert_allclose(decoded(result["grad"]), expected, rtol=rtol, atol=rtol)


# --- cross-entropy: labels ---------------------------------------------------------------------


async def test_whole_float_labels_are_class_indices(client: httpx.AsyncClient) -> None:
    as_ints = await post_ok(client, CE, {"logits": LOGITS.tolist(), "labels": [0, 3, 1]})
    as_floats = await post_ok(client, CE, {"logits": LOGITS.tolist(), "labels": [0.0, 3.0, 1.0]})
    assert as_floats["loss"] == as_ints["loss"]
    assert as_floats["n_valid"] == 3


async def test_label_two_point_zero_is_class_two(client: httpx.AsyncClient) -> None:
    result = await post_ok(client, CE, {"logits": [[0.0, 1.0, 5.0]], "labels": [2.0]})
    assert result["loss"] == pytest.approx(-log_softmax(np.array([0.0, 1.0, 5.0]))[2])


async def test_fractional_label_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, json={"logits": [[0.0, 1.0, 5.0]], "labels": [0.5]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert [(e["pointer"], e["field"]) for e in problem["errors"]] == [("#/labels", "labels")]
    assert problem["detail"].startswith("labels:")


async def test_probability_labels(client: httpx.AsyncClient) -> None:
    targets = np.array(
        [[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25]],
    )
    body = {"logits": LOGITS.tolist(), "labels": targets.tolist(), "return_grad": True}
    result = await post_ok(client, CE, body)
    per_row = -(targets * log_softmax(LOGITS)).sum(axis=-1)
    assert result["loss"] == pytest.approx(per_row.mean(), rel=1e-12)
    assert result["weight_sum"] == 3.0  # probability targets divide by N
    np.testing.assert_allclose(
        result["grad"], (np.exp(log_softmax(LOGITS)) - targets) / 3, atol=1e-14
    )


async def test_one_hot_labels_equal_class_indices(client: httpx.AsyncClient) -> None:
    indices = await post_ok(client, CE, {"logits": LOGITS.tolist(), "labels": LABELS.tolist()})
    body = {"logits": LOGITS.tolist(), "labels": one_hot(LABELS, 4).tolist()}
    probabilities = await post_ok(client, CE, body)
    assert probabilities["loss"] == pytest.approx(indices["loss"], rel=1e-12)


# --- cross-entropy: options --------------------------------------------------------------------


async def test_weight(client: httpx.AsyncClient) -> None:
    weight = np.array([0.5, 2.0, 1.0, 3.0])
    body = {
        "logits": LOGITS.tolist(),
        "labels": LABELS.tolist(),
        "weight": weight.tolist(),
        "return_grad": True,
    }
    result = await post_ok(client, CE, body)
    w_y = weight[LABELS]
    nll = -log_softmax(LOGITS)[np.arange(3), LABELS]
    assert result["loss"] == pytest.approx((w_y * nll).sum() / w_y.sum(), rel=1e-12)
    assert result["weight_sum"] == pytest.approx(w_y.sum())
    expected = w_y[:, None] * (np.exp(log_softmax(LOGITS)) - one_hot(LABELS, 4)) / w_y.sum()
    np.testing.assert_allclose(result["grad"], expected, atol=1e-14)


async def test_ignore_index(client: httpx.AsyncClient) -> None:
    body = {
        "logits": LOGITS.tolist(),
        "labels": [0, 7, 1],
        "ignore_index": 7,
        "reduction": "none",
        "return_grad": True,
    }
    result = await post_ok(client, CE, body)
    nll = -log_softmax(LOGITS)[[0, 2], [0, 1]]
    assert result["n_valid"] == 2
    np.testing.assert_allclose(result["per_sample"], [nll[0], 0.0, nll[1]], rtol=1e-12)
    grad = np.array(result["grad"])
    assert np.all(grad[1] == 0)
    assert np.abs(grad[0]).sum() > 0


async def test_default_ignore_index_is_minus_100(client: httpx.AsyncClient) -> None:
    body = {"logits": LOGITS.tolist(), "labels": [0, -100, 1]}
    result = await post_ok(client, CE, body)
    nll = -log_softmax(LOGITS)[[0, 2], [0, 1]]
    assert result["n_valid"] == 2
    assert result["weight_sum"] == 2.0
    assert result["loss"] == pytest.approx(nll.mean(), rel=1e-12)


async def test_label_smoothing(client: httpx.AsyncClient) -> None:
    eps = 0.2
    body = {"logits": LOGITS.tolist(), "labels": LABELS.tolist(), "label_smoothing": eps}
    result = await post_ok(client, CE, body)
    logp = log_softmax(LOGITS)
    per_row = (1 - eps) * -logp[np.arange(3), LABELS] + eps * -logp.mean(axis=-1)
    assert result["loss"] == pytest.approx(per_row.mean(), rel=1e-12)


async def test_z_loss(client: httpx.AsyncClient) -> None:
    z = 1e-2
    body = {"logits": LOGITS.tolist(), "labels": LABELS.tolist(), "z_loss": z}
    result = await post_ok(client, CE, body)
    lse = np.log(np.exp(LOGITS).sum(axis=-1))
    per_row = -log_softmax(LOGITS)[np.arange(3), LABELS] + z * lse**2
    assert result["loss"] == pytest.approx(per_row.mean(), rel=1e-12)


# --- cross-entropy: edge cases -----------------------------------------------------------------


async def test_all_labels_ignored_gives_zero(client: httpx.AsyncClient) -> None:
    body = {"logits": LOGITS.tolist(), "labels": [-100, -100, -100], "return_grad": True}
    result = await post_ok(client, CE, body)
    assert result["loss"] == 0.0
    assert result["n_valid"] == 0
    assert result["weight_sum"] == 0.0
    grad = np.array(result["grad"])
    assert grad.shape == (3, 4)
    assert np.all(grad == 0)


async def test_empty_nan_gives_null_loss(client: httpx.AsyncClient) -> None:
    body = {
        "logits": LOGITS.tolist(),
        "labels": [-100, -100, -100],
        "empty": "nan",
        "return_grad": True,
    }
    response = await client.post(CE, json=body)
    assert response.status_code == 200
    assert '"loss":null' in response.text  # not the invalid JSON token NaN
    result = response.json()
    assert result["loss"] is None
    assert result["n_valid"] == 0
    assert np.all(np.array(result["grad"]) == 0)


async def test_empty_batch_in_encoded_form(client: httpx.AsyncClient) -> None:
    body = {
        "logits": encoded(np.zeros((0, 3), dtype=np.float32)),
        "labels": encoded(np.zeros((0,), dtype=np.int64)),
        "return_grad": True,
    }
    result = await post_ok(client, CE, body)
    assert result["loss"] == 0.0
    assert result["n_valid"] == 0
    assert result["grad"]["shape"] == [0, 3]


async def test_neg_inf_logit_on_non_target_class_is_finite(client: httpx.AsyncClient) -> None:
    logits = np.array([[1.0, -np.inf, 0.0], [-np.inf, 2.0, 0.5]], dtype=np.float32)
    body = {
        "logits": encoded(logits),
        "labels": [0, 2],
        "reduction": "none",
        "return_grad": True,
        "output_encoding": "json",
    }
    result = await post_ok(client, CE, body)
    finite = [np.array([1.0, 0.0]), np.array([2.0, 0.5])]
    expected = [-log_softmax(finite[0])[0], -log_softmax(finite[1])[1]]
    assert math.isfinite(result["loss"])
    np.testing.assert_allclose(result["per_sample"], expected, rtol=1e-6)
    grad = np.array(result["grad"])
    assert np.all(np.isfinite(grad))
    assert grad[0, 1] == 0.0
    assert grad[1, 0] == 0.0


# --- binary cross-entropy ----------------------------------------------------------------------


BCE_LOGITS = np.array([[1.5, -0.5, 3.0], [-2.0, 0.0, 0.25]])
BCE_TARGETS = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 1.0]])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
async def test_binary_cross_entropy_matches_numpy(
    client: httpx.AsyncClient, reduction: str
) -> None:
    body = {
        "logits": BCE_LOGITS.tolist(),
        "labels": BCE_TARGETS.tolist(),
        "reduction": reduction,
        "return_grad": True,
    }
    result = await post_ok(client, BCE, body)
    x, y = BCE_LOGITS, BCE_TARGETS
    per_element = y * softplus(-x) + (1 - y) * softplus(x)
    scale = 1 / 6 if reduction == "mean" else 1.0
    assert result["name"] == "binary-cross-entropy"
    assert result["loss"] == pytest.approx(per_element.sum() * scale, rel=1e-12)
    assert result["n_valid"] == 6
    assert result["weight_sum"] == 6.0
    assert result["dtype"] == "float64"
    np.testing.assert_allclose(result["grad"], (sigmoid(x) - y) * scale, atol=1e-14)
    if reduction == "none":
        np.testing.assert_allclose(result["per_sample"], per_element, rtol=1e-12)
    else:
        assert result["per_sample"] is None


async def test_binary_cross_entropy_weight_and_pos_weight(client: httpx.AsyncClient) -> None:
    weight = np.array([[1.0], [0.5]])  # broadcasts over columns
    pos_weight = np.array([2.0, 1.0, 3.0])
    body = {
        "logits": BCE_LOGITS.tolist(),
        "labels": BCE_TARGETS.tolist(),
        "weight": weight.tolist(),
        "pos_weight": pos_weight.tolist(),
        "return_grad": True,
    }
    result = await post_ok(client, BCE, body)
    x, y = BCE_LOGITS, BCE_TARGETS
    per_element = weight * (pos_weight * y * softplus(-x) + (1 - y) * softplus(x))
    grad = weight * (sigmoid(x) * (pos_weight * y + 1 - y) - pos_weight * y)
    assert result["loss"] == pytest.approx(per_element.mean(), rel=1e-12)
    np.testing.assert_allclose(result["grad"], grad / 6, atol=1e-14)


async def test_binary_cross_entropy_encoded(client: httpx.AsyncClient) -> None:
    body = {
        "logits": encoded(BCE_LOGITS.astype(np.float32)),
        "labels": encoded(BCE_TARGETS.astype(np.float32)),
        "reduction": "none",
        "return_grad": True,
    }
    result = await post_ok(client, BCE, body)
    assert result["dtype"] == "float32"
    assert result["per_sample"]["dtype"] == "float32"
    assert result["per_sample"]["shape"] == [2, 3]
    assert result["grad"]["shape"] == [2, 3]
    x = BCE_LOGITS.astype(np.float32).astype(np.float64)
    y = BCE_TARGETS.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(
        decoded(result["per_sample"]), y * softplus(-x) + (1 - y) * softplus(x), rtol=1e-5
    )
    np.testing.assert_allclose(decoded(result["grad"]), sigmoid(x) - y, atol=1e-6)
