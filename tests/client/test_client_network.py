"""The client's transports: httpx's, reading 256 KiB at a time, for the sync and async clients;
httpx's own where the environment names a proxy."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator

import httpx
import numpy as np
import pytest

from service._compat import httpx_reads as _network
from service.client import AsyncLossClient, LossClient
from service.client._transfer import async_exchange, exchange

# A readiness answer several reads long: the clients' `readyz()` parses it.
_PADDING = np.random.default_rng(0).integers(97, 123, 3_000_001, dtype=np.uint8).tobytes()
ANSWER = (
    b'{"status": "ready", "backend": "numpy", "device": "cpu", "version": "0", "padding": "%s"}'
)
ANSWER %= _PADDING


@pytest.fixture
def server() -> Iterator[str]:
    """A plain socket server answering every request with `ANSWER`, on one keep-alive
    connection at a time."""
    listener = socket.create_server(("127.0.0.1", 0))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n" % len(ANSWER)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed
                return
            with connection:
                request = b""
                while chunk := connection.recv(65536):
                    request += chunk
                    while b"\r\n\r\n" in request:
                        _, _, request = request.partition(b"\r\n\r\n")
                        connection.sendall(head + ANSWER)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture
def read_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes the transports' streams ask their sockets for."""
    sizes: list[int] = []
    sync_read, async_read = _network._LargeReads.read, _network._AsyncLargeReads.read

    def recorded(stream: object, max_bytes: int, timeout: float | None = None) -> bytes:
        inner = stream._stream  # type: ignore[attr-defined]
        original: Callable[[int, float | None], bytes] = inner.read

        def read(size: int, timeout: float | None = None) -> bytes:
            sizes.append(size)
            return original(size, timeout)

        inner.read = read
        try:
            return sync_read(stream, max_bytes, timeout)  # type: ignore[arg-type]
        finally:
            del inner.read

    async def recorded_async(stream: object, max_bytes: int, timeout: float | None = None) -> bytes:
        inner = stream._stream  # type: ignore[attr-defined]
        original: Callable[[int, float | None], Awaitable[bytes]] = inner.read

        async def read(size: int, timeout: float | None = None) -> bytes:
            sizes.append(size)
            return await original(size, timeout)

        inner.read = read
        try:
            return await async_read(stream, max_bytes, timeout)  # type: ignore[arg-type]
        finally:
            del inner.read

    monkeypatch.setattr(_network._LargeReads, "read", recorded)
    monkeypatch.setattr(_network._AsyncLargeReads, "read", recorded_async)
    return sizes


def test_sync_transport_reads_256_kib(server: str, read_sizes: list[int]) -> None:
    transport = _network.transport()
    assert transport is not None
    with httpx.Client(base_url=server, transport=transport) as http:
        for _ in range(2):  # the connection is kept and reused
            answer = exchange(http, "GET", "/")
            assert hashlib.sha256(answer.body).digest() == hashlib.sha256(ANSWER).digest()
    assert read_sizes
    assert set(read_sizes) == {_network.READ_BYTES}


def test_async_transport_reads_256_kib(server: str, read_sizes: list[int]) -> None:
    async def run() -> bytes:
        transport = _network.async_transport()
        assert transport is not None
        async with httpx.AsyncClient(base_url=server, transport=transport) as http:
            return bytes((await async_exchange(http, "GET", "/")).body)

    assert asyncio.run(run()) == ANSWER
    assert read_sizes
    assert set(read_sizes) == {_network.READ_BYTES}


def test_the_clients_use_them_by_default(server: str, read_sizes: list[int]) -> None:
    with LossClient(server) as client:
        assert client.readyz().status == "ready"
    assert set(read_sizes) == {_network.READ_BYTES}

    async def run() -> str:
        async with AsyncLossClient(server) as client:
            return (await client.readyz()).status

    read_sizes.clear()
    assert asyncio.run(run()) == "ready"
    assert set(read_sizes) == {_network.READ_BYTES}


def test_a_proxy_in_the_environment_keeps_httpx_transports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _network.transport() is None
    assert _network.async_transport() is None
    LossClient("http://127.0.0.1:9").close()  # httpx sets up its transports, the proxy's too
