"""Every loss as an Open Inference Protocol v2 model.

A model's inputs are the loss's tensor fields, its options travel in the request `parameters`,
and its outputs are `loss` ([1], FP64), `per_sample` (with `reduction: none`) and `grad` (or
`grad_<input>` for losses whose inputs are not logits). Outputs are JSON unless the request asks
for Triton's binary extension (`binary_data` on an output, or `binary_data_output`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from service import __version__
from service.codecs import TensorLimits, count_output, oip
from service.codecs._dtypes import to_le_bytes
from service.codecs._json_body import JsonBody
from service.core import Context, LossSpec
from service.core.losses import call_loss
from service.core.responses import grad_in_dtype
from service.engine import Array, reduce_loss
from service.errors import FieldPath, InvalidInput, LimitExceeded, shown
from service.schemas.common import TensorField
from service.schemas.oip import (
    InferRequest,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from service.telemetry import count_elements

PLATFORM = "loss-service"
MODEL_VERSION = "1"
EXTENSIONS = ["binary_tensor_data", "parameters"]
_DATATYPES = {"index": "INT64", "float": "FP32"}  # what each kind of input is usually sent as
# Request parameters that belong to the protocol, not to the loss.
PROTOCOL_PARAMETERS = {"binary_data_output", "priority", "timeout"}

Model = TypeVar("Model", bound=BaseModel)


def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=PLATFORM, version=__version__, extensions=EXTENSIONS)


def model_metadata(spec: LossSpec) -> ModelMetadata:
    """Inputs as the loss names them (any numeric datatype is accepted; the usual is listed)."""
    inputs = [
        TensorMetadata(name=name, datatype=_DATATYPES[mark.kind], shape=[-1])
        for name, mark in spec.inputs.items()
    ]
    outputs = [
        TensorMetadata(name="loss", datatype="FP64", shape=[1]),
        TensorMetadata(name="per_sample", datatype="FP32", shape=[-1]),
        *(TensorMetadata(name=name, datatype="FP32", shape=[-1]) for name in _grad_outputs(spec)),
    ]
    return ModelMetadata(
        name=spec.name, versions=[MODEL_VERSION], platform=PLATFORM, inputs=inputs, outputs=outputs
    )


def _grad_outputs(spec: LossSpec) -> list[str]:
    if spec.differentiable == ("logits",):
        return ["grad"]
    return [f"grad_{name}" for name in spec.differentiable]


def infer(
    spec: LossSpec, body: JsonBody, header_length: str | None, *, ctx: Context
) -> tuple[bytes, list[memoryview]]:
    """One inference: the response's JSON and the binary outputs that follow it (views of the
    output arrays: the response sends them as they are)."""
    header, binary = oip.split_body(body, header_length)
    request = validated(InferRequest, header, ())
    binary_default = _flag(request.parameters, ("parameters", "binary_data_output"), False)
    requested = _requested_outputs(request, binary_default, ctx.settings.max_oip_outputs)
    names = [item.name for item in request.inputs]
    options = {k: v for k, v in request.parameters.items() if k not in PROTOCOL_PARAMETERS}
    for name in options.keys() & spec.inputs.keys():
        raise InvalidInput(
            f"parameters.{name}: {name} is a tensor; send it as an input, not a parameter",
            field=("parameters", name),
        )
    # The loss's own schema checks the option values and the input names (placeholders here).
    loss_request = validated(
        spec.request,
        {**options, **{name: [] for name in names}},
        ("parameters",),
        inputs=list(spec.inputs),
    )
    arrays = decode_inputs(request, binary, spec.inputs, ctx=ctx)
    result = call_loss(
        spec,
        arrays,
        loss_request,
        compute_dtype=loss_request.compute_dtype,
        reduction=loss_request.reduction,
    )
    reduced = reduce_loss(result, loss_request.reduction, empty=loss_request.empty)

    available: dict[str, Array] = {"loss": np.array([reduced.loss], dtype=np.float64)}
    if reduced.per_sample is not None:
        available["per_sample"] = reduced.per_sample
    input_dtype = next(iter(arrays.values())).dtype if arrays else None
    for name, grad in reduced.grads.items():
        grad = grad_in_dtype(grad, loss_request.grad_dtype, input_dtype)
        available["grad" if name == "logits" else f"grad_{name}"] = grad

    if requested is None:
        wanted = ["loss", *(["per_sample"] if "per_sample" in available else [])]
        if loss_request.return_grad:
            wanted += [name for name in available if name.startswith("grad")]
        requested = [(name, binary_default) for name in wanted]
    outputs, chunks = [], []
    for index, (name, as_binary) in enumerate(requested):
        if name not in available:
            raise InvalidInput(
                f"outputs.{index}.name: {shown(name)} is not an output of this request; "
                f"available: {', '.join(available)}",
                field=("outputs", index, "name"),
            )
        count_output(available[name].size, ("outputs", index) if request.outputs else ("outputs",))
        array = ctx.backend.to_numpy(available[name])
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": oip.oip_datatype(array),
        }
        if as_binary:
            _, raw = to_le_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = [None if _is_nan(v) else v for v in array.reshape(-1).tolist()]
        outputs.append(entry)
    response = {
        "model_name": spec.name,
        "model_version": MODEL_VERSION,
        "id": request.id,
        "outputs": outputs,
    }
    return orjson.dumps(response), chunks


def _flag(parameters: dict[str, Any], path: FieldPath, default: bool) -> bool:
    """A boolean parameter (`binary_data_output`, `binary_data`): `true` or `false` only; the
    string "false" is not false, and taking it as true would send binary to a JSON client."""
    value = parameters.get(str(path[-1]), default)
    if not isinstance(value, bool):
        dotted = ".".join(str(part) for part in path)
        raise InvalidInput(f"{dotted}: expected true or false, got {shown(value)}", field=path)
    return value


def _requested_outputs(
    request: InferRequest, binary_default: bool, max_outputs: int
) -> list[tuple[str, bool]] | None:
    """The outputs `outputs` asks for, each with whether it is sent as binary; None when the
    request leaves the choice to the model. Checked before anything is computed: each output
    is its own copy in the answer, so one asked for many times multiplied the answer."""
    if request.outputs is None:
        return None
    if len(request.outputs) > max_outputs:
        raise LimitExceeded(
            f"outputs: {len(request.outputs)} entries exceed max_oip_outputs = {max_outputs}",
            field="outputs",
        )
    requested: list[tuple[str, bool]] = []
    for index, output in enumerate(request.outputs):
        if any(name == output.name for name, _ in requested):
            raise InvalidInput(
                f"outputs.{index}.name: {shown(output.name)} is asked for twice; ask for each "
                "output once",
                field=("outputs", index, "name"),
            )
        path: FieldPath = ("outputs", index, "parameters", "binary_data")
        requested.append((output.name, _flag(output.parameters, path, binary_default)))
    return requested


def decode_inputs(
    request: InferRequest,
    binary: bytes | memoryview,
    marks: Mapping[str, TensorField],
    *,
    ctx: Context,
) -> dict[str, Array]:
    """The request's inputs, by name, on the backend; `marks` says which hold logits. Every
    name must be one of `marks` (the caller's model checked it) and appear once."""
    names = [item.name for item in request.inputs]
    if len(set(names)) != len(names):
        raise InvalidInput("inputs: an input name appears twice", field="inputs")
    limits = TensorLimits(max_elements=ctx.settings.max_elements)
    arrays, offset = {}, 0
    for index, item in enumerate(request.inputs):
        field: FieldPath = ("inputs", index)
        chunk = None
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"inputs.{index}.parameters.binary_data_size: {shown(size)} is not a byte "
                    f"count within the {len(binary) - offset} binary bytes left",
                    field=(*field, "parameters", "binary_data_size"),
                )
            chunk, offset = binary[offset : offset + size], offset + size
        is_logits = marks[item.name].logits
        array = oip.decode_input(
            item.shape,
            item.datatype,
            item.data,
            chunk,
            field=field,
            limits=limits,
            allow_neg_inf=is_logits,
        )
        if is_logits:
            ctx.check_classes(field, array)
        count_elements(array.size)
        arrays[item.name] = ctx.backend.asarray(array)
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} binary bytes that no input claims",
            field="inputs",
        )
    return arrays


def validated(
    model: type[Model],
    data: dict[str, Any],
    prefix: FieldPath,
    inputs: list[str] = (),  # type: ignore[assignment]
) -> Model:
    """`model` from `data`; the first problem as an InvalidInput naming the request field."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = tuple(first.get("loc", ()))
        if location[:1] and location[0] in inputs:
            location = ("inputs", *location)
        elif prefix:
            location = (*prefix, *location)
        dotted = ".".join(str(part) for part in location) or "request"
        raise InvalidInput(f"{dotted}: {first.get('msg')}", field=location) from None


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
