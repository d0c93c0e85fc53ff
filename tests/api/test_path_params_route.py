"""`PathParamsRoute` calls an endpoint of path parameters and the request without FastAPI's
request handler: every request gets the answer FastAPI's handler gives the same endpoint, and
an endpoint it cannot call that way (a dependency, a parameter of another kind) keeps the
handler."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.routing import APIRoute

from service.api.routing import PathParamsRoute

pytestmark = pytest.mark.anyio


async def endpoint(model_name: str, version: str, request: Request) -> Response:
    if model_name == "missing":
        raise HTTPException(404, "no such model")
    body = await request.body()
    text = f"{model_name}|{version}|{len(body)}|{request.url.path}"
    return Response(text, media_type="text/plain")


def app(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    app.router.add_api_route(
        "/v2/models/{model_name}/versions/{version}/infer",
        endpoint,
        methods=["POST"],
        route_class_override=route_class,
    )
    return app


REQUESTS = [
    ("POST", "/v2/models/focal/versions/1/infer", b"abc"),
    ("POST", "/v2/models/a%20b/versions/%C3%A9/infer", b""),  # decoded as FastAPI decodes
    ("POST", "/v2/models/missing/versions/1/infer", b"x"),
    ("GET", "/v2/models/focal/versions/1/infer", b""),
    ("POST", "/v2/models/focal/infer", b""),
]


async def test_answers_are_fastapis() -> None:
    answers = []
    for route_class in (PathParamsRoute, APIRoute):
        transport = httpx.ASGITransport(app=app(route_class))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers.append(
                [
                    ((r := await client.request(m, p, content=b)).status_code, r.text)
                    for m, p, b in REQUESTS
                ]
            )
    assert answers[0] == answers[1]
    assert answers[0][1] == (200, "a b|é|0|/v2/models/a b/versions/é/infer")


def test_other_endpoints_keep_fastapis_handler() -> None:
    def handler_of(path: str, call: object, **options: object) -> str:
        route = PathParamsRoute(path, call, methods=["POST"], **options)  # type: ignore[arg-type]
        return route.get_route_handler().__qualname__

    ours = "PathParamsRoute.get_route_handler.<locals>.route_handler"
    assert handler_of("/m/{model_name}/v/{version}", endpoint) == ours

    async def typed(model_name: int, request: Request) -> Response:
        return Response()

    async def with_query(model_name: str, request: Request, q: str = "") -> Response:
        return Response()

    async def check() -> None:
        return None

    assert handler_of("/m/{model_name:int}", typed) != ours
    assert handler_of("/m/{model_name}", with_query) != ours
    assert (
        handler_of("/m/{model_name}/v/{version}", endpoint, dependencies=[Depends(check)]) != ours
    )
