"""A plain ASGI middleware that measures and logs every request, and gives it a request id.

It is the outermost middleware of the app: the body-limit 413s and CORS answers are counted too.
It is not a `BaseHTTPMiddleware`, which would buffer bodies and roughly double the latency of
large requests (docs/performance.md); it wraps `receive` and `send` and reads nothing it does not
need: the response body only when it is a small `application/problem+json` (for its `type`).

The request id is the client's `X-Request-ID` when that is short and safe (`REQUEST_ID_PATTERN`),
otherwise a new one; it is returned in `X-Request-ID`, set in `scope["state"]["request_id"]`
for the handlers, and put on every log line written while the request is served.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any

import anyio
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.metrics import Metrics
from service.api.problems import OIP_PREFIX, PROBLEM_MEDIA_TYPE, STATUS_OF, TYPE_PREFIX
from service.errors import InvalidInput
from service.logs import request_id_var
from service.telemetry import UNMATCHED, RequestRecord, current_request

logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Probes and scrapes arrive every few seconds: logged at DEBUG, counted like any other request.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
_MAX_PROBLEM_BYTES = 64 * 1024
# Under /v2 errors are `{"error": ...}` with no type: the type is the one the status stands for
# (the protocol answers invalid input with 400).
_OIP_TYPES = {status: TYPE_PREFIX + cls.slug for cls, status in STATUS_OF.items()}
_OIP_TYPES[400] = TYPE_PREFIX + InvalidInput.slug


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is short and safe, else a new random one (32 hex)."""
    for name, value in headers:
        if name == b"x-request-id":
            presented = value.decode("latin-1")
            if REQUEST_ID_PATTERN.fullmatch(presented):
                return presented
            break
    return os.urandom(16).hex()  # as random as uuid4's 122 bits, without building a UUID


class RouteTemplates:
    """Path -> route template, for requests that routing did not label.

    Starlette sets `scope["route"]` when a route handles the request. A request answered before
    routing (the body limit's 413), by a mount (the static files) or by no route (404) has none:
    its template is found here, from the OpenAPI document's paths and the app's mounts, a table
    built once.
    """

    def __init__(self) -> None:
        self._table: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, path: str, root_path: str) -> str:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if isinstance(template, str):
            return template
        app = scope.get("app")
        if self._table is None and app is not None:
            # Generating the document takes most of a second the first time: not on the loop.
            self._table = await anyio.to_thread.run_sync(self._build, app)
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        for regex, template in self._table or ():
            if regex.match(path):
                return template
        return UNMATCHED

    @staticmethod
    def _build(app: Any) -> list[tuple[re.Pattern[str], str]]:
        try:
            paths = app.openapi().get("paths", {})
        except Exception:  # a metrics label is not worth a failed request: mounts only, then
            logger.exception("no route templates from the OpenAPI document")
            paths = {}
        table = [(compile_path(path)[0], path) for path in paths]
        for route in app.routes:
            if isinstance(route, Mount):
                table.append((route.path_regex, route.path_format))
        return table


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.route_template = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        record = RequestRecord(method=scope["method"], request_id=request_id(headers))
        path, root_path = scope["path"], scope.get("root_path", "")
        scope.setdefault("state", {})["request_id"] = record.request_id
        declared = dict(headers).get(b"content-length")
        problem_body: list[bytes] | None = None
        started = False

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record.request_bytes += len(message.get("body", b""))
            return message

        async def observing_send(message: Message) -> None:
            nonlocal problem_body, started
            if message["type"] == "http.response.start":
                started = True
                record.status = message["status"]
                response_headers = list(message.get("headers", []))
                response_headers.append((b"x-request-id", record.request_id.encode()))
                message = {**message, "headers": response_headers}
                if record.status >= 400:
                    content_type = dict(response_headers).get(b"content-type", b"")
                    if content_type.startswith(PROBLEM_MEDIA_TYPE.encode()):
                        problem_body = []
                    else:
                        record.problem_type = _oip_or_blank(path, record.status)
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                record.response_bytes += len(body)
                if problem_body is not None and record.response_bytes <= _MAX_PROBLEM_BYTES:
                    problem_body.append(body)
            await send(message)

        record_token = current_request.set(record)
        id_token = request_id_var.set(record.request_id)
        self.metrics.in_progress.inc()
        try:
            await self.app(scope, counting_receive, observing_send)
        except Exception:
            # The 500 itself is sent by Starlette's ServerErrorMiddleware, outside this one
            # (unless the answer had started: then the client got a truncated one).
            if not started:
                record.status = 500
                record.problem_type = "about:blank"
            raise
        finally:
            duration = time.perf_counter() - start
            self.metrics.in_progress.dec()
            if problem_body is not None:
                record.problem_type = _problem_type(b"".join(problem_body))
            if declared is not None and declared.isdigit():
                record.request_bytes = int(declared)
            record.route = await self.route_template(scope, path, root_path)
            self.metrics.observe(record, duration)
            _log(record, scope, path, duration)
            request_id_var.reset(id_token)
            current_request.reset(record_token)


def _problem_type(body: bytes) -> str:
    try:
        problem = json.loads(body)
    except ValueError:
        return "about:blank"
    kind = problem.get("type") if isinstance(problem, dict) else None
    return kind if isinstance(kind, str) else "about:blank"


def _oip_or_blank(path: str, status: int) -> str:
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return _OIP_TYPES.get(status, "about:blank")
    return "about:blank"


def _log(record: RequestRecord, scope: Scope, path: str, duration_s: float) -> None:
    level = logging.DEBUG if record.route in QUIET_ROUTES and record.status < 400 else logging.INFO
    if not logger.isEnabledFor(level):
        return
    client = scope.get("client")
    logger.log(
        level,
        "%s %s %d",
        record.method,
        record.route,
        record.status,
        extra={
            "method": record.method,
            "route": record.route,
            "path": path,
            "status": record.status,
            "duration_ms": round(duration_s * 1000, 3),
            "request_id": record.request_id,
            "request_bytes": record.request_bytes,
            "response_bytes": record.response_bytes,
            "elements": record.elements,
            "problem_type": record.problem_type,
            "client": f"{client[0]}:{client[1]}" if client else None,
        },
    )
