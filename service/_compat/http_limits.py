"""What a connection may send, and how slowly, and the answer that refuses it before any app runs.

`loss-service serve`'s protocol enforces these limits on every connection
(`service._compat.uvicorn_body_into`) and marks each request's scope with `HTTP_LIMITS`; under
another server the app checks what it can itself (`service.api.body_limit`). Nothing here relies
on another library's internals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

HTTP_LIMITS = "loss_service.http_limits"
"""The scope's `extensions` key present when the server enforces `HttpLimits` (its value)."""


@dataclass(frozen=True)
class HttpLimits:
    """What a connection may send, and how slowly (the settings of the same names)."""

    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


DEFAULT_LIMITS = HttpLimits()

_TITLES = {408: "Request Timeout", 431: "Request Header Fields Too Large"}
_SLUGS = {408: "request-timeout", 431: "limit-exceeded"}


def refusal(status: int, detail: str) -> bytes:
    """A complete answer in the service's problem+json form, written before any app runs."""
    body = json.dumps(
        {
            "type": f"urn:loss-service:problem:{_SLUGS[status]}",
            "title": _TITLES[status],
            "status": status,
            "detail": detail,
            "errors": [],
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {_TITLES[status]}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body
