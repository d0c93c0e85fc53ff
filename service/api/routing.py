"""JSON bodies read and written with orjson instead of the standard library and pydantic.

FastAPI reads a JSON body with `Request.body()` then `Request.json()`; `OrjsonRoute` hands it a
request that reads a large body into one buffer (`read_body`) and parses it with
`service.codecs.loads_json`: orjson, about 3x faster than the standard library on the float
arrays that make up most bodies here, with long base64 strings left in the body. orjson is strict
JSON (no NaN or Infinity literals) and its decode error is a `json.JSONDecodeError`, so malformed
bodies still become FastAPI's 422 `json_invalid`.

`OrjsonResponse` writes a response model without pydantic's serializer: output tensors in the
JSON form are NumPy arrays (`service.codecs.json_array`) that orjson writes natively, ~10x
faster than turning 10^7 floats into Python lists first; base64 outputs (`Base64Output`) are not
copied into the JSON but encoded piece by piece as they are sent, between the pieces of JSON
around them (`PiecesResponse`).
The routes still declare their `response_model`, which is what the OpenAPI document shows.

`TailCheckedRoute` (every route class here) turns away a request whose path cannot be its own
before FastAPI's costlier matching. `ModelBodyRoute` (the loss routes) calls an endpoint that
takes a body model and the request without FastAPI's per-request dependency solving, with
FastAPI's answers to every body; `PathParamsRoute` (the OIP infer routes) one that takes its path
parameters and the request.
"""

from __future__ import annotations

import email.message
import functools
import inspect
import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, cast

import anyio
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.convertors import StringConvertor
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from service.api.request_body import read_body
from service.codecs import BodyPiece, body_pieces, loads_json
from service.codecs._json_body import JsonBody
from service.core.responses import render_json

# Bodies from this size on are parsed on a worker thread (a thread hop costs ~0.1 ms: below
# this, parsing inline is cheaper than the hop).
PARSE_ON_LOOP_BYTES = 64 * 1024


def parsing_lane(app: Any) -> anyio.CapacityLimiter:
    """The one worker thread of an app that parses large bodies, made on first use (within the
    app's event loop).

    orjson holds the GIL for a whole parse (~10 ms per MB of nested numbers): the event loop
    gets it back between two parses, not during one. With one parse at a time it waits for at
    most one; with many threads parsing at once it waited behind several in turn (8 bodies of
    39 MB stalled /healthz for up to 4.7 s with a thread each, 1.0 s with one lane), and the
    parses took twice as long in all, fighting over the GIL.
    """
    lane: anyio.CapacityLimiter | None = getattr(app.state, "parsing_lane", None)
    if lane is None:
        lane = app.state.parsing_lane = anyio.CapacityLimiter(1)
    return lane


class OrjsonRequest(Request):
    """FastAPI reads a JSON body with `body()` then `json()`, and nothing else of the request;
    both are cached here, under names of this class (Starlette's own caches are private)."""

    _read: JsonBody | None = None
    _parsed: Any = None

    async def body(self) -> bytes:
        if self._read is None:
            # An mmap for a large body: FastAPI only tests it for emptiness, then asks json().
            self._read = await read_body(self)
        return cast(bytes, self._read)

    async def json(self) -> Any:
        if self._parsed is None:
            body = cast(JsonBody, await self.body())
            if len(body) < PARSE_ON_LOOP_BYTES:
                self._parsed = loads_json(body)
            else:
                # orjson takes ~10 ms per MB of nested numbers, time in which the event loop
                # would answer nothing, health probes included.
                lane = parsing_lane(self.app)
                self._parsed = await anyio.to_thread.run_sync(loads_json, body, limiter=lane)
        return self._parsed


class TailCheckedRoute(APIRoute):
    """Starlette tries an app's routes one after another, and FastAPI's `matches` costs
    microseconds each (its route-context lookups, then the path's regular expression): a request
    for the tenth route paid for nine. This route first checks the literal tail of its path (all
    of a fixed path, `/infer` of `/v2/models/{model_name}/infer`): the path a route matches is the
    request's path less its `root_path` prefix, so a request path that does not end with that
    tail cannot match, and is turned away without the lookups."""

    @functools.cached_property
    def literal_tail(self) -> str:
        return self.path[self.path.rfind("}") + 1 :]  # the whole path when it has no parameter

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and not scope["path"].endswith(self.literal_tail):
            return Match.NONE, {}
        return super().matches(scope)


class OrjsonRoute(TailCheckedRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler


class ModelBodyRoute(OrjsonRoute):
    """A route whose endpoint takes its JSON body as one pydantic model (`body`) and the request
    (`request`), nothing else: FastAPI's request handler, which solves every parameter of an
    endpoint as a dependency on every request (a fifth of a small request's time, more with cold
    caches), is replaced by the steps such an endpoint needs, with FastAPI's answers: the body
    parsed as JSON when its media type is JSON, a 422 `json_invalid` when it is not JSON, the
    body validated as FastAPI validates it (errors located under "body"), and a body read that
    fails for another reason a 400. Other endpoints keep FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        parameters = inspect.signature(self.endpoint, eval_str=True).parameters
        if list(parameters) != ["body", "request"]:
            return super().get_route_handler()
        model: type[BaseModel] = parameters["body"].annotation
        endpoint = self.endpoint

        async def route_handler(request: Request) -> Response:
            orjson_request = OrjsonRequest(request.scope, request.receive)
            body = await _json_body(orjson_request)
            try:
                value = model.model_validate(body, from_attributes=True)
            except ValidationError as error:
                errors = error.errors(include_url=False)
                located = [{**e, "loc": ("body", *e["loc"])} for e in errors]
                raise RequestValidationError(located, body=body) from None
            return cast(Response, await endpoint(body=value, request=orjson_request))

        return route_handler


class PathParamsRoute(TailCheckedRoute):
    """A route whose endpoint takes its path parameters (`str`, as matched) and the request,
    nothing else (the OIP infer routes, which read their body themselves): called without
    FastAPI's request handler and its per-request dependency solving, which for such an endpoint
    only hands over what the match found. Other endpoints, and routes with dependencies, keep
    FastAPI's handler."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        parameters = inspect.signature(self.endpoint, eval_str=True).parameters
        path_parameters = [name for name in parameters if name != "request"]
        plain = (
            "request" in parameters
            and not self.dependencies
            and set(path_parameters) == set(self.param_convertors)
            and all(parameters[name].annotation is str for name in path_parameters)
            and all(isinstance(c, StringConvertor) for c in self.param_convertors.values())
        )
        if not plain:
            return super().get_route_handler()
        endpoint = self.endpoint

        async def route_handler(request: Request) -> Response:
            return cast(Response, await endpoint(request=request, **request.path_params))

        return route_handler


async def _json_body(request: OrjsonRequest) -> Any:
    """The body as FastAPI hands it to a body model: parsed JSON when its media type says JSON,
    the bytes otherwise; a missing body is a 422 `missing`."""
    try:
        body = await request.body()
        if not body:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        content_type = request.headers.get("content-type")
        if content_type:  # FastAPI's strict default: no media type, no JSON
            message = email.message.Message()
            message["content-type"] = content_type
            subtype = message.get_content_subtype()
            if message.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            ):
                return await request.json()
        return body
    except json.JSONDecodeError as error:
        invalid = {
            "type": "json_invalid",
            "loc": ("body", error.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": error.msg},
        }
        raise RequestValidationError([invalid], body=error.doc) from error
    except (HTTPException, RequestValidationError):
        raise
    except Exception as error:  # the body read failed (as FastAPI answers it)
        raise HTTPException(
            status_code=400, detail="There was an error parsing the body"
        ) from error


class PiecesResponse(Response):
    """A response whose body is several buffers, sent one after another and never joined."""

    def __init__(
        self,
        pieces: Sequence[BodyPiece],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        # Starlette's Response with no content of its own: it sets the status, the media type
        # and the headers, and keeps the Content-Length given here (the pieces' total).
        fields = {key.lower(): value for key, value in (headers or {}).items()}
        fields["content-length"] = str(sum(len(piece) for piece in pieces))
        super().__init__(None, status_code, fields, media_type or self.media_type)
        self.pieces = pieces

    def joined(self) -> bytes:
        """The whole body in one buffer (for tests and small answers)."""
        return b"".join(body_pieces(self.pieces))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        if len(self.pieces) == 1 and isinstance(self.pieces[0], bytes):  # one message, no more
            await send({"type": "http.response.body", "body": self.pieces[0]})
            return
        for piece in body_pieces(self.pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class OrjsonResponse(PiecesResponse):
    media_type = "application/json"

    def __init__(
        self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(render_json(content), status_code, headers)
