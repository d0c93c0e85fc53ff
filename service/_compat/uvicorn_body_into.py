"""The HTTP/1.1 protocol `loss-service serve` runs, chosen once it has been checked: uvicorn's
httptools protocol, but a large request body can be read by the kernel straight into the buffer
the app parses, and the `HttpLimits` hold on every connection (`_httptools_into`, which says how).

It relies on uvicorn's internals (see `service._compat`): `protocol_for_uvicorn()` drives one
request through it before the server starts (`self_check`) and hands out uvicorn's own
`httptools` protocol, with one warning line, when they are not what it expects.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from service._compat import fall_back
from service._compat._httptools_into import BODY_INTO, BodyInto, BodyIntoProtocol, _HttpToolsInto
from service._compat.http_limits import DEFAULT_LIMITS, HTTP_LIMITS, HttpLimits

__all__ = [
    "BODY_INTO",
    "DEFAULT_LIMITS",
    "HTTP_LIMITS",
    "BodyInto",
    "BodyIntoProtocol",
    "HttpLimits",
    "_HttpToolsInto",  # the class `BodyIntoProtocol` wraps, which the self-check's tests alter
    "protocol_for_uvicorn",
    "self_check",
]


def protocol_for_uvicorn(
    *, enabled: bool = True, limits: HttpLimits = DEFAULT_LIMITS
) -> type[asyncio.BufferedProtocol] | str:
    """uvicorn's `http` argument: `BodyIntoProtocol` under `limits` when this uvicorn drives it
    as expected, else (or when not `enabled`) uvicorn's own `"httptools"`, which enforces none
    of them (`service.api.body_limit` checks what it can once a request reaches the app)."""
    if not enabled:
        return "httptools"
    problem = self_check()
    if problem is not None:
        fall_back("reading request bodies into the app's buffer", problem)
        return "httptools"
    return BodyIntoProtocol.with_limits(limits)


@functools.cache
def self_check() -> str | None:
    """None when one request driven through `BodyIntoProtocol` (headers, then a body read
    partly before and partly after the app asks for it, into a buffer the app grows once, then
    the answer) comes out right; otherwise what went wrong. Runs its own event loop: call it
    before the server starts."""
    try:
        return asyncio.run(_one_request())
    except Exception as error:  # any failure means: do not rely on these internals
        return f"{type(error).__name__}: {error}"


class _Transport(asyncio.Transport):
    """Just enough of a socket's transport for uvicorn's protocol: what it writes is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def _one_request() -> str | None:
    body = bytes(range(256)) * 1024  # larger than uvicorn's 64 KiB high-water mark
    received: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        into: BodyInto | None = scope.get("extensions", {}).get(BODY_INTO)
        if into is None:
            raise RuntimeError(f"the request scope has no {BODY_INTO} extension")
        buffer = memoryview(bytearray(len(body) * 3 // 4))  # grown once the body fills it
        into.start(buffer, len(body))
        while (await receive()).get("more_body"):
            if into.filled == len(buffer) < len(body):
                larger = memoryview(bytearray(len(body)))
                larger[: into.filled] = buffer
                buffer = larger
                into.resume(buffer)
        received.append(bytes(buffer[: into.filled]))
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    config.load()
    protocol = BodyIntoProtocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    head = b"POST / HTTP/1.1\r\nhost: check\r\ncontent-length: %d\r\n\r\n" % len(body)
    half = len(body) // 2
    rest = _feed(protocol, transport, head + body[:half])
    for _ in range(100):  # the app's task starts, asks for the body, and waits for the rest
        await asyncio.sleep(0)
    rest = _feed(protocol, transport, rest + body[half:])  # until the app's buffer is full
    for _ in range(100):  # the app grows its buffer and asks for the rest
        await asyncio.sleep(0)
    _feed(protocol, transport, rest)
    for _ in range(100):
        if transport.written.endswith(b"ok"):
            break
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    if received != [body]:
        return "the body read into the app's buffer is not the body sent"
    if not transport.written.startswith(b"HTTP/1.1 200"):
        return "the answer is not the app's"
    # A head with one header field too many: the parser stops, and the answer is the 431.
    strict = BodyIntoProtocol.with_limits(HttpLimits(max_header_count=1))
    protocol = strict(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    _feed(protocol, transport, b"GET / HTTP/1.1\r\nhost: check\r\nx-more: 1\r\n\r\n")
    protocol.connection_lost(None)
    if not (transport.written.startswith(b"HTTP/1.1 431") and transport.closed):
        return "a head over the header limits is not refused with 431"
    return None


def _feed(protocol: BodyIntoProtocol, transport: _Transport, data: bytes) -> bytes:
    """`data` as the event loop hands it to a buffered protocol: into the buffers it offers,
    while reading is not paused; what is left."""
    view = memoryview(data)
    while view and not transport.paused:
        buffer = protocol.get_buffer(len(view))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]
    return bytes(view)
