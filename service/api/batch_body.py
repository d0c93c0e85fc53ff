"""A run's batch from its body: JSON (`logits` and `labels` in any tensor form) or an Open
Inference Protocol binary body naming the inputs `logits` and `labels`. Runs on the worker
thread, with the core call it feeds: nothing proportional to the body happens on the event loop.
"""

from __future__ import annotations

import json
import uuid

import numpy as np

from service.api.inference import decode_inputs, validated
from service.codecs import loads_json, oip
from service.codecs._json_body import JsonBody
from service.core import Context
from service.core.runs import usecases
from service.core.runs.models import BatchBody, BatchReceipt
from service.db import RunStore
from service.errors import InvalidInput
from service.schemas.common import tensor_fields
from service.schemas.oip import InferRequest


def add_batch_from_body(
    store: RunStore,
    run_id: uuid.UUID,
    batch_id: str,
    body: JsonBody,
    content_type: str | None,
    header_length: str | None,
    *,
    ctx: Context,
) -> BatchReceipt:
    logits, labels = decode_batch(body, content_type, header_length, ctx=ctx)
    return usecases.add_batch(store, run_id, batch_id, logits, labels, ctx=ctx)


def decode_batch(
    body: JsonBody, content_type: str | None, header_length: str | None, *, ctx: Context
) -> tuple[np.ndarray, np.ndarray]:
    """`logits` and `labels` as host arrays, with the limits and rules of every tensor field."""
    marks = tensor_fields(BatchBody)
    media_type = (content_type or "").split(";")[0].strip().lower()
    if header_length is not None or media_type == "application/octet-stream":
        header, binary = oip.split_body(body, header_length)
        request = validated(InferRequest, header, ())
        names = {item.name for item in request.inputs}
        if names != marks.keys():
            raise InvalidInput(
                f"inputs: a batch has the inputs logits and labels, got {sorted(names)}",
                field="inputs",
            )
        arrays = decode_inputs(request, binary, marks, ctx=ctx)
        return ctx.backend.to_numpy(arrays["logits"]), ctx.backend.to_numpy(arrays["labels"])
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidInput(
            f"Content-Type: expected application/json or application/octet-stream (an Open "
            f"Inference Protocol binary body), got {media_type!r}",
            field="Content-Type",
        )
    try:
        data = loads_json(body)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"the body is not JSON: {error.msg} at position {error.pos}") from None
    batch = validated(BatchBody, data, ())
    logits = ctx.decode(("logits",), batch.logits, logits=True)
    labels = ctx.decode(("labels",), batch.labels)
    return logits.array, labels.array
