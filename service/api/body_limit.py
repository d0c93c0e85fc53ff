"""A plain ASGI middleware that refuses request bodies over `max_body_bytes` with 413.

It answers from the `Content-Length` header before reading anything, and counts the bytes of
chunked bodies as they arrive. It is not a `BaseHTTPMiddleware`, which would buffer every body
and roughly double the latency of large requests.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response
from service.errors import LimitExceeded


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _message(self, size: int | str) -> str:
        return f"the request body ({size} bytes) exceeds max_body_bytes = {self.max_body_bytes}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = problem_response(
                413,
                detail=self._message(int(declared)),
                slug=LimitExceeded.slug,
                title=LimitExceeded.title,
            )
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the app's body read, so the app's handlers answer 413.
                    raise LimitExceeded(self._message(f"more than {self.max_body_bytes}"))
            return message

        await self.app(scope, counting_receive, send)
