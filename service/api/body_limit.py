"""A plain ASGI middleware that refuses request bodies over `max_body_bytes` with 413.

It answers from the `Content-Length` header before reading anything, and counts the bytes of
chunked bodies as they arrive, replacing whatever the app answers once the limit is passed. It
is not a `BaseHTTPMiddleware`, which would buffer every body and roughly double the latency of
large requests.

Under a server that does not enforce the `HttpLimits` itself (uvicorn's own protocol, with
`library_internals` off), it also refuses a request with too many or too large header fields
(431: they have arrived by then, so this bounds the work, not the memory they took) and a body
that stalls between two of the server's messages for `body_timeout_s` (408).
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service._compat.http_limits import DEFAULT_LIMITS, HTTP_LIMITS, HttpLimits
from service.api.problems import problem_response
from service.errors import LimitExceeded


class _BodyStalled(Exception):
    """Raised from `receive()` when no part of the body came within `body_timeout_s`."""


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, limits: HttpLimits = DEFAULT_LIMITS
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.limits = limits

    async def _refuse(self, detail: str, scope: Scope, send: Send, status: int = 413) -> None:
        slug, title = LimitExceeded.slug, LimitExceeded.title
        if status == 408:
            slug, title = "request-timeout", "Request Timeout"
        response = problem_response(
            status,
            detail=detail,
            slug=slug,
            title=title,
            # The rest of this request may still be on its way: the connection cannot go on.
            headers={"Connection": "close"} if status != 413 else None,
            path=scope.get("path", ""),
        )
        await response(scope, _no_body, send)

    def _header_problem(self, scope: Scope) -> str | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > self.limits.max_header_count:
            return (
                f"the request has more than max_header_count = {self.limits.max_header_count} "
                "header fields"
            )
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) + 4 for name, value in headers)  # "name: value\r\n"
        if size > self.limits.max_header_bytes:
            return f"the request's head exceeds max_header_bytes = {self.limits.max_header_bytes}"
        return None

    def _message(self, size: int | str) -> str:
        return f"the request body ({size} bytes) exceeds max_body_bytes = {self.max_body_bytes}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A server that enforces the limits says so in the scope; this one may not.
        guarded = HTTP_LIMITS in scope.get("extensions", {})
        if not guarded and (problem := self._header_problem(scope)) is not None:
            await self._refuse(problem, scope, send, status=431)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(self._message(int(declared)), scope, send)
            return

        received = 0
        over_limit = stalled = False

        async def counting_receive() -> Message:
            nonlocal received, over_limit, stalled
            if guarded:
                message = await receive()
            else:
                try:
                    with anyio.fail_after(self.limits.body_timeout_s):
                        message = await receive()
                except TimeoutError:
                    stalled = True
                    raise _BodyStalled from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over_limit = True
                    raise LimitExceeded(self._message(f"more than {self.max_body_bytes}"))
            return message

        async def guarded_send(message: Message) -> None:
            # However the app reports the interrupted body read (FastAPI makes it a 400), the
            # answer is the 413 or 408 sent below.
            if not (over_limit or stalled):
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except (LimitExceeded, _BodyStalled):
            if not (over_limit or stalled):
                raise
        if over_limit:
            await self._refuse(self._message(f"more than {self.max_body_bytes}"), scope, send)
        elif stalled:
            detail = f"the request's body stalled for body_timeout_s = {self.limits.body_timeout_s}"
            await self._refuse(detail, scope, send, status=408)
