"""Request bodies sent in pieces, answers read into one buffer: no large copies on the client.

httpx joins a request body that is given whole into the bytes it sends (one more copy of a
33 MB tensor), and `Response.read()` joins the 64 KiB pieces of an answer into a new `bytes`.
Allocations that large are mapped fresh from the kernel, and faulting their 4 KiB pages in
costs more than the copy (`service.api.request_body` has the numbers). Here a body is a list of
buffers (the JSON around the tensors, the tensors' own bytes or base64 text) streamed in
`PIECE_BYTES` slices with their total Content-Length, and an answer of declared length is read
into one pooled buffer (`body_view`), which `service.codecs.loads_json` parses in place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from service.client._exceptions import ResponseError, error_from_response
from service.codecs._json_body import (
    LARGE_BODY_BYTES,
    BodyPiece,
    JsonBody,
    body_pieces,
    body_view,
    loads_json,
)

PIECE_BYTES = 1 << 18  # each slice is copied once, into memory malloc reuses while warm


@dataclass(frozen=True)
class Body:
    """A request body as the buffers it is made of, and its content type."""

    pieces: Sequence[BodyPiece]
    content_type: str

    def headers(self) -> dict[str, str]:
        length = sum(len(piece) for piece in self.pieces)
        return {"Content-Type": self.content_type, "Content-Length": str(length)}

    def __iter__(self) -> Iterator[bytes]:
        # bytes, not views: the HTTP layer copies each slice once either way (h11 joins what it
        # sends, and returns a lone bytes object as it is).
        for piece in body_pieces(self.pieces):
            if isinstance(piece, bytes):  # JSON, or base64 just encoded: sent as it is
                yield piece
                continue
            view = memoryview(piece).cast("B")
            for start in range(0, len(view), PIECE_BYTES):
                yield bytes(view[start : start + PIECE_BYTES])

    async def pieces_async(self) -> AsyncIterator[bytes]:
        """The slices as an async iterable, which is what `httpx.AsyncClient` streams."""
        for piece in self:
            yield piece


@dataclass(frozen=True)
class Answer:
    """A read answer: the response (headers, status) and its body."""

    response: httpx.Response
    body: JsonBody


def read_json(answer: Answer) -> Any:
    """The JSON of a successful answer; an APIError for an error answer."""
    if answer.response.status_code >= 400:
        raise error_from_response(answer.response)
    try:
        return loads_json(answer.body)
    except ValueError as error:
        raise ResponseError(f"the answer is not JSON: {error}") from None


def _buffer(response: httpx.Response) -> memoryview | None:
    """A buffer for the body of a large successful answer of declared length, else None."""
    declared = response.headers.get("content-length", "")
    if response.status_code >= 400 or not declared.isdigit():
        return None
    if int(declared) < LARGE_BODY_BYTES:
        return None
    return body_view(int(declared))


def _write(view: memoryview, received: int, chunk: bytes) -> int:
    if received + len(chunk) > len(view):
        raise httpx.RemoteProtocolError(f"the answer is longer than its {len(view)} bytes")
    view[received : received + len(chunk)] = chunk
    return received + len(chunk)


def _filled(buffer: memoryview, received: int) -> memoryview:
    if received != len(buffer):
        raise httpx.RemoteProtocolError(f"the answer ended after {received} of {len(buffer)} bytes")
    return buffer


def exchange(
    http: httpx.Client,
    method: str,
    path: str,
    body: Body | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Send `body` (if any), read the answer (into an mmap when large)."""
    headers = {**(body.headers() if body is not None else {}), **(headers or {})}
    with http.stream(method, path, content=body, headers=headers) as response:
        buffer = _buffer(response)
        if buffer is None:
            return Answer(response, response.read())
        received = 0
        for chunk in response.iter_raw():
            received = _write(buffer, received, chunk)
    return Answer(response, _filled(buffer, received))


async def async_exchange(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: Body | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """`exchange` for an `httpx.AsyncClient`."""
    content = body.pieces_async() if body is not None else None
    headers = {**(body.headers() if body is not None else {}), **(headers or {})}
    request = http.build_request(method, path, content=content, headers=headers)
    response = await http.send(request, stream=True)
    try:
        buffer = _buffer(response)
        if buffer is None:
            return Answer(response, await response.aread())
        received = 0
        async for chunk in response.aiter_raw():
            received = _write(buffer, received, chunk)
    finally:
        await response.aclose()
    return Answer(response, _filled(buffer, received))
