"""httpx transports whose connections read the socket `READ_BYTES` at a time.

httpcore asks its socket for 64 KiB per read, and each read goes through h11 and httpx as one
event, then is copied into the answer's buffer (`_transfer.exchange`): for a 33 MB gradient,
~500 rounds. Read 256 KiB at a time, the same answer took 16-17 ms instead of ~21 ms to arrive
over loopback from a plain socket server (that server's own one-way floor: ~9 ms). Larger reads
stop paying: each read returns a fresh `bytes`, and from ~1 MiB those are fresh pages.

The streams wrap httpcore's own, so timeouts, TLS and errors are httpcore's; the transports are
httpx's, with their connection pool given these streams: httpx has no option for it, so its
private `_pool` is replaced, after a check that it is the httpcore pool the transport sends
through (else httpx's own transport, with one warning line). Where the environment names a proxy,
the client leaves httpx its own transports, which honour it.
"""

from __future__ import annotations

import functools
import urllib.request
from typing import Any

import httpcore
import httpx

from service._compat import fall_back

READ_BYTES = 256 * 1024


class _LargeReads(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max(max_bytes, READ_BYTES), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReads(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _AsyncLargeReads(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncLargeReads(await self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.SyncBackend):
    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReads(super().connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _LargeReads(super().connect_unix_socket(*args, **kwargs))


class _AsyncBackend(httpcore.AnyIOBackend):
    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncLargeReads(await super().connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _AsyncLargeReads(await super().connect_unix_socket(*args, **kwargs))


# httpx's defaults (`httpx.Client`'s limits): 100 connections, 20 kept alive for 5 s.
_LIMITS: dict[str, Any] = {
    "max_connections": 100,
    "max_keepalive_connections": 20,
    "keepalive_expiry": 5.0,
}


def _proxied() -> bool:
    """Whether the environment names a proxy (HTTP_PROXY, ALL_PROXY, ...). httpx only honours
    it when it sets up its own transports, so then the client keeps those."""
    return bool(urllib.request.getproxies())


@functools.cache
def self_check() -> str | None:
    """None when httpx's transports send through an httpcore pool held in `_pool`, as the
    large-read transports assume; otherwise what is different."""
    for transport_class, pool_class in (
        (httpx.HTTPTransport, httpcore.ConnectionPool),
        (httpx.AsyncHTTPTransport, httpcore.AsyncConnectionPool),
    ):
        pool = getattr(transport_class(), "_pool", None)
        if not isinstance(pool, pool_class):
            return f"{transport_class.__name__} keeps no {pool_class.__name__} in `_pool`"
    return None


def _usable() -> bool:
    if _proxied():
        return False
    problem = self_check()
    if problem is not None:
        _warn_once(problem)
    return problem is None


@functools.cache
def _warn_once(problem: str) -> None:
    fall_back("reading answers 256 KiB at a time", problem)


def transport() -> httpx.HTTPTransport | None:
    """httpx's default transport (TLS verified, its default limits), reading 256 KiB at a time;
    None (httpx's own) where the environment names a proxy or httpx is not as expected."""
    if not _usable():
        return None
    large_reads = httpx.HTTPTransport()
    # The one thing httpx does not expose: the pool's network backend. The transport maps
    # requests, answers and errors between httpx and whatever pool it holds.
    large_reads._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_Backend(), **_LIMITS
    )
    return large_reads


def async_transport() -> httpx.AsyncHTTPTransport | None:
    """`transport()` for an `httpx.AsyncClient`."""
    if not _usable():
        return None
    large_reads = httpx.AsyncHTTPTransport()
    large_reads._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_AsyncBackend(), **_LIMITS
    )
    return large_reads
