"""Evaluation runs under `/v1/runs`: create, list, get, close, delete, add batches, the diagram.

Each route is decode -> one core call (`service.core.runs.usecases`) on a worker thread -> the
answer. A batch may come as JSON (any tensor form) or as an Open Inference Protocol binary body
(`Inference-Header-Content-Length`), decoded on the worker thread (`service.api.batch_body`).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from service.api.batch_body import add_batch_from_body
from service.api.deps import ComputeDep, DrawDep, RunStoreDep, require_api_key
from service.api.problems import problem_responses
from service.api.request_body import read_body
from service.api.routes.calibration import IMAGE_RESPONSES
from service.api.routing import OrjsonResponse, OrjsonRoute
from service.codecs import oip
from service.core.calibration import draw_diagram
from service.core.runs import usecases
from service.core.runs.models import (
    BatchId,
    BatchReceipt,
    Run,
    RunCreate,
    RunList,
    StoredBatch,
)
from service.plots import MEDIA_TYPES, ImageFormat

router = APIRouter(
    prefix="/v1/runs",
    route_class=OrjsonRoute,
    tags=["runs"],
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401, 413, 422, 500, 503),
)

RunId = Annotated[uuid.UUID, Path(description="the run's id (a UUID)")]


@router.post(
    "",
    name="create_run",
    summary="Create an evaluation run: the losses and calibration every batch adds to",
    status_code=201,
    response_model=Run,
    responses={201: {"headers": {"Location": {"schema": {"type": "string"}}}}},
)
async def create_run(body: RunCreate, compute: ComputeDep, store: RunStoreDep) -> Response:
    run = await compute.run(usecases.create_run, store, body)
    return OrjsonResponse(run, status_code=201, headers={"Location": f"/v1/runs/{run.id}"})


@router.get("", name="list_runs", summary="Evaluation runs, newest first")
async def list_runs(
    compute: ComputeDep,
    store: RunStoreDep,
    limit: Annotated[int, Query(ge=1, le=usecases.MAX_PAGE)] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="from `next_cursor`")] = None,
) -> RunList:
    return await compute.run_io(usecases.list_runs, store, limit, cursor)


@router.get(
    "/{run_id}",
    name="get_run",
    summary="A run's report: every loss and the calibration over all its batches",
    response_model=Run,
    responses=problem_responses(404),
)
async def get_run(run_id: RunId, compute: ComputeDep, store: RunStoreDep) -> Response:
    return OrjsonResponse(await compute.run_io(usecases.get_run, store, run_id))


@router.delete(
    "/{run_id}",
    name="delete_run",
    summary="Delete a run and its batches",
    status_code=204,
    response_class=Response,
    responses=problem_responses(404),
)
async def delete_run(run_id: RunId, compute: ComputeDep, store: RunStoreDep) -> Response:
    await compute.run_io(usecases.delete_run, store, run_id)
    return Response(status_code=204)


@router.post(
    "/{run_id}/close",
    name="close_run",
    summary="Close a run: later batches are refused (409)",
    response_model=Run,
    responses=problem_responses(404),
)
async def close_run(run_id: RunId, compute: ComputeDep, store: RunStoreDep) -> Response:
    return OrjsonResponse(await compute.run_io(usecases.close_run, store, run_id))


_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BatchBody"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "an Open Inference Protocol binary body: the JSON header "
                f"(`{oip.HEADER_LENGTH}` bytes) naming the inputs `logits` and `labels`, then "
                "their bytes",
            },
        },
    }
}


@router.put(
    "/{run_id}/batches/{batch_id}",
    name="add_batch",
    summary="Add a batch under the client's idempotency key",
    description="The first PUT of a `batch_id` answers 201; the same tensors again answer 200 "
    "with `duplicate: true` and change nothing; other tensors under a used `batch_id`, or any "
    "batch to a closed run, answer 409. A batch counts entirely or not at all.",
    response_model=BatchReceipt,
    status_code=201,
    responses={
        200: {"description": "A duplicate: this batch was stored before", "model": BatchReceipt},
        **problem_responses(404, 409),
    },
    openapi_extra=_BATCH_BODY,
)
async def add_batch(
    run_id: RunId,
    batch_id: Annotated[BatchId, Path(description="the client's idempotency key")],
    request: Request,
    compute: ComputeDep,
    store: RunStoreDep,
) -> Response:
    body = await read_body(request)
    receipt = await compute.run(
        add_batch_from_body,
        store,
        run_id,
        batch_id,
        body,
        request.headers.get("content-type"),
        request.headers.get(oip.HEADER_LENGTH),
    )
    return OrjsonResponse(receipt, status_code=200 if receipt.duplicate else 201)


@router.get(
    "/{run_id}/batches/{batch_id}",
    name="get_batch",
    summary="A batch the run has counted: its digest, rows and time (404: not counted)",
    description="What a client resuming an upload asks before sending a batch again: a stored "
    "`digest` equal to its own means the batch counted already.",
    response_model=StoredBatch,
    responses=problem_responses(404),
)
async def get_batch(
    run_id: RunId,
    batch_id: Annotated[BatchId, Path(description="the client's idempotency key")],
    compute: ComputeDep,
    store: RunStoreDep,
) -> Response:
    return OrjsonResponse(await compute.run_io(usecases.get_batch, store, run_id, batch_id))


@router.get(
    "/{run_id}/reliability-diagram",
    name="run_reliability_diagram",
    summary="The reliability diagram of a run's calibration, as PNG or SVG",
    response_class=Response,
    responses={**IMAGE_RESPONSES, **problem_responses(404)},
)
async def run_reliability_diagram(
    run_id: RunId,
    compute: ComputeDep,
    draw: DrawDep,
    store: RunStoreDep,
    image_format: Annotated[
        ImageFormat, Query(alias="format", description="`png` (600 x 700 px) or `svg`")
    ] = "png",
) -> Response:
    metrics = await compute.run_io(usecases.run_metrics, store, run_id)
    image = await draw.run(draw_diagram, metrics, image_format)
    return Response(content=image, media_type=MEDIA_TYPES[image_format])
