"""Request and response bodies, as DESIGN.md names them.

Tensor fields are validated as opaque JSON here and decoded by `service.codecs`: letting pydantic
walk every float of a 10^7-element nested list would cost seconds. Their OpenAPI schema is the
shared `Tensor` component (`service.api.openapi`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.engine import ComputeDtype, EmptyPolicy, Reduction

TENSOR_REF = {"$ref": "#/components/schemas/Tensor"}

# Wrapped in allOf: a bare $ref beside a field's description is resolved by pydantic against its
# own definitions, where this component (added by service.api.openapi) does not exist.
Tensor = Annotated[Any, WithJsonSchema({"allOf": [TENSOR_REF]})]
OptionalTensor = Annotated[Any, WithJsonSchema({"anyOf": [TENSOR_REF, {"type": "null"}]})]
OutputEncoding = Literal["json", "base64"]


class _Body(BaseModel):
    # Unknown fields are errors: a misspelt option ("label_smothing") must not be ignored.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LossRequest(_Body):
    """Fields every loss accepts."""

    reduction: Reduction = Field("mean", description="`none` returns `per_sample`")
    return_grad: bool = Field(False, description="return the gradient of the returned loss")
    output_encoding: OutputEncoding | None = Field(
        None, description="form of `per_sample` and `grad`; default: the form of `logits`"
    )
    empty: EmptyPolicy = Field(
        "zero",
        description="`mean` with nothing to average (all labels ignored, empty batch): "
        "`zero` gives loss 0 and a zero gradient, `nan` gives PyTorch's NaN (as `loss: null`)",
    )
    compute_dtype: ComputeDtype | None = Field(
        None, description="default: float32 for 16/32-bit logits, float64 for float64 and JSON"
    )


class CrossEntropyRequest(LossRequest):
    logits: Tensor = Field(description="[..., C], class axis last; -inf masks a class")
    labels: Tensor = Field(description="class indices [...] or probabilities [..., C]")
    weight: OptionalTensor = Field(None, description="[C] rescaling weight per class")
    ignore_index: int = Field(-100, description="class-index label that contributes nothing")
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0)
    z_loss: float = Field(0.0, ge=0.0, description="adds z_loss * logsumexp^2 per sample (PaLM)")


class BinaryCrossEntropyRequest(LossRequest):
    logits: Tensor = Field(description="any shape")
    labels: Tensor = Field(description="targets in [0, 1], the logits' shape")
    weight: OptionalTensor = Field(None, description="broadcasts to the logits' shape")
    pos_weight: OptionalTensor = Field(None, description="weight of positives, e.g. [C]")


class LossResponse(BaseModel):
    name: str
    loss: float | None = Field(description="the reduced value (for `none`, the sum); null is NaN")
    per_sample: OptionalTensor = Field(None, description="with `reduction=none`")
    grad: OptionalTensor = Field(None, description="with `return_grad`: d loss / d logits")
    n_valid: int = Field(description="samples that count (labels not ignored)")
    weight_sum: float = Field(description="the divisor of `mean`")
    backend: str
    dtype: str = Field(description="the dtype the loss was computed in")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    backend: str
    device: str
    version: str
