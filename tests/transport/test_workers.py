"""`loss-service serve --workers N`: N processes answer on one port."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.live_server import serving

pytestmark = pytest.mark.system


def test_two_workers_share_the_port(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serving(log, LOSS_SERVICE_WORKERS="2") as (base_url, _):
        deadline = time.monotonic() + 90  # both have warmed up (a bound against hangs only)
        while log.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)

        def answering_process(_: int) -> float:
            # A fresh connection each time, several at once: while one worker is busy the
            # other accepts.
            with httpx.Client(base_url=base_url, timeout=60) as client:
                body = {"logits": [[0.0] * 1000] * 256, "labels": [1] * 256}
                assert client.post("/v1/losses/cross-entropy", json=body).status_code == 200
                return _process_start_time(client)

        with ThreadPoolExecutor(8) as pool:
            processes = set(pool.map(answering_process, range(64)))
    assert len(processes) == 2, processes


def _process_start_time(client: httpx.Client) -> float:
    """Which process answered: its start time in /metrics (each worker has its own)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("process_start_time_seconds"):
            return float(line.split()[-1])
    raise AssertionError("no process_start_time_seconds in /metrics")
