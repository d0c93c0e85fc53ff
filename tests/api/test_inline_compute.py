"""A loss on a small body computes on the event loop, without a worker thread's hand-off; larger
bodies, bodies of unknown length, pairwise losses and `inline_compute_bytes = 0` still go to the
worker threads. Either way the request takes a compute slot, is held to the element limits,
answers its errors as problem+json and is counted in the metrics."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.core.registry import BY_NAME
from tests.api.test_observability import scrape, value

pytestmark = pytest.mark.anyio

ClientFactory = Callable[..., Any]  # the `make_client` fixture
CE = "/v1/losses/cross-entropy"
JSON = {"Content-Type": "application/json"}
SMALL = {"logits": [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], "labels": [1, 2]}
# 3000 x 2 logits: ~60 kB of JSON, past the default inline_compute_bytes (16 KiB)
LARGE = {"logits": np.ones((3000, 2)).tolist(), "labels": [0] * 3000}


class Threads:
    """The threads a loss's engine function was called on, by the loss's name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: dict[str, list[int]] = {}
        self._monkeypatch = monkeypatch

    def watch(self, name: str) -> None:
        original = BY_NAME[name].function

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.seen.setdefault(name, []).append(threading.get_ident())
            return original(*args, **kwargs)

        spec = dataclasses.replace(BY_NAME[name], function=recorded)
        self._monkeypatch.setitem(BY_NAME, name, spec)


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Threads]:
    found = Threads(monkeypatch)
    found.watch("cross-entropy")
    found.watch("info-nce")
    yield found


async def test_a_small_body_computes_on_the_event_loop(
    client: httpx.AsyncClient, threads: Threads
) -> None:
    response = await client.post(CE, json=SMALL)
    assert response.status_code == 200, response.text
    assert threads.seen["cross-entropy"] == [threading.get_ident()]


async def test_a_large_body_computes_on_a_worker_thread(
    client: httpx.AsyncClient, threads: Threads
) -> None:
    response = await client.post(CE, json=LARGE)
    assert response.status_code == 200, response.text
    assert threads.seen["cross-entropy"] != [threading.get_ident()]


async def test_the_bound_is_a_setting_and_zero_turns_it_off(
    make_client: ClientFactory, threads: Threads
) -> None:
    body = json.dumps(SMALL).encode()
    async with make_client(inline_compute_bytes=len(body) - 1) as client:
        assert (await client.post(CE, content=body, headers=JSON)).status_code == 200
    async with make_client(inline_compute_bytes=0) as client:
        assert (await client.post(CE, content=body, headers=JSON)).status_code == 200
    async with make_client(inline_compute_bytes=len(body)) as client:
        assert (await client.post(CE, content=body, headers=JSON)).status_code == 200
    here = threading.get_ident()
    assert [ident == here for ident in threads.seen["cross-entropy"]] == [False, False, True]


async def test_a_body_of_unknown_length_computes_on_a_worker_thread(
    client: httpx.AsyncClient, threads: Threads
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(SMALL).encode()

    response = await client.post(CE, content=chunks(), headers=JSON)
    assert response.status_code == 200, response.text
    assert threads.seen["cross-entropy"] != [threading.get_ident()]


async def test_a_pairwise_loss_computes_on_a_worker_thread_whatever_its_size(
    client: httpx.AsyncClient, threads: Threads
) -> None:
    """Every query against every key: a few kB of base64 can be a 1000 x 1000 matrix."""
    body = {"query": [[1.0, 0.0], [0.0, 1.0]], "keys": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1]}
    response = await client.post("/v1/losses/info-nce", json=body)
    assert response.status_code == 200, response.text
    assert threads.seen["info-nce"] != [threading.get_ident()]


async def test_a_small_inference_request_computes_on_the_event_loop(
    client: httpx.AsyncClient, threads: Threads
) -> None:
    logits = np.zeros((3, 2), dtype=np.float32).tobytes()
    labels = np.zeros(3, dtype=np.int64).tobytes()
    inputs = [
        ("logits", [3, 2], "FP32", logits),
        ("labels", [3], "INT64", labels),
    ]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for name, shape, datatype, raw in inputs
            ]
        }
    ).encode()
    response = await client.post(
        "/v2/models/cross-entropy/infer",
        content=header + logits + labels,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert threads.seen["cross-entropy"] == [threading.get_ident()]


async def test_a_small_request_is_counted_in_the_metrics(
    client: httpx.AsyncClient, threads: Threads
) -> None:
    assert (await client.post(CE, json=SMALL)).status_code == 200
    assert threads.seen["cross-entropy"] == [threading.get_ident()]
    found = await scrape(client)
    labels = {"method": "POST", "route": CE, "status": "200"}
    assert value(found, "loss_service_requests_total", **labels) == 1
    assert value(found, "loss_service_request_duration_seconds_count", **labels) == 1
    assert value(found, "loss_service_elements_processed_total", route=CE) == 8


async def test_a_small_request_is_held_to_the_element_limits(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_elements=4) as client:
        response = await client.post(CE, json=SMALL)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"].startswith("logits")
        found = await scrape(client)
    assert value(found, "loss_service_requests_total", method="POST", route=CE, status="413") == 1
    async with make_client(max_request_elements=7) as client:
        response = await client.post(CE, json=SMALL)
        assert response.status_code == 413
        assert "over the limit of 7 elements per request" in response.json()["detail"]


async def test_a_small_request_waits_for_a_compute_slot(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the one slot held by a large computation (on its worker thread), a small request
    queues for it as any other: 503 once `queue_timeout_s` has passed."""
    release = threading.Event()
    entered = threading.Event()
    original = BY_NAME["cross-entropy"].function
    event_loop = threading.get_ident()

    def held(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != event_loop:  # the large one; the small one must not get here
            entered.set()
            release.wait(10)
        return original(*args, **kwargs)

    spec = dataclasses.replace(BY_NAME["cross-entropy"], function=held)
    monkeypatch.setitem(BY_NAME, "cross-entropy", spec)
    async with (
        make_client(max_concurrent=1, queue_timeout_s=0.1) as client,
        anyio.create_task_group() as tasks,
    ):
        large: list[httpx.Response] = []

        async def hold_the_slot() -> None:
            large.append(await client.post(CE, json=LARGE))

        tasks.start_soon(hold_the_slot)
        with anyio.fail_after(10):
            while not entered.is_set():
                await anyio.sleep(0.01)
        response = await client.post(CE, json=SMALL)
        release.set()
    assert response.status_code == 503, response.text
    assert response.json()["type"].endswith("overloaded")
    assert large[0].status_code == 200, large[0].text
