"""Use case: one loss on decoded inputs, and the one place a loss's engine function is called."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from service.core.context import Context
from service.core.registry import LossSpec
from service.core.responses import loss_response
from service.engine import Array, ComputeDtype, LossResult, Reduction
from service.schemas import LossRequest, LossResponse
from service.schemas.losses import loss_options


def call_loss(
    spec: LossSpec,
    inputs: Mapping[str, Array],
    options: BaseModel,
    *,
    compute_dtype: ComputeDtype | None,
    reduction: Reduction | None = None,
) -> LossResult:
    """`spec`'s engine function on `inputs` (by input name) with the options set in `options`
    (a request model: its loss options are the fields that are neither common nor tensors).

    `reduction` is the reduction the caller will apply: a loss whose fused kernel takes it
    writes the gradient already scaled (`service.engine._reduction`). Leave it None when the
    results of several calls are combined before one reduction (the offline CLI's chunks).
    """
    scaled = {"grad_reduction": reduction} if reduction and spec.takes_grad_reduction else {}
    arguments: dict[str, Any] = {**inputs, **loss_options(options), **scaled}
    return spec.function(**arguments, compute_dtype=compute_dtype)


def compute_loss(spec: LossSpec, body: LossRequest, *, ctx: Context) -> LossResponse:
    """`POST /v1/losses/{name}`: decode `body`'s tensors, call the loss once, build the answer."""
    inputs, first = ctx.decode_tensors(body)
    result = call_loss(
        spec, inputs, body, compute_dtype=body.compute_dtype, reduction=body.reduction
    )
    form = body.output_encoding or (first.form if first else "json")
    input_dtype = first.array.dtype if first else None
    return loss_response(spec.name, result, body, form, input_dtype, ctx.backend)
