"""Clients that misbehave at the socket, against a real `loss-service serve`: too many or too
large header fields (431), sockets that send nothing, half a head or half a body (closed, 408),
and a client without a key that asks for `100 Continue` (a 401, never a 100).

Each test opens raw sockets; the waits are generous and only guard against a hang. With
`library_internals` off (uvicorn's own protocol) the app still refuses what it can."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.live_server import running_server

pytestmark = pytest.mark.system

KEY = "hostile-test-key"
TIMEOUT_S = "0.5"  # header_timeout_s and body_timeout_s of the servers under test
GUARD_S = 20.0  # how long a test waits for the server before it calls it a hang
SETTINGS = {
    "LOSS_SERVICE_API_KEYS": KEY,
    "LOSS_SERVICE_MAX_HEADER_BYTES": "8192",
    "LOSS_SERVICE_MAX_HEADER_COUNT": "20",
    "LOSS_SERVICE_HEADER_TIMEOUT_S": TIMEOUT_S,
    "LOSS_SERVICE_BODY_TIMEOUT_S": TIMEOUT_S,
    "LOSS_SERVICE_LOG_LEVEL": "warning",
}
CE = "/v1/losses/cross-entropy"
BODY = orjson.dumps({"logits": [[0.0, 1.0]], "labels": [1]})


@pytest.fixture(scope="module", params=["internals", "stock"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = dict(SETTINGS)
    if request.param == "stock":
        settings["LOSS_SERVICE_LIBRARY_INTERNALS"] = "false"
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with running_server(log, **settings) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=GUARD_S)
    return connection


def _head(path: str, *fields: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    else:
        pytest.fail("the server kept the connection open")
    return received


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _problem(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower()
    problem: dict[str, object] = orjson.loads(body)
    return problem


def _send_quietly(connection: socket.socket, data: bytes) -> None:
    """Send what the server takes: it may close the connection before the end, as it should."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        connection.sendall(data)


def _stock(request: pytest.FixtureRequest) -> bool:
    return "stock" in request.node.callspec.id


def test_too_many_header_fields_are_431(server: str) -> None:
    """Regression: 24 MB of header lines were accepted, and slowed every other request."""
    fields = [f"X-Filler-{i}: {i}" for i in range(50)]
    with _connect(server) as connection:
        _send_quietly(connection, _head("/healthz", *fields, method="GET"))
        answer = _answer(connection)
    assert _status(answer) == 431, answer[:300]
    assert "max_header_count = 20" in str(_problem(answer)["detail"])


def test_a_header_value_past_the_limit_is_431(server: str) -> None:
    with _connect(server) as connection:
        _send_quietly(connection, _head("/healthz", "X-Big: " + "a" * 20000, method="GET"))
        answer = _answer(connection)
    assert _status(answer) == 431, answer[:300]
    assert "max_header_bytes = 8192" in str(_problem(answer)["detail"])


def test_a_header_value_past_the_limit_is_431_before_it_ends(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Regression: a 128 MB header value was read whole. The server answers once the head
    passes max_header_bytes, without waiting for the rest (which is never sent here)."""
    if _stock(request):
        pytest.skip("uvicorn's own protocol reads a head whole before anything can refuse it")
    with _connect(server) as connection:
        _send_quietly(connection, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
        answer = _answer(connection)
    assert _status(answer) == 431, answer[:300]
    assert "max_header_bytes = 8192" in str(_problem(answer)["detail"])


def test_heads_within_the_limits_are_answered(server: str) -> None:
    fields = [f"X-Filler-{i}: {'v' * 100}" for i in range(15)]
    with _connect(server) as connection:
        connection.sendall(_head("/healthz", *fields, "Connection: close", method="GET"))
        answer = _answer(connection)
    assert _status(answer) == 200, answer[:300]


def test_a_silent_socket_is_closed(server: str, request: pytest.FixtureRequest) -> None:
    if _stock(request):
        pytest.skip("uvicorn's own protocol has no timeout before a request's first byte")
    with _connect(server) as connection:
        assert _answer(connection) == b""


def test_half_a_head_is_408(server: str, request: pytest.FixtureRequest) -> None:
    if _stock(request):
        pytest.skip("uvicorn's own protocol has no timeout for a request's head")
    with _connect(server) as connection:
        connection.sendall(b"POST /v1/losses/cross-entropy HTTP/1.1\r\nHost: x\r\nX-Half: ")
        answer = _answer(connection)
    assert _status(answer) == 408, answer[:300]
    assert "header_timeout_s" in str(_problem(answer)["detail"])


def test_half_a_body_is_408(server: str) -> None:
    """Regression: a socket that sent half its body kept a request (and its buffer) forever."""
    with _connect(server) as connection:
        head = _head(
            CE,
            f"X-API-Key: {KEY}",
            "Content-Type: application/json",
            f"Content-Length: {len(BODY) + 100}",
        )
        connection.sendall(head + BODY)
        answer = _answer(connection)
    assert _status(answer) == 408, answer[:300]
    assert "body_timeout_s" in str(_problem(answer)["detail"])


def test_a_large_body_that_stalls_is_408(server: str) -> None:
    """As above, for a body large enough to be read into the app's own buffer."""
    with _connect(server) as connection:
        head = _head(
            CE, f"X-API-Key: {KEY}", "Content-Type: application/json", "Content-Length: 5000000"
        )
        connection.sendall(head + b'{"logits": [' + b"[0.0, 1.0], " * 200_000)
        answer = _answer(connection)
    assert _status(answer) == 408, answer[:300]


def test_a_slow_body_that_keeps_coming_is_answered(server: str) -> None:
    """Idle, not total: a body that arrives in pieces, each within the timeout, is read."""
    with _connect(server) as connection:
        head = _head(
            CE,
            f"X-API-Key: {KEY}",
            "Content-Type: application/json",
            f"Content-Length: {len(BODY)}",
            "Connection: close",
        )
        connection.sendall(head)
        for start in range(0, len(BODY), 8):
            connection.sendall(BODY[start : start + 8])
            time.sleep(float(TIMEOUT_S) / 5)
        answer = _answer(connection)
    assert _status(answer) == 200, answer[:300]


def test_no_100_continue_without_a_key(server: str) -> None:
    """Regression: uvicorn answered `100 Continue` to a client without a key, which then sent
    its whole body to be read and parsed before the 401."""
    with _connect(server) as connection:
        head = _head(
            CE, "Content-Type: application/json", "Content-Length: 60000000", "Expect: 100-continue"
        )
        connection.sendall(head)
        answer = _answer(connection)  # the server closes: the body will not come
    assert _status(answer) == 401, answer[:300]
    assert b"100 Continue" not in answer
    assert _problem(answer)["status"] == 401


def test_100_continue_with_a_key(server: str) -> None:
    with _connect(server) as connection:
        head = _head(
            CE,
            f"X-API-Key: {KEY}",
            "Content-Type: application/json",
            f"Content-Length: {len(BODY)}",
            "Expect: 100-continue",
            "Connection: close",
        )
        connection.sendall(head)
        assert connection.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        connection.sendall(BODY)
        assert _status(_answer(connection)) == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"])
def test_head_probes(server: str, path: str) -> None:
    response = httpx.head(server + path, timeout=GUARD_S)
    assert response.status_code == 200
    assert response.content == b""


def test_the_server_still_answers(server: str) -> None:
    """After every test above, on the same server."""
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    response = httpx.post(server + CE, content=BODY, headers=headers, timeout=GUARD_S)
    assert response.status_code == 200, response.text
