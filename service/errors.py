"""The exceptions raised by the engine and the codecs.

The API maps each class to one HTTP status and an RFC 9457 problem type, in one place
(`service.api.problems`). Nothing here knows about HTTP.

    LossServiceError
     ├── InvalidInput       a value breaks the contract: bad shape, NaN, label out of range (422)
     ├── LimitExceeded      a body or tensor over a configured size limit (413)
     ├── NotFound           no such model (the Open Inference Protocol's 404)
     ├── Unauthorized       API keys are configured and the request has none of them (401)
     └── ServiceUnavailable  try again later: the answer carries `Retry-After` (503)
          ├── ComputeTimeout     the computation outlived the request timeout
          ├── Overloaded         every compute slot stayed busy past the queue timeout
          └── Starting           the process is not ready yet (its kernels are compiling)
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


class Starting(ServiceUnavailable):
    slug = "starting"
    title = "The service is starting"
