"""Runs under real faults: several service processes on one PostgreSQL, a process killed during a
batch, the database down and back, concurrent writers on SQLite, and `loss-service db upgrade`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import AsyncClientContext
from tests.helpers import decoded, encoded
from tests.live_server import ROOT, _env, serving
from tests.runs.conftest import PostgresServer
from tests.runs.network import TcpProxy

RNG = np.random.default_rng(5)
SPEC = {"losses": [{"name": "cross-entropy"}], "calibration": {"n_bins": 8}}


def a_batch(n: int = 16, classes: int = 5) -> dict[str, Any]:
    logits = RNG.standard_normal((n, classes)).astype(np.float32)
    return {"logits": encoded(logits), "labels": encoded(RNG.integers(0, classes, n))}


def concatenated(batches: list[dict[str, Any]]) -> dict[str, Any]:
    logits = np.concatenate([decoded(b["logits"]) for b in batches])
    labels = np.concatenate([decoded(b["labels"]) for b in batches])
    return {"logits": encoded(logits), "labels": encoded(labels)}


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.postgres
def test_two_service_processes_on_one_postgresql(tmp_path: Path, postgres: PostgresServer) -> None:
    """Dozens of concurrent batches, some of them sent twice, through two replicas into one run:
    nothing lost, nothing counted twice, the report of one process on their concatenation."""
    url = postgres.create_database("replicas")
    batches = [a_batch(n=int(RNG.integers(1, 40))) for _ in range(40)]
    with (
        serving(tmp_path / "a.log", LOSS_SERVICE_DATABASE_URL=url) as (first, _),
        serving(tmp_path / "b.log", LOSS_SERVICE_DATABASE_URL=url) as (second, _),
    ):
        run = httpx.post(f"{first}/v1/runs", json=SPEC, timeout=30).json()
        # Every batch once, and two of them again (a client's retry), to alternating replicas.
        sends = [*enumerate(batches), (3, batches[3]), (7, batches[7])]

        def send(position: int) -> int:
            index, batch = sends[position]
            replica = (first, second)[position % 2]
            path = f"{replica}/v1/runs/{run['id']}/batches/batch-{index}"
            return httpx.put(path, json=batch, timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, range(len(sends))))
        assert statuses.count(201) == len(batches)
        assert statuses.count(200) == 2  # the two sent twice
        report = httpx.get(f"{second}/v1/runs/{run['id']}", timeout=30).json()
        whole = httpx.post(
            f"{first}/v1/evaluate", json={**concatenated(batches), **SPEC}, timeout=60
        ).json()
    assert report["n_batches"] == len(batches)
    assert report["n_samples"] == sum(b["labels"]["shape"][0] for b in batches)
    assert report["losses"][0]["n_valid"] == whole["losses"][0]["n_valid"]
    assert report["losses"][0]["loss"] == pytest.approx(whole["losses"][0]["loss"], rel=1e-12)
    assert (
        report["calibration"]["state"]["bins"]["count"]
        == (whole["calibration"]["state"]["bins"]["count"])
    )
    assert report["calibration"]["ece"] == pytest.approx(whole["calibration"]["ece"], rel=1e-12)


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.postgres
def test_a_process_killed_during_a_batch_leaves_nothing_and_the_retry_counts(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """The batch's transaction is waiting for the run's row (the test holds it) when its process
    is SIGKILLed: nothing of it stays, and the client's retry on the other replica counts once."""
    url = postgres.create_database("killed")
    batch = a_batch()
    with (
        serving(tmp_path / "a.log", LOSS_SERVICE_DATABASE_URL=url) as (doomed, process),
        serving(tmp_path / "b.log", LOSS_SERVICE_DATABASE_URL=url) as (survivor, _),
    ):
        run = httpx.post(f"{survivor}/v1/runs", json=SPEC, timeout=30).json()
        engine = create_engine(url)
        try:
            with engine.connect() as holder:
                holder.execute(
                    text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": run["id"]}
                )
                path = f"/v1/runs/{run['id']}/batches/only"
                sender = threading.Thread(
                    target=_ignoring_errors, args=(f"{doomed}{path}", batch), daemon=True
                )
                sender.start()
                _wait_for_a_lock_waiter(engine)
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
                holder.rollback()
            retried = httpx.put(f"{survivor}{path}", json=batch, timeout=30)
            assert retried.status_code == 201, retried.text  # the first attempt left nothing
            assert httpx.put(f"{survivor}{path}", json=batch, timeout=30).status_code == 200
            report = httpx.get(f"{survivor}/v1/runs/{run['id']}", timeout=30).json()
        finally:
            engine.dispose()
    assert report["n_batches"] == 1
    assert report["n_samples"] == 16


def _ignoring_errors(url: str, body: dict[str, Any]) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server is killed: expected
        httpx.put(url, json=body, timeout=30)


def _wait_for_a_lock_waiter(engine: Any) -> None:
    """Until another session waits on a row lock (the killed server's batch)."""
    deadline = time.monotonic() + 30
    with engine.connect() as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
            ).scalar_one()
            if waiting:
                return
            time.sleep(0.05)
    pytest.fail("the batch never reached the run's lock")


@pytest.mark.postgres
@pytest.mark.anyio
async def test_the_database_down_and_back(postgres: PostgresServer) -> None:
    """Down at startup: run routes answer 503 with Retry-After, everything else works and
    /readyz says which dependency is down; back: the migrations run and the runs work."""
    url = postgres.create_database("down")
    proxy = TcpProxy(("127.0.0.1", 5432))  # not started: the database is down
    through_proxy = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = {"database_url": through_proxy, "database_connect_timeout_s": 1.0}
    async with AsyncClientContext(**settings) as client:
        down = await client.get("/v1/runs")
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
        assert down.json()["type"] == "urn:loss-service:problem:database-unavailable"
        assert through_proxy.split("@")[0] not in down.text
        loss = await client.post(
            "/v1/losses/cross-entropy", json={"logits": [[0, 0]], "labels": [1]}
        )
        assert loss.status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["database"] == "unavailable"

        proxy.start()
        try:
            created = await client.post("/v1/runs", json=SPEC)
            assert created.status_code == 201, created.text
            assert (await client.get("/readyz")).json()["database"] == "ok"
            run_id = created.json()["id"]
            proxy.stop()
            batch = a_batch()
            lost = await client.put(f"/v1/runs/{run_id}/batches/x", json=batch)
            assert lost.status_code == 503
            proxy.start()
            again = await client.put(f"/v1/runs/{run_id}/batches/x", json=batch)
            assert again.status_code == 201, again.text
        finally:
            proxy.stop()


@pytest.mark.anyio
async def test_concurrent_batches_on_sqlite_never_meet_a_locked_database(tmp_path: Path) -> None:
    async with AsyncClientContext(database_url=f"sqlite:///{tmp_path}/runs.db") as client:
        run = (await client.post("/v1/runs", json=SPEC)).json()
        statuses: list[int] = []

        async def put(index: int) -> None:
            path = f"/v1/runs/{run['id']}/batches/b{index}"
            statuses.append((await client.put(path, json=a_batch())).status_code)

        async with anyio.create_task_group() as group:
            for index in range(24):
                group.start_soon(put, index)
        report = (await client.get(f"/v1/runs/{run['id']}")).json()
    assert statuses == [201] * 24
    assert report["n_batches"] == 24


@pytest.mark.system
@pytest.mark.slow
def test_db_upgrade_from_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/runs.db"
    command = [sys.executable, "-m", "service", "db", "upgrade", "--url", url]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tables = connection.execute(text("SELECT name FROM sqlite_master")).scalars().all()
    finally:
        engine.dispose()
    assert {"runs", "batches"} <= set(tables)
    nowhere = [*command[:-1], "postgresql+psycopg://u:secret@127.0.0.1:1/x?connect_timeout=2"]
    failed = subprocess.run(
        nowhere, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1
    assert "cannot connect" in failed.stderr
    assert "secret" not in failed.stderr
