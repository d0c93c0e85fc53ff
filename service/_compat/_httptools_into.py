"""The protocol `loss-service serve` runs: uvicorn's httptools protocol, with a large request body
read by the kernel straight into the buffer the app parses, and `HttpLimits` enforced.

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

The same protocol enforces `HttpLimits` on every connection, which uvicorn's httptools protocol
does not: a request's head (request line and headers) of at most `max_header_bytes` and
`max_header_count` fields (431), arriving within `header_timeout_s` (408; an idle connection is
closed), and a body that never stalls for `body_timeout_s` while it is read (408). Without
them a client could send 128 MB of headers, or keep a socket open with half a request forever.
Each request's scope carries `HTTP_LIMITS`, so that the app knows the server enforces them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service._compat.http_limits import DEFAULT_LIMITS, HTTP_LIMITS, HttpLimits, refusal

BODY_INTO = "loss_service.body_into"
"""The scope's `extensions` key of a request's `BodyInto`."""


SCRATCH_BYTES = 256 * 1024  # what uvloop reads at once for a plain protocol
_scratch = threading.local()  # one per event loop thread: each read is parsed before the next


class BodyInto:
    """`start(buffer, size)` has the rest of this request's body, `size` bytes in all, read into
    `buffer`; `filled` is how many bytes of the body are in it. A buffer shorter than the body
    is filled, then the app's `receive()` returns an empty message with `more_body` and reading
    pauses until `resume(larger)`: the app's buffer can grow with what arrives."""

    def __init__(self, protocol: _HttpToolsInto, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self.filled = 0
        self.size = 0

    def start(self, buffer: memoryview, size: int | None = None) -> None:
        """Move what has arrived into `buffer` and read the rest there (`size`: the declared
        Content-Length, by default `len(buffer)`). Call once, before the app's first
        `receive()` that follows."""
        self.size = len(buffer) if size is None else size
        arrived = self._cycle.body
        if len(arrived) > len(buffer):  # the parser frames the body by its Content-Length
            raise ValueError("the buffer is shorter than what has arrived of the body")
        buffer[: len(arrived)] = arrived
        self._cycle.body = bytearray()
        self.filled = len(arrived)
        self.resume(buffer)

    def resume(self, buffer: memoryview) -> None:
        """Go on reading into `buffer`, larger than the one before, whose first `filled` bytes
        are the body's so far. Call when a `receive()` found the buffer full."""
        rest = buffer[self.filled : self.size]
        if rest and self._cycle.more_body and not self._cycle.disconnected:
            self._protocol.read_into(self, rest)


class BodyIntoProtocol(asyncio.BufferedProtocol):
    """The protocol the event loop sees (pass it as uvicorn's `http`): buffered reads, the rest
    of the protocol uvicorn's, with bodies read into the app's buffer (`_HttpToolsInto`), under
    `limits` (`with_limits` makes the class for other limits than the defaults)."""

    limits = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.http = _HttpToolsInto(*args, limits=self.limits, **kwargs)

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[BodyIntoProtocol]:
        if limits == cls.limits:
            return cls
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.connection_made(transport)

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
    """uvicorn's `HttpToolsProtocol`, fed by buffered reads, reading bodies into buffers, under
    `HttpLimits`."""

    def __init__(self, *args: Any, limits: HttpLimits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._into: BodyInto | None = None
        self._rest = memoryview(b"")  # the part of `_into`'s buffer still to be read
        self.limits = limits
        # The head being read: the bytes it may still take (None: not reading a head), which
        # head it is, and its fields so far.
        self._head_room: int | None = None
        self._head_number = 0
        self._header_count = 0
        # Refused and closing: what the parser still finds in the bytes it has is ignored.
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_progress = 0.0  # the loop's time when the body last advanced

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
        self._body_progress = self.loop.time()
        self._rest = self._rest[nbytes:]
        if not self._rest and self._into.filled < self._into.size:
            # The app's buffer is full and the body is not in: the app grows it (`resume`)
            # when its receive() returns. No view of it is kept meanwhile.
            self._rest = memoryview(b"")
            self.flow.pause_reading()
            self.cycle.message_event.set()
        elif not self._rest:
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
        if self._refused:
            return
        self._head_room = None
        self._cancel_head_timer()
        before = self.cycle
        super().on_headers_complete()
        chunked = any(name == b"transfer-encoding" for name, _ in self.headers)
        if self.cycle is not before:  # a request for the app
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[HTTP_LIMITS] = self.limits
            if not chunked:  # framed by its length
                extensions[BODY_INTO] = BodyInto(self, self.cycle)
            length = next((value for name, value in self.headers if name == b"content-length"), b"")
            if chunked or length.strip(b"0"):  # a body follows
                self._body_progress = self.loop.time()
                self._body_timer = self.loop.call_later(
                    self.limits.body_timeout_s, self._body_timeout
                )

    def connection_lost(self, exc: Exception | None) -> None:
        self._into, self._rest = None, memoryview(b"")
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    # -- limits on what a client sends, and how slowly ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]  # a stream's transport
        self._limit_head()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)

    def data_received(self, data: bytes | memoryview) -> None:
        """uvicorn's, but a head is fed to the parser only as far as `max_header_bytes`: what
        httptools holds of a head it has not finished (a header value in progress) is bounded."""
        view = memoryview(data)
        while True:
            room = self._head_room
            if room is None or len(view) <= room:
                if room is not None:
                    self._head_room = room - len(view)
                super().data_received(view)  # type: ignore[arg-type]  # httptools takes views
                return
            head = self._head_number
            self._head_room = 0
            super().data_received(view[:room])  # type: ignore[arg-type]
            if self.transport.is_closing():
                return
            if self._head_number == head and self._head_room == 0:  # the same head goes on
                detail = (
                    f"the request's head exceeds max_header_bytes = {self.limits.max_header_bytes}"
                )
                self._refuse_head(431, detail)
                return
            view = view[room:]  # the rest: a body, or the next request

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            count = self.limits.max_header_count
            detail = f"the request has more than max_header_count = {count} header fields"
            self._refuse_head(431, detail)
            return
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body_progress = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel_body_timer()
        super().on_message_complete()
        self._limit_head()  # what follows is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = self.cycle is None or self.cycle.response_complete  # no request is being answered
        if idle and not self.transport.is_closing():
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._head_timeout
            )

    def _limit_head(self) -> None:
        self._head_room = self.limits.max_header_bytes
        self._head_number += 1
        self._header_count = 0

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._head_room is None:
            return
        if self._head_room == self.limits.max_header_bytes:  # not a byte of a request: idle
            self.transport.close()
            return
        self._refuse_head(
            408,
            f"the request's head did not arrive within header_timeout_s = "
            f"{self.limits.header_timeout_s}",
        )

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_progress
        wait = self.limits.body_timeout_s - idle  # > 0: it advanced since the timer was set
        if wait <= 0 and self.flow.read_paused:
            # Not read because the app has not asked for more yet (or not grown its buffer):
            # not the client's delay.
            wait = self.limits.body_timeout_s
        if wait > 0:
            self._body_timer = self.loop.call_later(wait, self._body_timeout)
            return
        # The request whose body stalled is the one being answered (or answered already: then
        # the client has its answer and the connection just closes).
        cycle = self.cycle
        if not cycle.response_complete and not cycle.response_started:
            self.transport.write(
                refusal(
                    408,
                    f"the request's body stalled for body_timeout_s = {self.limits.body_timeout_s}",
                )
            )
        self._close()

    def _refuse_head(self, status: int, detail: str) -> None:
        """Refuse the request whose head is being read, and close. With an earlier request of
        the connection still being answered, the refusal is not written: it would read as
        that request's answer."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal(status, detail))
        self._close()

    def _close(self) -> None:
        self._refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app's receive() gets a disconnect, and what it sends goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self._into, self._rest = None, memoryview(b"")
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
