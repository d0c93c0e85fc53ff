"""`POST /v1/calibration`, `/v1/calibration/merge` and `/v1/calibration/reliability-diagram`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from service.api.deps import ComputeDep, DrawDep, require_api_key
from service.api.problems import problem_responses
from service.api.routing import OrjsonRoute
from service.core.calibration import calibrate, diagram_metrics, draw_diagram, merge_states
from service.plots import MEDIA_TYPES, ImageFormat
from service.schemas.calibration import (
    CalibrationMergeRequest,
    CalibrationRequest,
    CalibrationResponse,
    ReliabilityDiagramRequest,
)

router = APIRouter(
    prefix="/v1/calibration",
    tags=["calibration"],
    route_class=OrjsonRoute,  # bodies of float arrays: parsed by orjson, as the loss routes
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401, 413, 422, 500, 503),
)

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The reliability diagram",
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in MEDIA_TYPES.values()
        },
    }
}


@router.post(
    "",
    name="calibration",
    summary="Calibration report (ECE, MCE, Brier, NLL, ...) with a mergeable state",
)
async def calibration_report(body: CalibrationRequest, compute: ComputeDep) -> CalibrationResponse:
    return await compute.run(calibrate, body)


@router.post(
    "/merge",
    name="calibration_merge",
    summary="Calibration report of the union of shards, from their states",
)
async def calibration_merge(
    body: CalibrationMergeRequest, compute: ComputeDep
) -> CalibrationResponse:
    return await compute.run(merge_states, body)


@router.post(
    "/reliability-diagram",
    name="reliability_diagram",
    summary="The reliability diagram, as PNG or SVG",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
async def reliability_diagram_image(
    body: ReliabilityDiagramRequest,
    compute: ComputeDep,
    draw: DrawDep,
    image_format: Annotated[
        ImageFormat, Query(alias="format", description="`png` (600 x 700 px) or `svg`")
    ] = "png",
) -> Response:
    # The statistics in a compute slot, the figure in the drawing slot's queue: a figure that
    # waits to be drawn holds no compute slot.
    metrics = await compute.run(diagram_metrics, body)
    image = await draw.run(draw_diagram, metrics, image_format)
    return Response(content=image, media_type=MEDIA_TYPES[image_format])
