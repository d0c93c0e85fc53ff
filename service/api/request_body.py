"""Request bodies read into one buffer, which grows with what arrives.

Starlette's `Request.body()` keeps the chunks the server hands over and joins them at the end:
for a 33 MB body, a second allocation of 33 MB that glibc maps fresh from the kernel, whose
every 4 KiB page then faults on first touch (~25 ms per 44 MB on the 2-core machines we measure
on: more than the copy itself). A body that declares a Content-Length of at least
`LARGE_BODY_BYTES` goes instead into a pooled mmap (`GrowingBody`: huge pages, 512x fewer
faults, and no faults at all once the pool holds a buffer of that size). Under `loss-service
serve` the server reads the socket straight into it (`service._compat.uvicorn_body_into`); under
any other ASGI server the chunks it hands over are copied in as they arrive. The mmap is what
`service.codecs.loads_json` scans (`find`) and what views of the body (OIP binary tensors,
base64 text) point into; it is reused once the last of them is gone.

The declared length is the client's word: the buffer is sized by what has arrived (it doubles as
it fills), unless an idle pooled buffer already holds the whole body.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from service._compat.uvicorn_body_into import BODY_INTO, BodyInto
from service.codecs._json_body import LARGE_BODY_BYTES, GrowingBody, JsonBody
from service.errors import InvalidInput


async def read_body(request: Request) -> JsonBody:
    """The whole body: a view of a pooled mmap when it is large and its length declared, bytes
    otherwise."""
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isascii() and declared.isdigit() else -1
    if size < LARGE_BODY_BYTES:
        return b"".join([chunk async for chunk in request.stream()])
    body = GrowingBody(size)
    view = body.view()
    into: BodyInto | None = request.scope.get("extensions", {}).get(BODY_INTO)
    if into is not None:
        # The server fills `view`; the messages that come are empty, one each time the view is
        # full before the body is in, and the last with more_body False.
        into.start(view, size)
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            if not message.get("more_body", False):
                break
            if into.filled == len(view) < size:
                view.release()  # the mmap grows in place only without views
                view = body.grow(into.filled)
                into.resume(view)
        received = into.filled
    else:
        received = 0
        async for chunk in request.stream():
            if received + len(chunk) > size:  # an HTTP server frames the body by its length
                raise InvalidInput(f"Content-Length: the body is longer than {size} bytes")
            while received + len(chunk) > len(view):
                view.release()
                view = body.grow(received)
            view[received : received + len(chunk)] = chunk
            received += len(chunk)
    if received < size:  # a client that ends the body early disconnects; not an HTTP server
        raise InvalidInput(f"Content-Length: the body ends after {received} of {size} bytes")
    return view
