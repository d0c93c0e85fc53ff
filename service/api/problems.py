"""Every error the service returns, as an RFC 9457 `application/problem+json` body.

One mapping from exception to status and problem type lives here, and `install` wires it for the
service's own exceptions, FastAPI's request validation, Starlette's HTTP errors (404, 405, ...)
and anything unexpected, which becomes a 500 without a traceback in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.errors import (
    Conflict,
    FieldPath,
    InvalidInput,
    LimitExceeded,
    LossServiceError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:loss-service:problem:"
OIP_PREFIX = "/v2"
# An answer to bad input stays small whatever the input: messages name fields, and a field's
# name is the client's (an unknown key of 10 MB), as is the number of invalid items.
MAX_DETAIL_CHARS = 2000
MAX_FIELD_ERRORS = 50


class FieldError(BaseModel):
    pointer: str = Field(description="JSON Pointer to the offending field of the request body")
    field: str = Field(description="the same location, dotted: `logits.data`, `weight[2]`")
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="`urn:loss-service:problem:<slug>`, or `about:blank`")
    title: str
    status: int
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


STATUS_OF: dict[type[LossServiceError], int] = {
    InvalidInput: 422,
    LimitExceeded: 413,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,  # a closed run, a batch id already used for other bytes
    ServiceUnavailable: 503,  # a compute timeout, no compute slot in time, the database down
}

# RFC 9110's reason phrases, which Python 3.13 adopted for these two ("Request Entity Too Large"
# and "Unprocessable Entity" before): the document and the problems' titles do not change with the
# interpreter.
_RFC_9110_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


def status_phrase(status: int) -> str:
    return _RFC_9110_PHRASES.get(status) or HTTPStatus(status).phrase


RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entry declaring each status as a Problem in the OpenAPI document."""
    return {
        status: {
            "description": status_phrase(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            **({"headers": RETRY_AFTER_HEADER} if status == 503 else {}),
        }
        for status in statuses
    }


def problem_response(
    status: int,
    *,
    detail: str,
    slug: str | None = None,
    title: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    """The error response; under `/v2` in the Open Inference Protocol's form, `{"error": ...}`.

    The protocol answers invalid requests with 400, where the rest of the API says 422.
    """
    detail = _clipped(detail)
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return JSONResponse(
            {"error": detail}, status_code=400 if status == 422 else status, headers=headers
        )
    problem = Problem(
        type=TYPE_PREFIX + slug if slug else "about:blank",
        title=title or status_phrase(status),
        status=status,
        detail=detail,
        errors=_bounded(errors or []),
    )
    return JSONResponse(
        problem.model_dump(), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


def _bounded(errors: list[FieldError]) -> list[FieldError]:
    """At most `MAX_FIELD_ERRORS` field errors, each of bounded length."""
    return [
        FieldError(
            pointer=_clipped(error.pointer),
            field=_clipped(error.field),
            detail=_clipped(error.detail),
        )
        for error in errors[:MAX_FIELD_ERRORS]
    ]


def field_error(path: FieldPath, detail: str) -> FieldError:
    pointer = "#" + "".join(f"/{part}" for part in path)
    dotted = ""
    for part in path:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else part)
    return FieldError(pointer=pointer, field=dotted, detail=detail)


def _status_of(exc: LossServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


async def _on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LossServiceError)
    headers = None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, ServiceUnavailable):
        headers = {"Retry-After": str(exc.retry_after_s)}
    return problem_response(
        _status_of(exc),
        detail=exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=[field_error(exc.field, exc.detail)] if exc.field else [],
        headers=headers,
        path=request.url.path,
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        location = tuple(error.get("loc", ()))
        if location[:1] == ("body",):
            location = location[1:]
        if error.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {error.get('ctx', {}).get('error', '')}"
            errors.append(FieldError(pointer="#", field="", detail=message.rstrip(": ")))
            continue
        name = ".".join(str(part) for part in location) or "body"
        errors.append(field_error(location, f"{name}: {error.get('msg', 'invalid value')}"))
    summary = "; ".join(error.detail for error in errors[:MAX_FIELD_ERRORS])
    if len(errors) > MAX_FIELD_ERRORS:
        summary += f"; and {len(errors) - MAX_FIELD_ERRORS} more"
    summary = summary or "the request is invalid"
    return problem_response(
        422,
        detail=summary,
        slug=InvalidInput.slug,
        title=InvalidInput.title,
        errors=errors,
        path=request.url.path,
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else status_phrase(exc.status_code)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
    if exc.status_code == 400:
        # FastAPI's answer to a body its JSON parser gave up on (not UTF-8, nested past the
        # recursion limit): bad input like any other, so the documented 422.
        return problem_response(
            422,
            detail=f"the request body could not be read as JSON ({detail})",
            slug=InvalidInput.slug,
            title=InvalidInput.title,
            path=request.url.path,
        )
    return problem_response(
        exc.status_code, detail=detail, headers=exc.headers, path=request.url.path
    )


async def _on_client_disconnect(request: Request, exc: Exception) -> JSONResponse:
    # The client went away while its body was being read: nobody reads this answer, but the
    # access log and the metrics record a client error, not a server one.
    return problem_response(
        400,
        detail="the client disconnected before its request body arrived",
        path=request.url.path,
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Sent from outside the observability middleware (service.api.observe), so the request id
    # is added here, to the log line and the answer: it is what finds the logged traceback.
    request_id = request.scope.get("state", {}).get("request_id")
    logger.exception(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        extra={"request_id": request_id} if request_id else None,
    )
    detail = "an unexpected error occurred; it has been logged"
    return problem_response(
        500,
        detail=f"{detail} (request id {request_id})" if request_id else detail,
        headers={"X-Request-ID": request_id} if request_id else None,
        path=request.url.path,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(LossServiceError, _on_service_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)
