"""`BodyIntoProtocol` under a real uvicorn, on uvloop and on plain asyncio: large bodies read
into the app's buffer arrive whole and in order, and the connection goes on serving after them
(keep-alive, pipelining, Expect: 100-continue, an app that never reads, a client that leaves)."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service._compat.uvicorn_body_into import BODY_INTO, BodyIntoProtocol
from service.api.request_body import read_body
from service.codecs._json_body import (
    BODY_BUFFERS,
    FIRST_BODY_BYTES,
    LARGE_BODY_BYTES,
    GrowingBody,
)
from tests.live_server import free_port

pytestmark = pytest.mark.system

LARGE = LARGE_BODY_BYTES * 3 + 12345  # several reads' worth, and not a round number


async def digest(request: Request) -> Response:
    """The body's length and SHA-256 as `read_body` returns it, and how much of it the server
    read straight into the buffer."""
    body = await read_body(request)
    into = request.scope.get("extensions", {}).get(BODY_INTO)
    return JSONResponse(
        {
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "into": into.filled if into is not None else None,
        }
    )


async def plain(request: Request) -> Response:
    """Starlette's own body reading: uvicorn's messages, never the extension."""
    body = await request.body()
    return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})


async def ignore(request: Request) -> Response:
    return Response(b"not read")


APP = Starlette(
    routes=[
        Route("/digest", digest, methods=["POST"]),
        Route("/plain", plain, methods=["POST"]),
        Route("/ignore", ignore, methods=["POST"]),
    ]
)


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def address(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    port = free_port()
    # uvicorn takes any protocol class for `http`; its annotation names asyncio.Protocol only.
    protocol = cast("type[asyncio.Protocol]", BodyIntoProtocol)
    config = uvicorn.Config(APP, host="127.0.0.1", port=port, http=protocol, loop=request.param)
    config.log_level = "warning"
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def _body(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _request(path: str, body: bytes, *extra: str) -> bytes:
    headers = [f"POST {path} HTTP/1.1", "host: test", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def _read_response(sock: socket.socket, pending: bytearray) -> tuple[bytes, bytes]:
    """(status line, body) of the next response on `sock`; `pending` keeps what follows it."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length")
    )
    pending[:] = rest
    while len(pending) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        pending += chunk
    body = bytes(pending[:length])
    del pending[:length]
    return lines[0], body


def _expected(body: bytes, *, into: int | None) -> dict[str, object]:
    return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "into": into}


def _json(answer: bytes) -> object:
    import json

    return json.loads(answer)


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=20)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_large_bodies_in_turn_on_one_connection(address: tuple[str, int]) -> None:
    bodies = [_body(LARGE, 1), b'{"small": true}', _body(LARGE + 1, 2), _body(LARGE_BODY_BYTES, 3)]
    pending = bytearray()
    with _connect(address) as sock:
        for body in bodies:
            sock.sendall(_request("/digest", body))
            status, answer = _read_response(sock, pending)
            assert status == b"HTTP/1.1 200 OK"
            # Large bodies are read into the buffer whole; small ones come as messages.
            into = len(body) if len(body) >= LARGE_BODY_BYTES else None
            if into is None:
                assert _json(answer)["into"] == 0  # type: ignore[index]
                continue
            assert _json(answer) == _expected(body, into=into)


def test_pipelined_requests_are_answered_in_order(address: tuple[str, int]) -> None:
    bodies = [_body(LARGE, 4), _body(LARGE, 5), b"x" * 100]
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(b"".join(_request("/digest", body) for body in bodies))
        answers = [_json(_read_response(sock, pending)[1]) for _ in bodies]
    assert answers[0] == _expected(bodies[0], into=LARGE)
    assert answers[1] == _expected(bodies[1], into=LARGE)
    assert answers[2]["sha256"] == hashlib.sha256(bodies[2]).hexdigest()  # type: ignore[index]


def test_a_body_that_trickles_in(address: tuple[str, int]) -> None:
    """Some of the body arrives before the app asks for it, the rest in small pieces after."""
    body = _body(LARGE, 6)
    message = _request("/digest", body)
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(message[: len(message) - len(body) + 100_000])
        time.sleep(0.2)  # the app asks now: 100 kB of the body are already there
        for start in range(len(message) - len(body) + 100_000, len(message), 700_001):
            sock.sendall(message[start : start + 700_001])
            time.sleep(0.01)
        _, answer = _read_response(sock, pending)
    assert _json(answer) == _expected(body, into=LARGE)


def test_expect_100_continue(address: tuple[str, int]) -> None:
    body = _body(LARGE, 7)
    message = _request("/digest", body, "expect: 100-continue")
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(message[: len(message) - len(body)])
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body)
        _, answer = _read_response(sock, pending)
    assert _json(answer) == _expected(body, into=LARGE)


@pytest.mark.parametrize("path", ["/plain", "/ignore"])
def test_an_app_that_does_not_ask_gets_uvicorns_messages(
    address: tuple[str, int], path: str
) -> None:
    """Starlette's `body()` reads the messages; an app that never reads leaves the body to be
    skipped. Either way the next request on the connection is served."""
    body, after = _body(LARGE, 8), _body(LARGE, 9)
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(_request(path, body))
        status, answer = _read_response(sock, pending)
        assert status == b"HTTP/1.1 200 OK"
        if path == "/plain":
            assert _json(answer) == {"length": LARGE, "sha256": hashlib.sha256(body).hexdigest()}
        sock.sendall(_request("/digest", after))
        _, answer = _read_response(sock, pending)
    assert _json(answer) == _expected(after, into=LARGE)


def test_a_client_that_leaves_mid_body(address: tuple[str, int]) -> None:
    body = _body(LARGE, 10)
    message = _request("/digest", body)
    with _connect(address) as sock:
        sock.sendall(message[: len(message) - len(body) // 2])
        time.sleep(0.1)
    after = _body(LARGE, 11)
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(_request("/digest", after))
        _, answer = _read_response(sock, pending)
    assert _json(answer) == _expected(after, into=LARGE)


def test_the_protocol_is_buffered_for_the_event_loop() -> None:
    """uvloop reads into `get_buffer` only for a protocol that is not an `asyncio.Protocol`."""
    assert issubclass(BodyIntoProtocol, asyncio.BufferedProtocol)
    assert not issubclass(BodyIntoProtocol, asyncio.Protocol)


def test_a_chunked_body_is_left_to_uvicorn(address: tuple[str, int]) -> None:
    """Chunks carry their own framing: such a body is never read around the parser."""
    body = _body(LARGE, 12)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[start : start + 500_000]), body[start : start + 500_000])
        for start in range(0, len(body), 500_000)
    )
    head = "POST /plain HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(head.encode() + chunks + b"0\r\n\r\n")
        _, answer = _read_response(sock, pending)
        assert _json(answer) == {"length": LARGE, "sha256": hashlib.sha256(body).hexdigest()}
        sock.sendall(_request("/digest", body))
        _, answer = _read_response(sock, pending)
    assert _json(answer) == _expected(body, into=LARGE)


class _Grown:
    """The `GrowingBody`s made while it is in use, with the buffers each went through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bodies: list[GrowingBody] = []
        self.buffers: list[list[int]] = []  # ids of the mmaps of each body, in turn
        grown = self
        original_init, original_grow = GrowingBody.__init__, GrowingBody.grow

        def init(body: GrowingBody, size: int) -> None:
            original_init(body, size)
            grown.bodies.append(body)
            grown.buffers.append([id(body._buffer)])

        def grow(body: GrowingBody, filled: int) -> memoryview:
            view = original_grow(body, filled)
            grown.buffers[grown.bodies.index(body)].append(id(body._buffer))
            return view

        monkeypatch.setattr(GrowingBody, "__init__", init)
        monkeypatch.setattr(GrowingBody, "grow", grow)


def test_a_body_grows_its_buffer_in_place_as_it_arrives(
    address: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new buffer starts at FIRST_BODY_BYTES and doubles as the body fills it: the mmap is
    resized (its pages move), not copied, and the body arrives whole."""
    BODY_BUFFERS.clear()  # no idle buffer that holds the whole body
    grown = _Grown(monkeypatch)
    body = _body(5 * FIRST_BODY_BYTES + 12345, 13)
    pending = bytearray()
    with _connect(address) as sock:
        sock.sendall(_request("/digest", body))
        _, answer = _read_response(sock, pending)
    assert _json(answer) == _expected(body, into=len(body))
    (buffers,) = grown.buffers
    assert len(buffers) == 4  # 4 MiB, 8, 16, then the body's 20 MiB and a bit
    assert len(set(buffers)) == 1, "a buffer was copied instead of resized"


def test_a_declared_length_reserves_nothing_before_the_bytes_arrive(
    address: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a client that declared 500 MB and sent nothing had a 500 MB buffer mapped for
    it (200 such sockets: 100 GB of address space)."""
    BODY_BUFFERS.clear()
    grown = _Grown(monkeypatch)
    with _connect(address) as sock:
        head = _request("/digest", b"")
        head = head.replace(b"content-length: 0", b"content-length: 500000000")
        sock.sendall(head + b"x" * 1000)
        deadline = time.monotonic() + 20
        while not grown.bodies and time.monotonic() < deadline:
            time.sleep(0.01)
        assert grown.bodies, "the app did not start reading the body"
        assert len(grown.bodies[0]._buffer) == FIRST_BODY_BYTES


@pytest.mark.anyio
async def test_chunks_from_another_server_grow_the_buffer_too() -> None:
    """Under a server without the extension, the body's chunks are copied into a buffer that
    grows the same way."""
    BODY_BUFFERS.clear()
    body = _body(3 * FIRST_BODY_BYTES + 7, 14)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1_000_003):
            yield body[start : start + 1_000_003]

    transport = httpx.ASGITransport(app=APP)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(
            "/digest", content=pieces(), headers={"content-length": str(len(body))}
        )
    assert response.json() == _expected(body, into=None)
