"""`POST /v1/losses/{name}` for every loss of the catalogue, and `GET /v1/losses` to list them.

The loss routes are the path of small requests: `add_loss_routes` puts them on the app's own
router, where matching a request is one regular expression per route. Through an included
router (`router`, which lists the losses) FastAPI matches every request in the included router's
context first, several percent of a small request's time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum

from fastapi import APIRouter, Request, Response

from service.api.api_keys import KeyCheckedByMiddleware
from service.api.deps import compute_for
from service.api.problems import problem_responses
from service.api.routing import ModelBodyRoute, OrjsonResponse
from service.core.losses import compute_loss
from service.core.registry import BY_NAME, LOSSES, LossSpec
from service.schemas import (
    LossCatalogue,
    LossRequest,
    LossResponse,
    common_options,
    describe_loss,
)


class LossRoute(KeyCheckedByMiddleware, ModelBodyRoute):
    """A loss route: JSON read and written by orjson and, on this path of small requests, no
    dependency solved per request: its API key checked by `ApiKeyMiddleware` alone, its body
    handed to the endpoint by `ModelBodyRoute`."""


PREFIX = "/v1/losses"
TAGS: list[str | Enum] = ["losses"]
router = APIRouter(
    prefix=PREFIX, route_class=LossRoute, tags=TAGS, responses=problem_responses(401, 500)
)


@router.get("", name="list_losses", summary="Every loss: inputs, options, defaults, reference")
async def list_losses() -> LossCatalogue:
    return LossCatalogue(
        losses=[
            describe_loss(spec.name, spec.summary, spec.reference, spec.request) for spec in LOSSES
        ],
        common_options=common_options(),
    )


def _endpoint(spec: LossSpec) -> Callable[..., Awaitable[Response]]:
    async def endpoint(body: LossRequest, request: Request) -> Response:
        # Looked up per request, so that tests can stand a spec in for another.
        found = BY_NAME[spec.name]
        compute = compute_for(request)
        answer = await compute.run(compute_loss, found, body, inline_if_small=not found.pairwise)
        return OrjsonResponse(answer)

    # FastAPI reads the body's model from the annotation: each loss has its own.
    endpoint.__annotations__["body"] = spec.request
    return endpoint


def add_loss_routes(app_router: APIRouter) -> None:
    """`POST /v1/losses/{name}` for every loss, on `app_router` (the app's router) itself."""
    for spec in LOSSES:
        app_router.add_api_route(
            f"{PREFIX}/{spec.name}",
            _endpoint(spec),
            methods=["POST"],
            name=spec.operation_id,
            summary=spec.summary,
            response_model=LossResponse,
            description=f"Reference: {spec.reference}.",
            tags=TAGS,
            responses=problem_responses(401, 500, 413, 422, 503),  # `router`'s, then its own
            route_class_override=LossRoute,
        )
