"""The client's run handle: on the ASGI app (async), on a live server behind injected faults
(sync), and its retry policy on its own."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import numpy as np
import pytest

from service.client import (
    AsyncLossClient,
    AsyncRun,
    ConflictError,
    InvalidInputError,
    LossClient,
    NotFoundError,
    Retry,
    Run,
    RunReport,
    ServiceUnavailableError,
)
from tests.conftest import AsyncClientContext
from tests.flaky_transport import AsyncFlakyTransport, FlakyTransport

RNG = np.random.default_rng(23)
LOSSES: list[Any] = [
    "cross-entropy",
    {"name": "focal", "gamma": 1.5, "alpha": np.full(5, 0.2), "reduction": "sum"},
]
CALIBRATION = {"n_bins": 8, "top_k": [2]}
FAST = Retry(attempts=4, backoff_s=0.0)


def batches(sizes: tuple[int, ...], classes: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for n in sizes:
        labels = RNG.integers(0, classes, n)
        labels[RNG.random(n) < 0.1] = -100
        out.append(((RNG.standard_normal((n, classes)) * 2).astype(np.float32), labels))
    return out


def assert_report_is_the_whole(
    report: RunReport, whole: dict[str, Any], calibration: dict[str, Any]
) -> None:
    """The run's report equals /v1/evaluate and /v1/calibration on every batch at once."""
    for total, expected in zip(report.losses, whole["losses"], strict=True):
        assert total.name == expected["name"]
        assert total.n_valid == expected["n_valid"]
        assert math.isclose(total.loss, expected["loss"], rel_tol=1e-12)
        assert math.isclose(total.weight_sum, expected["weight_sum"], rel_tol=1e-12)
    assert report.calibration is not None
    assert report.calibration["n"] == calibration["n"]
    assert report.calibration["state"]["bins"] == calibration["state"]["bins"]
    for metric in ("ece", "mce", "brier", "nll", "accuracy", "classwise_ece"):
        assert math.isclose(report.calibration[metric], calibration[metric], rel_tol=1e-12)


def whole_of(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])


async def expected_async(
    client: AsyncLossClient, pieces: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    logits, labels = whole_of(pieces)
    whole = await client.evaluate(logits, labels, LOSSES)
    kept = labels != -100
    calibrated = await client.evaluate(logits[kept], labels[kept], [], calibration=CALIBRATION)
    losses = [vars(result) for result in whole.losses]
    assert calibrated.calibration is not None
    return {"losses": losses}, dict(calibrated.calibration)


# --- async, on the ASGI app --------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[AsyncClientContext]:
    context = AsyncClientContext()
    async with context:
        yield context


def asgi_client(app: AsyncClientContext, transport: httpx.AsyncBaseTransport | None = None) -> Any:
    transport = transport or httpx.ASGITransport(app=app.app)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.mark.anyio
async def test_async_run_from_create_to_delete(app: AsyncClientContext) -> None:
    async with asgi_client(app) as http:
        client = AsyncLossClient(http_client=http)
        run = await client.create_run(
            LOSSES, calibration=CALIBRATION, name="nightly", metadata={"model": "r50"}
        )
        assert isinstance(run, AsyncRun)
        assert run.page_url == f"http://testserver/runs/{run.id}"
        pieces = batches((9, 1, 14))
        receipts = [await run.add_batch(*pieces[0], batch_id="first")]
        receipts += [await run.add_batch(*piece) for piece in pieces[1:]]
        assert [r.duplicate for r in receipts] == [False, False, False]
        assert receipts[0].batch_id == "first"
        assert len({r.batch_id for r in receipts}) == 3  # generated ids differ
        again = await run.add_batch(*pieces[0], batch_id="first")
        assert again.duplicate and again.digest == receipts[0].digest
        assert [r.digest for r in receipts] == [Run.batch_digest(*piece) for piece in pieces]

        report = await run.report()
        assert (report.id, report.name, report.metadata) == (run.id, "nightly", {"model": "r50"})
        assert (report.status, report.n_batches, report.n_samples) == ("open", 3, 24)
        assert report.created_at.tzinfo is not None
        whole, calibration = await expected_async(client, pieces)
        assert_report_is_the_whole(report, whole, calibration)
        assert report["focal"] is report.losses[1]
        assert report.spec["calibration"]["n_bins"] == 8

        stored = await run.batch("first")
        assert stored is not None
        assert (stored.digest, stored.n_samples) == (receipts[0].digest, 9)
        assert await run.batch("never-sent") is None
        with pytest.raises(NotFoundError):  # an unknown run is an error, not a missing batch
            await client.run("00000000-0000-4000-8000-000000000000").batch("first")

        assert (await run.reliability_diagram()).startswith(b"\x89PNG")
        assert b"<svg" in await run.reliability_diagram("svg")
        closed = await run.close()
        assert closed.status == "closed"
        assert (await run.close()).status == "closed"
        with pytest.raises(ConflictError) as refused:
            await run.add_batch(*pieces[1])
        assert refused.value.status == 409
        await run.delete()
        with pytest.raises(NotFoundError):
            await run.report()
        with pytest.raises(NotFoundError):
            await run.delete()


@pytest.mark.anyio
async def test_async_other_tensors_under_a_used_batch_id_are_a_conflict(
    app: AsyncClientContext,
) -> None:
    async with asgi_client(app) as http:
        run = await AsyncLossClient(http_client=http).create_run(["cross-entropy"])
        (logits, labels), (other, _) = batches((4, 4))
        await run.add_batch(logits, labels, batch_id="k")
        with pytest.raises(ConflictError) as conflict:
            await run.add_batch(other, labels, batch_id="k")
        assert conflict.value.fields == ["batch_id"]
        with pytest.raises(InvalidInputError):  # not retried: the request itself is wrong
            await run.add_batch(logits, labels[:2], batch_id="short")
        assert (await run.report()).n_batches == 1


@pytest.mark.anyio
async def test_async_faults_are_retried_and_each_batch_counts_once(
    app: AsyncClientContext,
) -> None:
    faults = ["503", "drop", None, "refuse", "502", None, "drop", "drop", None, "504", None]
    transport = AsyncFlakyTransport(httpx.ASGITransport(app=app.app), faults)
    async with asgi_client(app) as plain, asgi_client(app, transport) as flaky:
        run = await AsyncLossClient(http_client=plain).create_run(LOSSES, calibration=CALIBRATION)
        handle = AsyncLossClient(http_client=flaky).run(run.id, retry=FAST)
        pieces = batches((6, 3, 8, 5))
        receipts = [await handle.add_batch(*piece) for piece in pieces]
        # Each dropped answer was a batch counted: its retry is the duplicate.
        assert [r.duplicate for r in receipts] == [True, False, True, False]
        assert transport.plan.seen == len(faults)
        assert transport.plan.reached == 4 + 3
        report = await run.report()
        assert (report.n_batches, report.n_samples) == (4, 22)
        whole, calibration = await expected_async(AsyncLossClient(http_client=plain), pieces)
        assert_report_is_the_whole(report, whole, calibration)


# --- the retry policy, on a mock transport ------------------------------------------------------


def test_retries_are_bounded_and_honour_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("service.client._retry.time.sleep", waits.append)
    sent: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503, headers={"Retry-After": "7"}, json={"detail": "database"})

    with LossClient("http://mock", transport=httpx.MockTransport(unavailable)) as client:
        run = client.run("r", retry=Retry(attempts=3, backoff_s=0.1, max_wait_s=60))
        with pytest.raises(ServiceUnavailableError):
            run.add_batch(np.zeros((2, 3), np.float32), [0, 1])
    assert len(sent) == 3
    assert len({request.url.path for request in sent}) == 1  # one batch id for every try
    assert waits == [7.0, 7.0]


def test_connection_errors_are_retried_then_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.client._retry.time.sleep", lambda seconds: None)
    tries = 0

    def refused(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        raise httpx.ConnectError("refused", request=request)

    client = LossClient("http://mock", transport=httpx.MockTransport(refused))
    with client, pytest.raises(httpx.ConnectError):
        client.run("r", retry=Retry(attempts=5)).report()
    assert tries == 5


def test_creating_and_deleting_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.client._retry.time.sleep", lambda seconds: None)
    methods: list[str] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        return httpx.Response(503, json={"detail": "down"})

    with LossClient("http://mock", transport=httpx.MockTransport(unavailable)) as client:
        with pytest.raises(ServiceUnavailableError):
            client.create_run(["cross-entropy"])
        with pytest.raises(ServiceUnavailableError):
            client.run("r").delete()
    assert methods == ["POST", "DELETE"]


def test_the_wait_grows_and_is_capped() -> None:
    retry = Retry(attempts=10, backoff_s=1.0, max_wait_s=5.0)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        for _ in range(20):
            assert full / 2 <= retry.wait_s(attempt) <= full
    assert retry.wait_s(1, "3") == 3.0
    assert retry.wait_s(1, "3600") == 5.0  # never past max_wait_s
    assert 0.5 <= retry.wait_s(1, "soon") <= 1.0  # unreadable: the backoff
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    assert 2.5 < retry.wait_s(1, later) <= 4.0
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert 0.5 <= retry.wait_s(1, past) <= 1.0
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)


# --- sync, on a live server behind injected faults ----------------------------------------------


@pytest.mark.system
def test_a_run_through_faults_on_a_live_server_counts_every_batch_once(server: str) -> None:
    per_batch: list[list[str | None]] = [
        ["drop", None],  # counted, its answer lost: the retry is a duplicate
        ["503", None],  # a proxy's 503: the retry counts it
        ["refuse", "drop", None],
        ["504", "502", None],
        ["drop", "drop", None],
        [None],
    ]
    pieces = batches((40, 7, 33, 12, 25, 1))
    flaky = FlakyTransport(httpx.HTTPTransport(), [f for faults in per_batch for f in faults])
    with LossClient(server) as plain, LossClient(server, transport=flaky) as through_faults:
        run = plain.create_run(LOSSES, calibration=CALIBRATION, name="faults")
        handle = through_faults.run(run.id, retry=Retry(attempts=4, backoff_s=0.01))
        ids = [f"part-{index}" for index in range(len(pieces))]
        receipts = [
            handle.add_batch(*piece, batch_id=batch_id)
            for piece, batch_id in zip(pieces, ids, strict=True)
        ]
        assert [r.batch_id for r in receipts] == ids
        assert [r.duplicate for r in receipts] == [True, False, True, False, True, False]
        assert flaky.plan.faults == [] and flaky.plan.seen == 14
        assert flaky.plan.reached == len(pieces) + 4  # the dropped answers' batches, again

        report = plain.run(run.id).report()
        assert (report.n_batches, report.n_samples) == (6, 118)
        logits, labels = whole_of(pieces)
        whole = plain.evaluate(logits, labels, LOSSES)
        kept = labels != -100
        calibration = plain.evaluate(logits[kept], labels[kept], [], calibration=CALIBRATION)
        assert calibration.calibration is not None
        expected = {"losses": [vars(result) for result in whole.losses]}
        assert_report_is_the_whole(report, expected, dict(calibration.calibration))
        for batch_id, receipt in zip(ids, receipts, strict=True):
            stored = handle.batch(batch_id)
            assert stored is not None and stored.digest == receipt.digest
        assert handle.close().status == "closed"
