"""What one request adds up to while it runs: read by the observability middleware at its end.

The record lives in a context variable, so that code far from HTTP (the core's tensor decoding,
on a worker thread: anyio copies the context into it, and the record is the same object) can add
to it without knowing about the server. Outside a request there is no record and counting is a
no-op: the offline CLI counts nothing.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

UNMATCHED = "<unmatched>"


@dataclass
class RequestRecord:
    """What one request adds up to while it runs (the middleware publishes it at the end)."""

    method: str
    request_id: str
    route: str = UNMATCHED
    status: int = 500
    request_bytes: int = 0
    response_bytes: int = 0
    elements: int = 0
    problem_type: str | None = None


current_request: ContextVar[RequestRecord | None] = ContextVar("current_request", default=None)


def count_elements(n: int) -> None:
    """Add `n` decoded tensor elements to the current request (no-op outside a request)."""
    record = current_request.get()
    if record is not None:
        record.elements += n
