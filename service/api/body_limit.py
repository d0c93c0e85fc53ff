"""A plain ASGI middleware that refuses request bodies over `max_body_bytes` with 413.

It answers from the `Content-Length` header before reading anything, and counts the bytes of
chunked bodies as they arrive, replacing whatever the app answers once the limit is passed. It
is not a `BaseHTTPMiddleware`, which would buffer every body and roughly double the latency of
large requests.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response
from service.errors import LimitExceeded


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def _refuse(self, detail: str, scope: Scope, send: Send) -> None:
        response = problem_response(
            413,
            detail=detail,
            slug=LimitExceeded.slug,
            title=LimitExceeded.title,
            path=scope.get("path", ""),
        )
        await response(scope, _no_body, send)

    def _message(self, size: int | str) -> str:
        return f"the request body ({size} bytes) exceeds max_body_bytes = {self.max_body_bytes}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(self._message(int(declared)), scope, send)
            return

        received = 0
        over_limit = False

        async def counting_receive() -> Message:
            nonlocal received, over_limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over_limit = True
                    raise LimitExceeded(self._message(f"more than {self.max_body_bytes}"))
            return message

        async def guarded_send(message: Message) -> None:
            # However the app reports the interrupted body read (FastAPI makes it a 400), the
            # answer is the 413 sent below.
            if not over_limit:
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except LimitExceeded:
            if not over_limit:
                raise
        if over_limit:
            await self._refuse(self._message(f"more than {self.max_body_bytes}"), scope, send)
