"""`POST /v1/losses/{name}`: one loss, its per-sample values and its gradient."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service import engine
from service.api.compute import ComputeContext
from service.api.deps import ComputeDep, require_api_key
from service.api.problems import problem_responses
from service.api.schemas import BinaryCrossEntropyRequest, CrossEntropyRequest, LossResponse

router = APIRouter(
    prefix="/v1/losses",
    tags=["losses"],
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401, 413, 422, 500, 503),
)


@router.post(
    "/cross-entropy",
    name="cross_entropy",
    summary="Softmax cross-entropy, as torch.nn.functional.cross_entropy",
)
async def cross_entropy(body: CrossEntropyRequest, compute: ComputeDep) -> LossResponse:
    return await compute.run(_cross_entropy, body, compute)


def _cross_entropy(body: CrossEntropyRequest, compute: ComputeContext) -> LossResponse:
    logits = compute.decode_logits(body.logits)
    result = engine.cross_entropy(
        compute.backend.asarray(logits.array),
        compute.backend.asarray(compute.decode(body.labels, "labels").array),
        weight=compute.decode_optional(body.weight, "weight"),
        ignore_index=body.ignore_index,
        label_smoothing=body.label_smoothing,
        z_loss=body.z_loss,
        compute_dtype=body.compute_dtype,
    )
    return compute.respond("cross-entropy", result, body, logits.form)


@router.post(
    "/binary-cross-entropy",
    name="binary_cross_entropy",
    summary="Binary cross-entropy on logits, as binary_cross_entropy_with_logits",
)
async def binary_cross_entropy(
    body: BinaryCrossEntropyRequest, compute: ComputeDep
) -> LossResponse:
    return await compute.run(_binary_cross_entropy, body, compute)


def _binary_cross_entropy(body: BinaryCrossEntropyRequest, compute: ComputeContext) -> LossResponse:
    logits = compute.decode_logits(body.logits)
    result = engine.binary_cross_entropy(
        compute.backend.asarray(logits.array),
        compute.backend.asarray(compute.decode(body.labels, "labels").array),
        weight=compute.decode_optional(body.weight, "weight"),
        pos_weight=compute.decode_optional(body.pos_weight, "pos_weight"),
        compute_dtype=body.compute_dtype,
    )
    return compute.respond("binary-cross-entropy", result, body, logits.form)
