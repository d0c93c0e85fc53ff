"""The seam around other libraries' internals: each checks itself before use, falls back to the
stock behaviour with one warning line, and the answers are the same either way."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service._compat import glibc_malloc, httpx_reads, uvicorn_body_into
from service.client import LossClient
from tests.live_server import running_server

pytestmark = pytest.mark.system


@pytest.fixture
def fresh_checks() -> Iterator[None]:
    """The checks are cached per process: each test sees its own outcome."""
    uvicorn_body_into.self_check.cache_clear()
    httpx_reads.self_check.cache_clear()
    httpx_reads._warn_once.cache_clear()
    yield
    uvicorn_body_into.self_check.cache_clear()
    httpx_reads.self_check.cache_clear()
    httpx_reads._warn_once.cache_clear()


def test_the_pinned_uvicorn_passes_the_protocol_check(fresh_checks: None) -> None:
    assert uvicorn_body_into.self_check() is None
    assert uvicorn_body_into.protocol_for_uvicorn() is uvicorn_body_into.BodyIntoProtocol
    assert uvicorn_body_into.protocol_for_uvicorn(enabled=False) == "httptools"


@pytest.mark.parametrize(
    ("attribute", "replacement"),
    [
        # uvicorn keeping the arrived body under another name: nothing is read into the buffer
        ("read_into", lambda self, into, rest: None),
        # a cycle without the attributes the protocol reads
        ("on_headers_complete", lambda self: setattr(self, "cycle", object())),
    ],
)
def test_a_uvicorn_that_differs_gets_its_own_protocol(
    fresh_checks: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    attribute: str,
    replacement: Any,
) -> None:
    monkeypatch.setattr(uvicorn_body_into._HttpToolsInto, attribute, replacement)
    with caplog.at_level(logging.WARNING, logger="service.compat"):
        assert uvicorn_body_into.protocol_for_uvicorn() == "httptools"
    warnings = [r for r in caplog.records if r.name == "service.compat"]
    assert len(warnings) == 1
    assert "stock behaviour" in warnings[0].getMessage()


def test_an_httpx_without_its_pool_gets_its_own_transport(
    fresh_checks: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(httpx_reads.transport(), httpx.HTTPTransport)

    class NoPool(httpx.HTTPTransport):
        def __init__(self) -> None:
            super().__init__()
            del self._pool

    monkeypatch.setattr(httpx, "HTTPTransport", NoPool)
    httpx_reads.self_check.cache_clear()
    with caplog.at_level(logging.WARNING, logger="service.compat"):
        assert httpx_reads.transport() is None
        assert httpx_reads.async_transport() is None
    assert len([r for r in caplog.records if r.name == "service.compat"]) == 1


def test_a_c_library_without_mallopt_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class NotGlibc:
        def __getattr__(self, name: str) -> Any:
            raise AttributeError(name)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: NotGlibc())
    with caplog.at_level(logging.WARNING, logger="service.compat"):
        assert glibc_malloc.retain_freed_memory(1 << 20) is False
    assert len([r for r in caplog.records if r.name == "service.compat"]) == 1


def _answers(base_url: str) -> list[dict[str, Any]]:
    """A large base64 body (read into the app's buffer when the seam is on) and a small JSON one,
    with gradients, through the client (whose transport the seam also chooses)."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((2048, 300)).astype(np.float32)  # 2.4 MB: a large body
    labels = rng.integers(0, 300, 2048)
    with LossClient(base_url, timeout=30) as client:
        big = client.loss("cross-entropy", logits=logits, labels=labels, return_grad=True)
    with LossClient(base_url, timeout=30, encoding="json") as client:
        small = client.loss("cross-entropy", logits=logits[:4], labels=labels[:4], return_grad=True)
    return [
        {"loss": answer.loss, "grad": np.asarray(answer.grad).tobytes()} for answer in (big, small)
    ]


@pytest.mark.slow
def test_the_server_and_the_client_answer_the_same_either_way(
    tmp_path: Path, fresh_checks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_server(tmp_path / "fast.log") as base_url:
        fast = _answers(base_url)
    monkeypatch.setattr(httpx_reads, "self_check", lambda: "turned off by the test")
    assert httpx_reads.transport() is None  # the client now uses httpx's own transport
    with running_server(tmp_path / "stock.log", LOSS_SERVICE_LIBRARY_INTERNALS="false") as url:
        stock = _answers(url)
    assert fast == stock
    assert "stock behaviour" not in (tmp_path / "fast.log").read_text()
