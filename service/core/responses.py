"""A loss's result as the API answers it: reduced, its tensors encoded in the form asked for.

REST, `/v1/evaluate` and the offline CLI build their `LossResponse` here, and `render_json` writes
any response model as the bytes the HTTP routes send, without pydantic's serializer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel

from service.codecs import (
    BodyPiece,
    TensorForm,
    count_output,
    dumps_json,
    encode_tensor,
    json_array,
)
from service.codecs._dtypes import numpy_dtype
from service.engine import (
    Array,
    Backend,
    LossResult,
    array_namespace,
    dtype_name,
    errstate,
    reduce_loss,
)
from service.errors import FieldPath, InvalidInput
from service.schemas import LossResponse
from service.schemas.losses import LossOptions


def loss_response(
    name: str,
    result: LossResult,
    options: LossOptions,
    form: TensorForm,
    input_dtype: np.dtype | None,
    backend: Backend,
    path: FieldPath = (),
) -> LossResponse:
    """Reduce `result` as `options` ask and encode its tensors in `form`. Its output tensors
    count against the answer's budget (`count_output`), named by the options under `path`
    that asked for them."""
    reduced = reduce_loss(result, options.reduction, empty=options.empty)
    if reduced.per_sample is not None:
        count_output(reduced.per_sample.size, (*path, "reduction"))
    if options.return_grad:
        for grad in reduced.grads.values():
            count_output(grad.size, (*path, "return_grad"))
    grads = {
        key: grad_in_dtype(grad, options.grad_dtype, input_dtype)
        for key, grad in reduced.grads.items()
    }
    logits_grad = grads.pop("logits", None)
    dtype = next(iter(reduced.grads.values())).dtype  # the compute dtype, before any cast
    return LossResponse(
        name=name,
        loss=None if math.isnan(reduced.loss) else reduced.loss,
        per_sample=encode_output(reduced.per_sample, form, backend),
        grad=encode_output(logits_grad, form, backend) if options.return_grad else None,
        grads=(
            {key: encode_output(g, form, backend) for key, g in grads.items()}
            if options.return_grad and grads
            else None
        ),
        n_valid=reduced.n_valid,
        weight_sum=reduced.weight_sum,
        backend=backend.name,
        dtype=dtype_name(dtype),  # `str(dtype)` builds the name anew each time
    )


def encode_output(array: Array | None, form: TensorForm, backend: Backend) -> object:
    """An output tensor for the response: base64 objects, or, for JSON, an array that
    `render_json` writes as nested lists without building them in Python."""
    if array is None:
        return None
    host = backend.to_numpy(array)
    return json_array(host) if form == "json" else encode_tensor(host, form)


def grad_in_dtype(grad: Array, grad_dtype: str | None, input_dtype: np.dtype | None) -> Array:
    """The gradient as `grad_dtype` asks: the compute dtype (None), `input`, or a float dtype.

    A float16 or bfloat16 upload can get its gradient back at half the bytes of float32.
    """
    if grad_dtype is None or (grad_dtype == "input" and input_dtype is None):
        return grad
    target = input_dtype if grad_dtype == "input" else numpy_dtype(grad_dtype)
    if target is None or target.kind not in "fV":  # integer inputs: keep the float gradient
        return grad
    if target.itemsize >= grad.dtype.itemsize:
        return grad.astype(target, copy=False)
    xp = array_namespace(grad)
    with errstate(xp, over="ignore"):  # checked below, with the field to name
        narrow = grad.astype(target, copy=False)
    # A gradient past the narrow dtype's range (float16 ends at 65504) would come back as inf:
    # refused rather than answered wrong.
    if not bool(xp.all(xp.isfinite(narrow))):
        raise InvalidInput(
            f"grad_dtype: the gradient does not fit in {target.name} (its largest magnitude is "
            f"{float(xp.max(xp.abs(grad))):.6g}); ask for a wider grad_dtype",
            field="grad_dtype",
        )
    return narrow


def render_json(content: Any) -> list[BodyPiece]:
    """A response model (or plain JSON data) as the pieces of its JSON body.

    Output tensors in the JSON form are NumPy arrays (`json_array`) that orjson writes natively,
    ~10x faster than turning 10^7 floats into Python lists first; base64 outputs are pieces of
    their own, encoded as they are sent.
    """
    return dumps_json(content, default=_fields)


def _fields(value: object) -> dict[str, Any] | list[Any] | float | int | bool:
    """A response model as its fields, shallowly: their values are JSON-ready already. The
    arrays orjson does not write natively, 0-d (a scalar loss's gradient) and non-contiguous
    ones, become Python numbers and lists."""
    if isinstance(value, BaseModel):
        # its field values as stored (`dict(value)` walks them in Python), any extras after
        return {**value.__dict__, **(value.__pydantic_extra__ or {})}
    if isinstance(value, np.ndarray):
        items: list[Any] | float | int | bool = value.tolist()
        return items
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
