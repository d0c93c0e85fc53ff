"""The Open Inference Protocol v2 under `/v2`: every loss is a model (`tritonclient.http` works).

Errors on these routes are `{"error": ...}` as the protocol has them (service.api.problems).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.api.api_keys import KeyCheckedByMiddleware
from service.api.deps import compute_for, require_api_key
from service.api.inference import MODEL_VERSION, infer, model_metadata, server_metadata
from service.api.problems import status_phrase
from service.api.request_body import read_body
from service.api.routing import PathParamsRoute, PiecesResponse, TailCheckedRoute
from service.codecs import oip
from service.core.registry import BY_NAME, LossSpec
from service.errors import NotFound, shown
from service.schemas.oip import (
    InferResponse,
    ModelMetadata,
    ModelReady,
    OipError,
    ServerLive,
    ServerMetadata,
    ServerReady,
)

PREFIX = "/v2"
TAGS: list[str | Enum] = ["open-inference-protocol"]
router = APIRouter(prefix=PREFIX, tags=TAGS, route_class=TailCheckedRoute)
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OipError, "description": status_phrase(status)}
    for status in (400, 401, 404, 413, 500, 503)
}


def _spec(model_name: str) -> LossSpec:
    spec = BY_NAME.get(model_name)
    if spec is None:
        raise _UnknownModel(model_name)
    return spec


class _UnknownModel(NotFound):
    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"unknown model {shown(model_name)}; the models are the losses of GET /v1/losses"
        )


@router.get("", name="oip_server_metadata", responses=_ERRORS)
async def server() -> ServerMetadata:
    return server_metadata()


@router.get("/health/live", name="oip_server_live", responses=_ERRORS)
async def live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", name="oip_server_ready", responses=_ERRORS)
async def ready(request: Request) -> ServerReady:
    # As /readyz: not before the compiled kernels are (service.engine._warm_up).
    warm_up = getattr(request.app.state, "warm_up", None)
    return ServerReady(ready=warm_up is not None and warm_up.engine is not None)


# Probes that ask with HEAD (load balancers, `curl -I`) get the GET's status, without a body
# (the server sends none for HEAD). Left out of the OpenAPI document: one operation per probe.
for _path, _probe in (("/health/live", live), ("/health/ready", ready)):
    router.add_api_route(
        _path, _probe, methods=["HEAD"], name=f"{_probe.__name__}_head", include_in_schema=False
    )


@router.get(
    "/models/{model_name}",
    name="oip_model_metadata",
    responses=_ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def model(model_name: str) -> ModelMetadata:
    return model_metadata(_spec(model_name))


@router.get(
    "/models/{model_name}/ready",
    name="oip_model_ready",
    responses=_ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def model_ready(model_name: str) -> ModelReady:
    return ModelReady(name=_spec(model_name).name, ready=True)


_INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "the JSON header (Inference-Header-Content-Length bytes), then "
                "the binary tensors",
            },
        },
    }
}


async def _infer(model_name: str, request: Request) -> Response:
    spec = _spec(model_name)
    body = await read_body(request)
    header_length = request.headers.get(oip.HEADER_LENGTH)
    compute = compute_for(request)  # not a dependency: see `compute_for`
    json_part, binary = await compute.run(
        infer, spec, body, header_length, inline_if_small=not spec.pairwise
    )
    if not binary:
        return PiecesResponse([json_part], media_type="application/json")
    return PiecesResponse(
        [json_part, *binary],
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(json_part))},
    )


async def _infer_version(model_name: str, model_version: str, request: Request) -> Response:
    """Every model has the one version `MODEL_VERSION`; the versioned path answers the same, and
    any other version is a 404 (a client pinned to a version must not get another's answer).

    Its own function so that the OpenAPI document declares `model_version` (a path parameter
    left undeclared makes client generators drop the operation)."""
    spec = _spec(model_name)
    if model_version != MODEL_VERSION:
        raise NotFound(
            f"model {spec.name} has no version {shown(model_version)}; its one version is "
            f"{MODEL_VERSION}"
        )
    return await _infer(model_name, request)


class InferRoute(KeyCheckedByMiddleware, PathParamsRoute):
    """An infer route, on the path of small requests: its API key checked by `ApiKeyMiddleware`
    alone, its endpoint called with the path's parameters and the request (`PathParamsRoute`)."""


def add_infer_routes(app_router: APIRouter) -> None:
    """The two infer routes, on `app_router` (the app's router) itself: a route of an included
    router is matched through it, twice per request (FastAPI finds the route to select it, then
    again to handle it)."""
    for path, name, endpoint in (
        ("/models/{model_name}/infer", "oip_infer", _infer),
        (
            "/models/{model_name}/versions/{model_version}/infer",
            "oip_infer_version",
            _infer_version,
        ),
    ):
        app_router.add_api_route(
            f"{PREFIX}{path}",
            endpoint,
            methods=["POST"],
            name=name,
            summary="Compute a loss: inputs and parameters in, loss / per_sample / grad out",
            response_model=InferResponse,
            responses=_ERRORS,
            openapi_extra=_INFER_OPENAPI,
            tags=TAGS,
            route_class_override=InferRoute,
        )
