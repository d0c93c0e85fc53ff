"""The HTTP/1.1 protocol `loss-service serve` runs: uvicorn's httptools protocol, but a large
request body can be read by the kernel straight into the buffer the app parses.

uvicorn hands a body to the app as `bytes` messages: each read is copied from the event loop's
buffer into `bytes`, by the parser into its body callback's `bytes`, onto the request's
`bytearray`, into the message's `bytes`, and finally by `read_body` into its buffer. For a 33 MB
tensor those copies were ~8 ms of the ~17 ms a request took to arrive over loopback (a plain
socket reading into one buffer: ~9 ms).

Here the protocol is an `asyncio.BufferedProtocol`: the event loop reads into a buffer the
protocol chooses (uvloop only does so for a protocol that is not also an `asyncio.Protocol`, so
uvicorn's protocol sits inside one that is only buffered). Between requests that is a scratch
buffer fed to the parser as before. Once the app asks, through the ASGI extension `BODY_INTO` in
the request's scope, for the rest of a body to go into a buffer of its own, the loop reads the
socket into that buffer, the parser is stepped around (it is replaced by a fresh one for the
next request), and the app's `receive()` gets empty messages, the last with `more_body: False`,
as uvicorn sends them. An app that does not ask gets uvicorn's messages unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

BODY_INTO = "loss_service.body_into"
"""The scope's `extensions` key of a request's `BodyInto`."""

SCRATCH_BYTES = 256 * 1024  # what uvloop reads at once for a plain protocol
_scratch = threading.local()  # one per event loop thread: each read is parsed before the next


class BodyInto:
    """`start(buffer)` has the rest of this request's body read into `buffer`; `filled` is how
    many bytes of the body are in it."""

    def __init__(self, protocol: _HttpToolsInto, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self.filled = 0

    def start(self, buffer: memoryview) -> None:
        """Move what has arrived into `buffer` and read the rest there. `buffer` must hold the
        declared Content-Length; call once, before the app's first `receive()` that follows."""
        arrived = self._cycle.body
        if len(arrived) > len(buffer):  # the parser frames the body by its Content-Length
            raise ValueError("the buffer is shorter than the body")
        buffer[: len(arrived)] = arrived
        self._cycle.body = bytearray()
        self.filled = len(arrived)
        rest = buffer[len(arrived) :]
        if rest and self._cycle.more_body and not self._cycle.disconnected:
            self._protocol.read_into(self, rest)


class BodyIntoProtocol(asyncio.BufferedProtocol):
    """The protocol the event loop sees (pass it as uvicorn's `http`): buffered reads, the rest
    of the protocol uvicorn's, with bodies read into the app's buffer (`_HttpToolsInto`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.http = _HttpToolsInto(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.connection_made(transport)  # type: ignore[arg-type]  # a stream's transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def eof_received(self) -> None:
        self.http.eof_received()

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.http.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.http.buffer_updated(nbytes)


class _HttpToolsInto(HttpToolsProtocol):
    """uvicorn's `HttpToolsProtocol`, fed by buffered reads, reading bodies into buffers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._into: BodyInto | None = None
        self._rest = memoryview(b"")  # the part of `_into`'s buffer still to be read

    # -- buffered reading (`BodyIntoProtocol` forwards) --------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._into is not None:
            return self._rest
        if not hasattr(_scratch, "view"):
            _scratch.view = memoryview(bytearray(SCRATCH_BYTES))
        view: memoryview = _scratch.view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if self._into is None:
            self.data_received(_scratch.view[:nbytes])  # httptools parses any buffer
            return
        self._into.filled += nbytes
        self._rest = self._rest[nbytes:]
        if not self._rest:
            self._into, self._rest = None, memoryview(b"")
            # The parser still waits for the bytes that went around it; the next request starts
            # afresh, as uvicorn's parser is set up.
            self.parser = httptools.HttpRequestParser(self)
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
            self.on_message_complete()

    # -- uvicorn's protocol, extended -----------------------------------------------------------

    def read_into(self, into: BodyInto, rest: memoryview) -> None:
        """Read the socket into `rest` until it is full (`BodyInto.start`)."""
        self._into, self._rest = into, rest
        self.flow.resume_reading()  # paused if more than uvicorn's 64 KiB had arrived

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        chunked = any(name == b"transfer-encoding" for name, _ in self.headers)
        if self.cycle is not before and not chunked:  # a request for the app, framed by length
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[BODY_INTO] = BodyInto(self, self.cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._into, self._rest = None, memoryview(b"")
        super().connection_lost(exc)
