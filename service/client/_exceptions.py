"""The exceptions the client raises.

    LossServiceError         every error raised by this client on purpose
     ├── APIError            the service answered with an error: the RFC 9457 problem details
     │    ├── InvalidInputError        422 (400 under /v2): bad shapes, labels, options, ...
     │    ├── LimitExceededError       413: a body, tensor or class axis over a server limit
     │    ├── UnauthorizedError        401: API keys are configured and none matched
     │    ├── NotFoundError            404: no such loss (model), run, batch or route
     │    ├── ConflictError            409: a closed run, a batch id used for other tensors
     │    └── ServiceUnavailableError  503: try again later (timeout, overload, database)
     └── ResponseError       the answer is not what the API documents (a client/server mismatch)

Network failures are httpx's own exceptions (`httpx.TransportError` and its subclasses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx


class LossServiceError(Exception):
    """Base class of the client's exceptions."""


class ResponseError(LossServiceError):
    """The service's answer could not be read as the API documents it."""


class APIError(LossServiceError):
    """An error answer, with its problem details (RFC 9457).

    `type` is the problem type (`urn:loss-service:problem:invalid-input`, or `about:blank`;
    None under /v2, whose errors are `{"error": ...}`), `errors` the per-field entries
    (`pointer`, `field`, `detail`), `problem` the whole body as sent.
    """

    def __init__(
        self,
        status: int,
        *,
        type: str | None,
        title: str,
        detail: str,
        errors: Sequence[Mapping[str, Any]] = (),
        problem: Mapping[str, Any] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.problem = dict(problem or {})
        self.response = response

    @property
    def fields(self) -> list[str]:
        """The offending fields, dotted (`labels`, `logits.data`, `losses[1].gamma`)."""
        return [str(error.get("field", "")) for error in self.errors]


class InvalidInputError(APIError):
    """422 (400 under /v2): the request breaks the contract."""


class LimitExceededError(APIError):
    """413: a body, tensor or class axis over a configured limit."""


class UnauthorizedError(APIError):
    """401: API keys are configured and the request had none of them."""


class NotFoundError(APIError):
    """404: no such loss, model, run, batch or route."""


class ConflictError(APIError):
    """409: the request contradicts what the service stored: a batch to a closed run, or a batch
    id already used for other tensors. Sending it again fails the same way."""


class ServiceUnavailableError(APIError):
    """503: the computation outlived the server's request timeout, every compute slot stayed
    busy, or the database is unavailable; `Retry-After` says when to try again."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidInputError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: LimitExceededError,
    422: InvalidInputError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The APIError for an error answer: problem+json, the /v2 `{"error"}` form, or neither."""
    status = response.status_code
    cls = _BY_STATUS.get(status, APIError)
    title = response.reason_phrase or "Error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return cls(
            status,
            type=body.get("type"),
            title=str(body.get("title", title)),
            detail=body["detail"],
            errors=[e for e in body.get("errors", []) if isinstance(e, dict)],
            problem=body,
            response=response,
        )
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return cls(
            status, type=None, title=title, detail=body["error"], problem=body, response=response
        )
    text = response.text[:500] if response.content else title
    return cls(status, type=None, title=title, detail=text, response=response)
