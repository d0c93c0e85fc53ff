"""`POST /v1/evaluate`: several losses from one upload of logits and labels."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.api.deps import ComputeDep, require_api_key
from service.api.problems import problem_responses
from service.api.routing import OrjsonResponse, OrjsonRoute
from service.core.evaluate import EvaluateRequest, EvaluateResponse, evaluate

router = APIRouter(
    prefix="/v1",
    route_class=OrjsonRoute,
    tags=["evaluate"],
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401, 413, 422, 500, 503),
)


@router.post(
    "/evaluate",
    name="evaluate",
    summary="Several losses from one upload; the softmax is computed once",
    response_model=EvaluateResponse,
)
async def evaluate_route(body: EvaluateRequest, compute: ComputeDep) -> Response:
    return OrjsonResponse(await compute.run(evaluate, body))
