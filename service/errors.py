"""The exceptions raised by the engine, the codecs and the database layer.

The API maps each class to one HTTP status and an RFC 9457 problem type, in one place
(`service.api.problems`). Nothing here knows about HTTP.

    LossServiceError
     ├── InvalidInput       a value breaks the contract: bad shape, NaN, label out of range (422)
     ├── LimitExceeded      a body or tensor over a configured size limit (413)
     ├── NotFound           no such model or run (404)
     ├── Conflict           the request contradicts stored state: a closed run, a reused key (409)
     ├── Unauthorized       API keys are configured and the request has none of them (401)
     └── ServiceUnavailable  try again later: the answer carries `Retry-After` (503)
          ├── ComputeTimeout       the computation outlived the request timeout
          ├── Overloaded           every compute slot stayed busy past the queue timeout
          ├── DatabaseUnavailable  the database cannot be reached, or stayed busy too long
          └── Starting             the process is not ready yet (its kernels are compiling)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FieldPath = tuple[str | int, ...]

# What a message may echo of a client's value: a few levels of nesting, a line of text.
SHOWN_CHARS = 80
SHOWN_DEPTH = 2


class LossServiceError(Exception):
    """Base class: `detail` is for people, `field` locates the offending input."""

    slug = "error"
    title = "Error"

    def __init__(self, detail: str, *, field: str | Sequence[str | int] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field: FieldPath = (field,) if isinstance(field, str) else tuple(field)


class InvalidInput(LossServiceError):
    slug = "invalid-input"
    title = "Invalid input"


class LimitExceeded(LossServiceError):
    slug = "limit-exceeded"
    title = "Payload exceeds a configured limit"


class NotFound(LossServiceError):
    slug = "not-found"
    title = "Not found"


class Conflict(LossServiceError):
    """The request is well formed but cannot apply to what is stored (a closed run, a batch id
    already used for other bytes); repeating it unchanged will fail the same way."""

    slug = "conflict"
    title = "Conflict with the stored state"


class Unauthorized(LossServiceError):
    slug = "unauthorized"
    title = "Missing or invalid API key"


class ServiceUnavailable(LossServiceError):
    """The request may succeed later; `retry_after_s` is the wait suggested to the client."""

    slug = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ComputeTimeout(ServiceUnavailable):
    slug = "timeout"
    title = "The computation exceeded the request timeout"


class Overloaded(ServiceUnavailable):
    slug = "overloaded"
    title = "Every compute slot is busy"


class DatabaseUnavailable(ServiceUnavailable):
    """The database is down, unreachable or stayed busy past its timeouts. The detail names the
    kind of failure only: never the URL, which may hold a password."""

    slug = "database-unavailable"
    title = "The database is unavailable"


class Starting(ServiceUnavailable):
    slug = "starting"
    title = "The service is starting"


def shown(value: object, *, max_chars: int = SHOWN_CHARS) -> str:
    """`value` as an error message echoes it: like `repr` for the JSON types, but at most
    `max_chars` characters and `SHOWN_DEPTH` levels of nesting, and never an exception.

    `repr` of a client's value is neither: an array nested 1000 deep raises RecursionError, an
    integer of 5000 digits raises ValueError, and a 100 MB string is copied into the answer.
    """
    try:
        text = _shown(value, SHOWN_DEPTH, max_chars)
    except Exception:  # a message must never fail: say what the value is instead
        text = f"a value of type {type(value).__name__}"
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _shown(value: object, depth: int, room: int) -> str:
    """`value` in about `room` characters (the caller cuts the rest), `depth` levels down."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        # str() of an int is quadratic in its digits, and refused past 4300 of them.
        return (
            repr(value) if value.bit_length() <= 256 else f"an integer of {value.bit_length()} bits"
        )
    if isinstance(value, str):
        return repr(value[:room]) + ("..." if len(value) > room else "")
    if isinstance(value, list | tuple | Mapping):
        opening, closing = ("{", "}") if isinstance(value, Mapping) else ("[", "]")
        if not value:
            return opening + closing
        if depth == 0:
            return f"{opening}...{closing}"
        parts: list[str] = []
        used = 0
        items = value.items() if isinstance(value, Mapping) else ((None, item) for item in value)
        for key, item in items:
            if used >= room:
                parts.append("...")
                break
            part = _shown(item, depth - 1, room - used)
            if key is not None:
                part = f"{_shown(key, 0, room - used)}: {part}"
            parts.append(part)
            used += len(part) + 2
        return opening + ", ".join(parts) + closing
    return f"a value of type {type(value).__name__}"  # not a JSON value: its repr could be anything
