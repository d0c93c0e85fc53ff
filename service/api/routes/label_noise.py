"""`POST /v1/label-noise`: confident learning (Northcutt et al. 2021), as cleanlab 2.x."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.api.deps import ComputeDep, require_api_key
from service.api.problems import problem_responses
from service.api.routing import OrjsonResponse, OrjsonRoute
from service.core.label_noise import label_noise
from service.schemas.label_noise import LabelNoiseRequest, LabelNoiseResponse

router = APIRouter(
    prefix="/v1",
    route_class=OrjsonRoute,
    tags=["label-noise"],
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401, 413, 422, 500, 503),
)


@router.post(
    "/label-noise",
    name="label_noise",
    summary="Likely label errors and the label noise matrix, from out-of-sample probabilities",
    description="Confident learning (Northcutt, Jiang & Chuang, JAIR 2021), with the results of "
    "cleanlab 2.x: the same issues in the same order. The probabilities must be out-of-sample "
    "(cross-validated). `transition_matrix` can be passed to `forward-corrected-cross-entropy` "
    "as it is.",
    response_model=LabelNoiseResponse,
)
async def label_noise_route(body: LabelNoiseRequest, compute: ComputeDep) -> Response:
    return OrjsonResponse(await compute.run(label_noise, body))
