"""`TailCheckedRoute` turns away a request whose path does not end with the literal tail of the
route's path before FastAPI's matching: for every path, root_path and method it matches as
FastAPI's `APIRoute` does, on the app's router and in an included, prefixed one."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Match

from service.api.routing import TailCheckedRoute

pytestmark = pytest.mark.anyio

PATHS = ["/v1/losses/cross-entropy", "/v2/models/{model_name}/infer", "/files/{rest:path}"]


async def endpoint() -> dict[str, str]:
    return {"ok": "yes"}


def scope(path: str, root_path: str = "", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "path": path, "root_path": root_path, "method": method}


SCOPES = [
    scope(path, root_path, method)
    for path, root_path in (
        ("/v1/losses/cross-entropy", ""),
        ("/api/v1/losses/cross-entropy", "/api"),  # behind a proxy that strips nothing
        ("/v1/losses/cross-entropy", "/api"),  # a root_path the path does not start with
        ("/v1/losses/cross-entropy/", ""),
        ("/v1/losses/focal", ""),
        ("/x/v1/losses/cross-entropy", ""),
        ("/v2/models/focal/infer", ""),
        ("/v2/models/a/b/infer", ""),
        ("/v2/models//infer", ""),
        ("/v2/models/focal/infer/", ""),
        ("/files/a/b.txt", ""),
        ("/files/", ""),
        ("/", ""),
    )
    for method in ("POST", "GET")
]


@pytest.mark.parametrize("path", PATHS)
def test_a_route_matches_as_fastapis(path: str) -> None:
    ours = TailCheckedRoute(path, endpoint, methods=["POST"])
    theirs = APIRoute(path, endpoint, methods=["POST"])
    for request in [*SCOPES, {"type": "websocket", "path": path, "root_path": ""}]:
        assert ours.matches(dict(request))[0] == theirs.matches(dict(request))[0], request


async def test_routes_answer_as_fastapis_on_the_app_and_in_a_prefixed_router() -> None:
    def app(route_class: type[APIRoute]) -> FastAPI:
        app = FastAPI()
        for path in PATHS:
            app.router.add_api_route(
                path, endpoint, methods=["POST"], route_class_override=route_class
            )
        router = APIRouter(prefix="/v3", route_class=route_class)
        for path in PATHS:
            router.add_api_route(path, endpoint, methods=["POST"])
        app.include_router(router)
        return app

    requests = [(s["method"], s["path"]) for s in SCOPES]
    requests += [(method, f"/v3{path}") for method, path in requests]
    answers = []
    for route_class in (TailCheckedRoute, APIRoute):
        transport = httpx.ASGITransport(app=app(route_class))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers.append([(await client.request(m, p)).status_code for m, p in requests])
    assert answers[0] == answers[1]
    assert 200 in answers[0] and 404 in answers[0] and 405 in answers[0]


def test_the_match_of_a_path_that_cannot_be_the_routes_is_none() -> None:
    route = TailCheckedRoute("/v2/models/{model_name}/infer", endpoint, methods=["POST"])
    assert route.literal_tail == "/infer"
    assert route.matches(scope("/v2/models/focal/ready")) == (Match.NONE, {})
