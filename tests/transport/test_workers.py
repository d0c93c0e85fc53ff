"""`loss-service serve --workers N`: N processes, each with the app started, on one port."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil
import pytest

from tests.live_server import serving

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_two_workers_listen_on_the_port(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serving(log, LOSS_SERVICE_WORKERS="2") as (base_url, process):
        deadline = time.monotonic() + 90  # both have started (a bound against hangs only)
        while log.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        port = urlparse(base_url).port
        workers = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in _tcp(child))
        ]
        body = {"logits": [[0.0, 0.0]], "labels": [1]}
        for _ in range(10):
            with httpx.Client(base_url=base_url, timeout=60) as client:
                assert client.post("/v1/losses/cross-entropy", json=body).status_code == 200
    # The kernel hands each new connection to whichever listening worker takes it first.
    assert len(workers) == 2, workers


def _tcp(process: psutil.Process) -> list[Any]:
    try:
        connections: list[Any] = process.net_connections(kind="tcp")
        return connections
    except psutil.NoSuchProcess:
        return []
