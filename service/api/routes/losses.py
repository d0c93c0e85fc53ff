"""`POST /v1/losses/{name}` for every loss of the catalogue, and `GET /v1/losses` to list them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from service.api.api_keys import KeyCheckedByMiddleware
from service.api.deps import compute_for
from service.api.problems import problem_responses
from service.api.routing import OrjsonResponse, OrjsonRoute
from service.core.losses import compute_loss
from service.core.registry import BY_NAME, LOSSES, LossSpec
from service.schemas import (
    LossCatalogue,
    LossRequest,
    LossResponse,
    common_options,
    describe_loss,
)


class LossRoute(KeyCheckedByMiddleware, OrjsonRoute):
    """A loss route: JSON read and written by orjson, and, on this path of small requests, its
    API key checked by `ApiKeyMiddleware` alone (no dependency solved per request)."""


router = APIRouter(
    prefix="/v1/losses",
    route_class=LossRoute,
    tags=["losses"],
    responses=problem_responses(401, 500),
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


for _spec in LOSSES:
    router.add_api_route(
        f"/{_spec.name}",
        _endpoint(_spec),
        methods=["POST"],
        name=_spec.operation_id,
        summary=_spec.summary,
        response_model=LossResponse,
        description=f"Reference: {_spec.reference}.",
        responses=problem_responses(413, 422, 503),
    )
