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
          └── DatabaseUnavailable  the database cannot be reached, or stayed busy too long
"""

from __future__ import annotations

from collections.abc import Sequence

FieldPath = tuple[str | int, ...]


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
