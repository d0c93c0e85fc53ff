"""Pieces every request and response shares: tensor fields and the strict body base class.

Tensor fields are validated as opaque JSON here and decoded by `service.codecs`: letting pydantic
walk every float of a 10^7-element nested list would cost seconds. Their OpenAPI schema is the
shared `Tensor` component (`service.api.openapi`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema

TENSOR_REF = {"$ref": "#/components/schemas/Tensor"}


InputRole = Literal["sample", "shared", "broadcast"]
WireKind = Literal["float", "index"]


@dataclass(frozen=True)
class TensorField:
    """Marks a field as a tensor, and says what the core needs to know about it.

    - `role`: `sample`: axis 0 is the sample axis (one row per sample: logits, labels, query);
      `shared`: one value for every sample (a class vector `[C]`, a matrix, InfoNCE's keys);
      `broadcast`: broadcasts elementwise against the inputs, so it is per sample when it has
      their rank (a BCE `weight` of the logits' shape).
    - `kind`: `index` for class indices (sent as integers; OIP's INT64), else `float`.
    - `logits`: it may hold -inf (a masked class) and its last axis counts against
      `max_classes`.
    - `class_axis`: the last axis is the class axis, so axis 0 is the sample axis only with at
      least two axes (softmax losses' logits; not BCE's, whose every element is a sample).
    """

    role: InputRole = "sample"
    kind: WireKind = "float"
    logits: bool = False
    class_axis: bool = False


# Wrapped in allOf: a bare $ref beside a field's description is resolved by pydantic against its
# own definitions, where this component (added by service.api.openapi) does not exist.
_REQUIRED = WithJsonSchema({"allOf": [TENSOR_REF]})
_OPTIONAL = WithJsonSchema({"anyOf": [TENSOR_REF, {"type": "null"}]})


def _present(value: Any) -> Any:
    """A required tensor is not null (the codecs decode what is there; null is absence)."""
    if value is None:
        raise ValueError("a tensor is required here, got null")
    return value


_NOT_NULL = AfterValidator(_present)

Tensor = Annotated[Any, TensorField(), _REQUIRED, _NOT_NULL]
OptionalTensor = Annotated[Any, TensorField(), _OPTIONAL]
IndexLabels = Annotated[Any, TensorField(kind="index"), _REQUIRED, _NOT_NULL]
Logits = Annotated[Any, TensorField(logits=True, class_axis=True), _REQUIRED, _NOT_NULL]
OptionalLogits = Annotated[Any, TensorField(logits=True, class_axis=True), _OPTIONAL]
ElementLogits = Annotated[Any, TensorField(logits=True), _REQUIRED, _NOT_NULL]
SharedTensor = Annotated[Any, TensorField(role="shared"), _REQUIRED, _NOT_NULL]
OptionalSharedTensor = Annotated[Any, TensorField(role="shared"), _OPTIONAL]
OptionalBroadcastTensor = Annotated[Any, TensorField(role="broadcast"), _OPTIONAL]
OutputEncoding = Literal["json", "base64"]


@functools.cache  # read for every request; a model's fields do not change
def tensor_fields(model: type[BaseModel]) -> dict[str, TensorField]:
    """The tensor fields of `model` with their markers: the required ones (the inputs) first,
    each group in declaration order (a mixin's fields would otherwise come first). The same
    dict at every call: read it, do not change it."""
    found = {}
    for name, info in model.model_fields.items():
        for mark in info.metadata:
            if isinstance(mark, TensorField):
                found[name] = mark
    return dict(
        sorted(found.items(), key=lambda item: not model.model_fields[item[0]].is_required())
    )


class Body(BaseModel):
    # Unknown fields are errors: a misspelt option ("label_smothing") must not be ignored.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
