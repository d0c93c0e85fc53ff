"""The run routes over HTTP, on SQLite and PostgreSQL: the lifecycle, idempotent batches in every
body form, errors naming the field, and the report equal to the stateless routes' on the
concatenation of the batches."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import pytest

from tests.conftest import AsyncClientContext
from tests.helpers import encoded

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(11)
LOSSES = [
    {"name": "cross-entropy", "label_smoothing": 0.05},
    {"name": "focal", "gamma": 1.5, "reduction": "sum"},
]
CALIBRATION = {"n_bins": 10, "top_k": [2]}


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncClientContext(database_url=db_url) as http:
        yield http


def batch(n: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """float64 logits: the JSON form reads numbers as float64, and the comparison with the
    stateless routes needs every batch in the dtype of their concatenation."""
    logits = RNG.standard_normal((n, classes)) * 2
    labels = RNG.integers(0, classes, n)
    labels[RNG.random(n) < 0.1] = -100
    return logits, labels


def binary_body(logits: np.ndarray, labels: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The batch as an Open Inference Protocol binary body (Triton's extension)."""
    header = {
        "inputs": [
            {
                "name": "logits",
                "shape": list(logits.shape),
                "datatype": "FP64",
                "parameters": {"binary_data_size": logits.nbytes},
            },
            {
                "name": "labels",
                "shape": list(labels.shape),
                "datatype": "INT64",
                "parameters": {"binary_data_size": labels.nbytes},
            },
        ]
    }
    head = json.dumps(header).encode()
    return head + logits.tobytes() + labels.astype("<i8").tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


async def create(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    body = {"name": "nightly", "metadata": {"model": "r50"}, "losses": LOSSES}
    body.update(spec)
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/v1/runs/{run['id']}"
    return run


async def put(
    client: httpx.AsyncClient, run_id: str, batch_id: str, logits: np.ndarray, labels: np.ndarray
) -> httpx.Response:
    body = {"logits": encoded(logits), "labels": encoded(labels)}
    return await client.put(f"/v1/runs/{run_id}/batches/{batch_id}", json=body)


def assert_close(actual: Any, expected: Any, path: str = "") -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            assert_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-12), (path, actual)
    else:
        assert actual == expected, path


async def test_a_run_from_create_to_delete(client: httpx.AsyncClient) -> None:
    run = await create(client, calibration=CALIBRATION)
    assert run["status"] == "open"
    assert run["n_batches"] == 0 and run["calibration"] is None
    assert uuid.UUID(run["id"])
    assert [entry["name"] for entry in run["spec"]["losses"]] == ["cross-entropy", "focal"]
    pieces = [batch(n) for n in (7, 1, 12)]

    # JSON lists, base64, and the OIP binary body; the second batch sent twice.
    first = await client.put(
        f"/v1/runs/{run['id']}/batches/a",
        json={"logits": pieces[0][0].tolist(), "labels": pieces[0][1].tolist()},
    )
    assert first.status_code == 201, first.text
    assert first.json()["duplicate"] is False
    second = await put(client, run["id"], "b", *pieces[1])
    assert second.status_code == 201
    again = await put(client, run["id"], "b", *pieces[1])
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    content, headers = binary_body(*pieces[2])
    third = await client.put(f"/v1/runs/{run['id']}/batches/c", content=content, headers=headers)
    assert third.status_code == 201, third.text

    report = (await client.get(f"/v1/runs/{run['id']}")).json()
    assert report["n_batches"] == 3
    assert report["n_samples"] == 20
    logits = np.concatenate([p[0] for p in pieces])
    labels = np.concatenate([p[1] for p in pieces])
    whole = await client.post(
        "/v1/evaluate",
        json={"logits": logits.tolist(), "labels": labels.tolist(), "losses": LOSSES},
    )
    for total, expected in zip(report["losses"], whole.json()["losses"], strict=True):
        assert total["name"] == expected["name"]
        assert total["n_valid"] == expected["n_valid"]
        assert math.isclose(total["loss"], expected["loss"], rel_tol=1e-12)
        assert math.isclose(total["weight_sum"], expected["weight_sum"], rel_tol=1e-12)
    kept = labels != -100
    calibration = await client.post(
        "/v1/calibration",
        json={"logits": logits[kept].tolist(), "labels": labels[kept].tolist(), **CALIBRATION},
    )
    assert_close(report["calibration"], calibration.json())

    listed = (await client.get("/v1/runs")).json()
    assert [r["id"] for r in listed["runs"]] == [run["id"]]

    closed = await client.post(f"/v1/runs/{run['id']}/close")
    assert closed.json()["status"] == "closed"
    late = await put(client, run["id"], "d", *batch(3))
    assert late.status_code == 409
    assert late.headers["content-type"] == "application/problem+json"

    assert (await client.delete(f"/v1/runs/{run['id']}")).status_code == 204
    gone = await client.get(f"/v1/runs/{run['id']}")
    assert gone.status_code == 404
    assert gone.json()["type"] == "urn:loss-service:problem:not-found"


async def test_other_tensors_under_a_used_batch_id_are_a_conflict(
    client: httpx.AsyncClient,
) -> None:
    run = await create(client)
    logits, labels = batch(5)
    assert (await put(client, run["id"], "k1", logits, labels)).status_code == 201
    changed = logits.copy()
    changed[0, 0] += 1
    conflict = await put(client, run["id"], "k1", changed, labels)
    assert conflict.status_code == 409
    assert "batch_id" in conflict.json()["detail"]
    report = (await client.get(f"/v1/runs/{run['id']}")).json()
    assert report["n_batches"] == 1 and report["n_samples"] == 5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
async def test_a_bfloat16_batch_is_counted_not_a_500(client: httpx.AsyncClient, dtype: str) -> None:
    """The digest hashed the tensors' buffer, which ml_dtypes' bfloat16 does not export."""
    run = await create(client, calibration=CALIBRATION)
    logits, labels = batch(6)
    body = {"logits": encoded(logits.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype))}
    response = await client.put(
        f"/v1/runs/{run['id']}/batches/half", json={**body, "labels": encoded(labels)}
    )
    assert response.status_code == 201, response.text
    assert (await client.get(f"/v1/runs/{run['id']}")).json()["n_samples"] == 6


async def test_a_counted_batch_can_be_looked_up(client: httpx.AsyncClient) -> None:
    run = await create(client)
    receipt = (await put(client, run["id"], "k1", *batch(5))).json()
    stored = await client.get(f"/v1/runs/{run['id']}/batches/k1")
    assert stored.status_code == 200, stored.text
    body = stored.json()
    assert body["digest"] == receipt["digest"]
    assert (body["run_id"], body["batch_id"], body["n_samples"]) == (run["id"], "k1", 5)
    report = (await client.get(f"/v1/runs/{run['id']}")).json()
    assert body["created_at"] == report["updated_at"]
    missing = await client.get(f"/v1/runs/{run['id']}/batches/k2")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["errors"][0]["field"] == "batch_id"
    no_run = await client.get(f"/v1/runs/{uuid.uuid4()}/batches/k1")
    assert no_run.status_code == 404
    assert (await client.get(f"/v1/runs/{run['id']}/batches/a%20b")).status_code == 422


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"calibration": {"binning": "quantile"}}, "calibration.binning"),
        ({"calibration": {"fit_temperature": True}}, "calibration.fit_temperature"),
        ({"calibration": {"n_bootstrap": 10}}, "calibration.n_bootstrap"),
        ({"calibration": {"smooth_ece": True}}, "calibration.smooth_ece"),
        ({"losses": [{"name": "cross-entropy", "return_grad": True}]}, "losses[0].cross-entropy"),
        ({"losses": [{"name": "no-such-loss"}]}, "losses[0]"),
        ({"losses": [{"name": "cross-entropy", "weight": [1.0, -1.0]}]}, "losses[0].weight"),
        ({"losses": []}, "losses"),
    ],
)
async def test_options_that_cannot_merge_exactly_are_refused_naming_the_field(
    client: httpx.AsyncClient, spec: dict[str, Any], field: str
) -> None:
    body = {"losses": LOSSES, **spec}
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert any(error["field"].startswith(field) for error in problem["errors"]), problem


async def test_batches_that_do_not_fit_the_run_are_refused_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    run = await create(client, calibration=CALIBRATION)
    assert (await put(client, run["id"], "four", *batch(4, classes=4))).status_code == 201
    other = await put(client, run["id"], "five", *batch(4, classes=5))
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "logits"
    out_of_range = await put(client, run["id"], "range", np.zeros((2, 4)), np.array([0, 9]))
    assert out_of_range.status_code == 422
    assert out_of_range.json()["errors"][0]["field"] == "labels"
    bad_id = await put(client, run["id"], "a b", *batch(2))
    assert bad_id.status_code == 422
    unknown = await put(client, str(uuid.uuid4()), "x", *batch(2))
    assert unknown.status_code == 404
    wrong_type = await client.put(
        f"/v1/runs/{run['id']}/batches/t", content=b"logits", headers={"Content-Type": "text/csv"}
    )
    assert wrong_type.status_code == 422
    not_json = await client.put(
        f"/v1/runs/{run['id']}/batches/t",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    report = (await client.get(f"/v1/runs/{run['id']}")).json()
    assert report["n_batches"] == 1  # none of the refused batches counted


async def test_the_list_is_newest_first_in_pages(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, name=f"run-{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/runs", params=params)).json()
        seen += [run["id"] for run in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    bad = await client.get("/v1/runs", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422


async def test_the_reliability_diagram_of_a_run(client: httpx.AsyncClient) -> None:
    run = await create(client, calibration=CALIBRATION)
    none_yet = await client.get(f"/v1/runs/{run['id']}/reliability-diagram")
    assert none_yet.status_code == 404
    await put(client, run["id"], "one", *batch(30))
    png = await client.get(f"/v1/runs/{run['id']}/reliability-diagram")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    svg = await client.get(f"/v1/runs/{run['id']}/reliability-diagram", params={"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    no_calibration = await create(client)
    assert (
        await client.get(f"/v1/runs/{no_calibration['id']}/reliability-diagram")
    ).status_code == 404


async def test_run_routes_require_a_key_when_keys_are_configured(db_url: str) -> None:
    async with AsyncClientContext(database_url=db_url, api_keys=["k"]) as client:
        assert (await client.get("/v1/runs")).status_code == 401
        keyed = await client.get("/v1/runs", headers={"X-API-Key": "k"})
        assert keyed.status_code == 200


async def test_a_replay_after_close_answers_what_the_first_call_did(
    client: httpx.AsyncClient,
) -> None:
    """A client whose answer was lost while the run was being closed retries: its batch was
    counted, so the retry is a duplicate, not a conflict; a batch never sent is refused."""
    run = await create(client)
    logits, labels = batch(6)
    assert (await put(client, run["id"], "sent", logits, labels)).status_code == 201
    await client.post(f"/v1/runs/{run['id']}/close")
    replay = await put(client, run["id"], "sent", logits, labels)
    assert replay.status_code == 200, replay.text
    assert replay.json()["duplicate"] is True
    assert (await put(client, run["id"], "new", logits, labels)).status_code == 409
    changed = await put(client, run["id"], "sent", logits + 1, labels)
    assert changed.status_code == 409
