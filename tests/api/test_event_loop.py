"""Work proportional to a request's body never runs on the event loop: while it runs, the loop
answers others (`/healthz`) at once. Each test holds the slow part open with an event and asks
for `/healthz` meanwhile; the waits only guard against a hang."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from service.api import routing

pytestmark = pytest.mark.anyio

ClientFactory = Any  # the `make_client` fixture
GUARD_S = 10.0  # how long a held step waits before it goes on by itself: a hang, not a delay


class Held:
    """Wraps a function so that each call waits until `release()`: `entered` says a call is in,
    `left` that one has returned."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.entered = threading.Event()
        self.left = threading.Event()
        self._release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self._release.wait(GUARD_S)
        try:
            return self.function(*args, **kwargs)
        finally:
            self.left.set()

    def release(self) -> None:
        self._release.set()

    async def wait_entered(self) -> None:
        with anyio.fail_after(GUARD_S * 2):
            while not self.entered.is_set():
                await anyio.sleep(0.005)


async def _healthz_while_held(client: httpx.AsyncClient, held: Held, request: Any) -> None:
    """`request()` runs until `held` is entered; /healthz must answer before `held` returns."""
    answers: list[httpx.Response] = []

    async def send() -> None:
        answers.append(await request())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(send)
        await held.wait_entered()
        probe = await client.get("/healthz")
        left_first = held.left.is_set()
        held.release()
    assert probe.status_code == 200
    assert not left_first, "/healthz was answered only once the held step had returned"
    assert answers[0].status_code == 200, answers[0].text


async def test_a_large_json_body_is_parsed_off_the_event_loop(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: 16 concurrent 35 MB nested-JSON bodies stalled /healthz for 4-11 s, each
    parsed by orjson on the event loop."""
    held = Held(routing.loads_json)
    monkeypatch.setattr(routing, "loads_json", held)
    rows = 50_000  # 600 kB of JSON
    body = {"logits": np.zeros((rows, 2)).tolist(), "labels": [0] * rows}
    async with make_client() as client:
        await _healthz_while_held(
            client, held, lambda: client.post("/v1/losses/cross-entropy", json=body)
        )
