"""`ModelBodyRoute` hands an endpoint its body model without FastAPI's request handler: every
body gets the answer FastAPI's own handler gives the same endpoint on an `OrjsonRoute` (the same
JSON parser, FastAPI's handling around it)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.routing import ModelBodyRoute, OrjsonRoute

pytestmark = pytest.mark.anyio


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    logits: list[list[float]]
    labels: list[int] = Field(min_length=1)
    reduction: str = "mean"


async def endpoint(body: Body, request: Request) -> Response:
    return Response(body.model_dump_json(), media_type="application/json")


def app() -> FastAPI:
    app = FastAPI()
    for path, route_class in (("/ours", ModelBodyRoute), ("/fastapi", OrjsonRoute)):
        router = APIRouter(route_class=route_class)
        router.add_api_route(path, endpoint, methods=["POST"])
        app.include_router(router)
    return app


JSON = {"content-type": "application/json"}
VALID = b'{"logits": [[0, 1]], "labels": [1]}'
CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("valid", VALID, JSON),
    ("charset", VALID, {"content-type": "application/json; charset=utf-8"}),
    ("vendor json", VALID, {"content-type": "application/vnd.x+json"}),
    ("no media type", VALID, {}),
    ("text/plain", VALID, {"content-type": "text/plain"}),
    ("empty", b"", JSON),
    ("not json", b'{"logits": [[0, 1]', JSON),
    ("not utf-8", b'{"logits": "\xff"}', JSON),
    ("a list", b"[1, 2]", JSON),
    ("null", b"null", JSON),
    ("field missing", b'{"logits": [[0, 1]]}', JSON),
    ("wrong type", b'{"logits": "x", "labels": [1.5]}', JSON),
    ("extra field", b'{"logits": [[0]], "labels": [0], "other": 1}', JSON),
    ("too short", b'{"logits": [[0]], "labels": []}', JSON),
]  # fmt: skip


@pytest.mark.parametrize(("body", "headers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_every_body_gets_fastapis_answer(body: bytes, headers: dict[str, str]) -> None:
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ours = await client.post("/ours", content=body, headers=headers)
        theirs = await client.post("/fastapi", content=body, headers=headers)
    assert ours.status_code == theirs.status_code
    answer: Any = ours.json()
    assert answer == theirs.json()


async def test_other_endpoints_keep_fastapis_handler() -> None:
    async def no_body(request: Request) -> dict[str, str]:
        return {}

    route = ModelBodyRoute("/x", no_body, methods=["GET"])
    assert (
        route.get_route_handler().__qualname__
        != "ModelBodyRoute.get_route_handler.<locals>.route_handler"
    )
