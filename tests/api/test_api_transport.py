"""What travels: gradients in a requested dtype, strict JSON, and base64 both ways."""

from __future__ import annotations

from typing import Any

import httpx
import ml_dtypes
import numpy as np
import orjson
import pytest

from tests.helpers import decoded, encoded

pytestmark = pytest.mark.anyio

CE = "/v1/losses/cross-entropy"
RNG = np.random.default_rng(2)
LOGITS = RNG.normal(size=(4, 6)) * 3
LABELS = [0, 5, 2, 3]


@pytest.mark.parametrize(
    ("wire", "dtype", "grad_dtype", "expected"),
    [
        ("float16", np.float16, "input", "float16"),
        ("bfloat16", ml_dtypes.bfloat16, "input", "bfloat16"),
        ("float16", np.float16, None, "float32"),
        ("float32", np.float32, "float64", "float64"),
        ("float64", np.float64, "float32", "float32"),
    ],
)
async def test_grad_dtype(
    client: httpx.AsyncClient, wire: str, dtype: Any, grad_dtype: str | None, expected: str
) -> None:
    logits = LOGITS.astype(dtype)
    body = {"logits": {**encoded(logits), "dtype": wire}, "labels": LABELS, "return_grad": True}
    reference = await client.post(CE, json=body)
    response = await client.post(CE, json={**body, "grad_dtype": grad_dtype})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["grad"]["dtype"] == expected
    # The compute dtype is unchanged; only the returned gradient is cast.
    assert result["dtype"] == reference.json()["dtype"]
    assert result["loss"] == reference.json()["loss"]
    full = decoded(reference.json()["grad"]).astype(np.float64)
    np.testing.assert_array_equal(
        decoded(result["grad"]), full.astype(decoded(result["grad"]).dtype)
    )


async def test_grad_dtype_input_on_json_logits_is_float64(client: httpx.AsyncClient) -> None:
    body = {"logits": LOGITS.tolist(), "labels": LABELS, "return_grad": True, "grad_dtype": "input"}
    response = await client.post(CE, json={**body, "output_encoding": "base64"})
    assert response.json()["grad"]["dtype"] == "float64"


async def test_unknown_grad_dtype_is_422(client: httpx.AsyncClient) -> None:
    body = {"logits": LOGITS.tolist(), "labels": LABELS, "grad_dtype": "int8"}
    response = await client.post(CE, json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "grad_dtype"


async def test_base64_output_round_trips_exactly(client: httpx.AsyncClient) -> None:
    logits = LOGITS.astype(np.float32)
    body = {"logits": encoded(logits), "labels": LABELS, "return_grad": True}
    as_json = await client.post(CE, json={**body, "output_encoding": "json"})
    as_base64 = await client.post(CE, json=body)
    np.testing.assert_array_equal(
        decoded(as_base64.json()["grad"]), np.array(as_json.json()["grad"], dtype=np.float32)
    )


async def test_deeply_nested_json_is_422_not_a_crash(client: httpx.AsyncClient) -> None:
    raw = '{"logits": ' + "[" * 5000 + "]" * 5000 + ', "labels": [0]}'
    response = await client.post(CE, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


# --- large bodies: one buffer in, pieces out (service.api.request_body, service.codecs) --------

BIG = RNG.normal(size=(300, 1000)).astype(np.float32)  # 1.2 MB raw, 1.6 MB of base64
BIG_LABELS = RNG.integers(0, 1000, size=300)


async def test_large_base64_body_equals_the_json_form(client: httpx.AsyncClient) -> None:
    body = {"logits": encoded(BIG), "labels": BIG_LABELS.tolist(), "return_grad": True}
    large = await client.post(CE, json=body)
    assert large.status_code == 200, large.text
    assert int(large.headers["content-length"]) == len(large.content)
    listed = await client.post(CE, json={**body, "logits": BIG.tolist()})
    assert listed.status_code == 200, listed.text
    # float32 logits in JSON lists arrive as float64: the same numbers within float32 rounding
    assert large.json()["loss"] == pytest.approx(listed.json()["loss"], rel=1e-6)
    np.testing.assert_allclose(
        decoded(large.json()["grad"]), listed.json()["grad"], rtol=1e-5, atol=1e-9
    )


async def test_large_base64_body_with_bad_data_names_the_field(
    client: httpx.AsyncClient,
) -> None:
    logits = encoded(BIG)
    logits["data"] = logits["data"][:-8] + "!" * 8
    response = await client.post(CE, json={"logits": logits, "labels": BIG_LABELS.tolist()})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "logits.data"


@pytest.mark.parametrize("declared_offset", [-1, 1])
async def test_a_body_that_does_not_match_its_content_length_is_refused(
    client: httpx.AsyncClient, declared_offset: int
) -> None:
    """An HTTP server frames bodies by Content-Length; an ASGI caller need not."""
    body = orjson.dumps({"logits": encoded(BIG), "labels": BIG_LABELS.tolist()})
    response = await client.post(
        CE,
        content=body,
        headers={
            "content-type": "application/json",
            "content-length": str(len(body) + declared_offset),
        },
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("depth", [900, 1000])
async def test_deep_nesting_beside_a_large_tensor_is_422_not_a_crash(
    client: httpx.AsyncClient, depth: int
) -> None:
    """Within orjson's nesting limit, past Python's recursion limit, with a string lifted."""
    logits = encoded(BIG)
    deep = "[" * depth + "]" * depth
    raw = orjson.dumps({"logits": logits, "labels": BIG_LABELS.tolist()})[:-1]
    raw += f', "weight": {deep}}}'.encode()
    response = await client.post(CE, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "weight"  # parsed: the body was read
