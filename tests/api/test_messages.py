"""Error messages echo a client's values only in a bounded form, and formatting one never fails:
every bad input gets its 4xx, never a 500 from the message itself."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.api.problems import MAX_DETAIL_CHARS, MAX_FIELD_ERRORS
from service.errors import SHOWN_CHARS, shown

pytestmark = pytest.mark.anyio

ClientFactory = Any  # the `make_client` fixture
INFER = "/v2/models/cross-entropy/infer"
CE = "/v1/losses/cross-entropy"
DEEP = "[" * 1000 + "0" + "]" * 1000  # orjson's limit is 1024 levels; repr's is Python's 1000


def _oip_body(binary_data_size: str) -> str:
    return (
        '{"inputs": [{"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [1, 2], '
        f'"parameters": {{"binary_data_size": {binary_data_size}}}}}, '
        '{"name": "labels", "shape": [1], "datatype": "INT64", "data": [0]}]}'
    )


def _deep(levels: int) -> object:
    value: object = 0
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        _deep(5000),
        {"k": _deep(5000)},
        10**6000,  # str() refuses integers past 4300 digits
        "x" * 10**6,
        [1.5] * 10**5,
        {str(i): i for i in range(10**4)},
        object(),
    ],
    ids=["deep-list", "deep-dict", "huge-int", "long-string", "long-list", "wide-dict", "object"],
)
def test_shown_is_bounded_and_never_raises(value: object) -> None:
    text = shown(value)
    assert 0 < len(text) <= SHOWN_CHARS


def test_shown_reads_like_repr_for_small_values() -> None:
    assert shown("binary") == "'binary'"
    assert shown([1, 2.5, None, True]) == "[1, 2.5, None, True]"
    assert shown({"a": [1, {"b": 2}]}) == "{'a': [1, {...}]}"


async def test_a_deeply_nested_parameter_is_a_400_not_a_500(client: httpx.AsyncClient) -> None:
    """Regression: formatting the message about `binary_data_size` raised RecursionError."""
    response = await client.post(INFER, content=_oip_body(DEEP))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "inputs.0.parameters.binary_data_size" in error
    assert len(error) < 300


async def test_a_long_parameter_is_echoed_in_part(client: httpx.AsyncClient) -> None:
    response = await client.post(INFER, content=_oip_body('"' + "9" * 10**6 + '"'))
    assert response.status_code == 400, response.text
    assert len(response.json()["error"]) < 300


async def test_a_huge_unknown_field_name_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    body = {"logits": [[0.0, 1.0]], "labels": [0], "k" * 10**6: 1}
    response = await client.post(CE, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert len(problem["detail"]) <= MAX_DETAIL_CHARS
    assert all(len(error["field"]) <= MAX_DETAIL_CHARS for error in problem["errors"])
    assert len(response.content) < 5 * MAX_DETAIL_CHARS


async def test_many_invalid_items_are_listed_up_to_a_bound(client: httpx.AsyncClient) -> None:
    body = {"logits": [[0.0, 1.0]], "labels": [0], **{f"unknown_{i}": i for i in range(5000)}}
    response = await client.post(CE, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert len(problem["errors"]) == MAX_FIELD_ERRORS
    assert problem["detail"].endswith("...") or "more" in problem["detail"]


async def test_a_gradient_past_float16s_range_is_refused_not_inf(client: httpx.AsyncClient) -> None:
    """Regression (found by the fuzz test): a float16 gradient of 2e6 came back as inf."""
    body = {
        "predictions": [1e6, 0.0],
        "targets": [0.0, 0.0],
        "reduction": "sum",
        "return_grad": True,
        "grad_dtype": "float16",
    }
    response = await client.post("/v1/losses/mse", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "grad_dtype"
    body["grad_dtype"] = "float32"
    assert (await client.post("/v1/losses/mse", json=body)).json()["grads"]["predictions"] == [
        2e6,
        0.0,
    ]
