"""Work proportional to a request's body never runs on the event loop, and a figure waiting to
be drawn holds no compute slot: while they run, others are answered at once (`/healthz`, a
loss). Each test holds the slow part open with an event and asks meanwhile; the waits only
guard against a hang."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.api import routing
from service.codecs import loads_json
from service.core import calibration as calibration_core
from service.plots import reliability_diagram
from tests.api.held import Held

pytestmark = pytest.mark.anyio

ClientFactory = Any  # the `make_client` fixture


async def _healthz_while_held(
    client: httpx.AsyncClient, held: Held, request: Any, count: int = 1
) -> None:
    """`count` requests run until `held` is entered; /healthz must answer before `held`
    returns, and every request in the end."""
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await request())

    async with anyio.create_task_group() as tasks:
        for _ in range(count):
            tasks.start_soon(send)
        await held.wait_entered()
        probe = await client.get("/healthz")
        left_first = held.left.is_set()
        held.release()
    assert probe.status_code == 200
    assert not left_first, "/healthz was answered only once the held step had returned"
    assert [answer.status_code for answer in answers] == [200] * count, answers[0].text


@pytest.mark.slow
async def test_a_large_json_body_is_parsed_off_the_event_loop(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: 16 concurrent 35 MB nested-JSON bodies stalled /healthz for 4-11 s, each
    parsed by orjson on the event loop. Four bodies here, their first parse held."""
    held = Held(loads_json)
    monkeypatch.setattr(routing, "loads_json", held)
    rows = 50_000  # 600 kB of JSON
    body = {"logits": np.zeros((rows, 2)).tolist(), "labels": [0] * rows}
    async with make_client() as client:
        await _healthz_while_held(
            client, held, lambda: client.post("/v1/losses/cross-entropy", json=body), count=4
        )


async def test_a_diagram_waiting_to_be_drawn_holds_no_compute_slot(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: reliability diagrams waited for the drawing lock in compute slots; ten of
    them held every slot, and a one-element loss waited 19-26 s. While a figure is drawn (held
    here), the one compute slot answers a loss."""
    held = Held(reliability_diagram)
    monkeypatch.setattr(calibration_core, "reliability_diagram", held)
    body = {"probs": [0.2, 0.9, 0.6], "labels": [0, 1, 1]}
    async with make_client(max_concurrent=1, queue_timeout_s=60) as client:
        answers: list[httpx.Response] = []

        async def draw() -> None:
            answers.append(await client.post("/v1/calibration/reliability-diagram", json=body))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(draw)
            await held.wait_entered()
            loss = await client.post(
                "/v1/losses/cross-entropy", json={"logits": [[0.0, 1.0]], "labels": [1]}
            )
            left_first = held.left.is_set()
            held.release()
    assert loss.status_code == 200, loss.text
    assert not left_first, "the loss waited for the drawing to end"
    assert answers[0].status_code == 200
    assert answers[0].headers["content-type"] == "image/png"
