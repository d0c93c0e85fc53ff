"""Bodies of `POST /v1/losses/{name}`, with the field names of docs/conventions.md."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from service.engine import ComputeDtype, EmptyPolicy, Reduction
from service.schemas.common import (
    Body,
    ElementLogits,
    IndexLabels,
    Logits,
    OptionalBroadcastTensor,
    OptionalLogits,
    OptionalSharedTensor,
    OptionalTensor,
    OutputEncoding,
    SharedTensor,
    Tensor,
    tensor_fields,
)

GradDtype = Literal["input", "float16", "bfloat16", "float32", "float64"]


class LossOptions(Body):
    """How a loss's result is reduced and returned."""

    reduction: Reduction = Field("mean", description="`none` returns `per_sample`")
    return_grad: bool = Field(False, description="return the gradient of the returned loss")
    empty: EmptyPolicy = Field(
        "zero",
        description="`mean` with nothing to average (all labels ignored, empty batch): "
        "`zero` gives loss 0 and a zero gradient, `nan` gives PyTorch's NaN (as `loss: null`)",
    )
    grad_dtype: GradDtype | None = Field(
        None,
        description="dtype of returned gradients: default the compute dtype; `input` the dtype "
        "of the first input (a float16 upload gets a float16 gradient)",
    )


class LossRequest(LossOptions):
    """Fields every loss accepts."""

    output_encoding: OutputEncoding | None = Field(
        None, description="form of `per_sample` and `grad`; default: the form of the first input"
    )
    compute_dtype: ComputeDtype | None = Field(
        None, description="default: float32 for 16/32-bit logits, float64 for float64 and JSON"
    )


LOGITS_DESCRIPTION = "[..., C], class axis last; -inf masks a class"
INDEX_LABELS_DESCRIPTION = "class indices [...] (whole numbers; ignore_index skips one)"
IGNORE_INDEX_DESCRIPTION = "class-index label that contributes nothing"


def loss_options(body: BaseModel) -> dict[str, Any]:
    """A loss's own options in `body`: every field that is neither common nor a tensor."""
    return {name: getattr(body, name) for name in _option_names(type(body))}


@functools.cache  # read for every request; a model's fields do not change
def _option_names(model: type[BaseModel]) -> tuple[str, ...]:
    skip = {"name", *LossRequest.model_fields, *tensor_fields(model)}
    return tuple(name for name in model.model_fields if name not in skip)


class ClassIndexRequest(LossRequest):
    """Softmax losses over logits [..., C] with class-index labels."""

    logits: Logits = Field(description=LOGITS_DESCRIPTION)
    labels: IndexLabels = Field(description=INDEX_LABELS_DESCRIPTION)
    ignore_index: int = Field(-100, description=IGNORE_INDEX_DESCRIPTION)


class ClassBalance(BaseModel):
    """Cui et al. 2019: per-class factors from class counts, (1 - beta) / (1 - beta^n)."""

    class_counts: OptionalSharedTensor = Field(
        None, description="[C] training counts (> 0); derive class-balanced weights from them"
    )
    class_balance_beta: float | None = Field(
        None, ge=0.0, lt=1.0, description="with class_counts; default 0.999"
    )


class CrossEntropyRequest(ClassIndexRequest, ClassBalance):
    labels: IndexLabels = Field(description="class indices [...] or probabilities [..., C]")
    weight: OptionalSharedTensor = Field(
        None,
        description="[C] rescaling weight per class; finite and >= 0 (PyTorch also takes "
        "negative weights; here they are a 422)",
    )
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0)
    z_loss: float = Field(0.0, ge=0.0, description="adds z_loss * logsumexp^2 per sample (PaLM)")


class FocalRequest(ClassIndexRequest, ClassBalance):
    gamma: float = Field(2.0, ge=0.0, description="focusing parameter; 0 is cross-entropy")
    alpha: OptionalSharedTensor = Field(
        None, description="[C] per-class factor; `mean` still divides by n_valid (RetinaNet)"
    )


class Poly1Request(ClassIndexRequest):
    epsilon: float = Field(1.0, ge=-1.0, description="weight of the (1 - p_y) term")


class SymmetricCrossEntropyRequest(ClassIndexRequest):
    alpha: float = Field(0.1, ge=0.0, description="weight of cross-entropy")
    beta: float = Field(1.0, ge=0.0, description="weight of reverse cross-entropy")
    log_zero: float = Field(-4.0, le=0.0, description="the value taken for log 0 in RCE")


class GeneralizedCrossEntropyRequest(ClassIndexRequest):
    q: float = Field(0.7, gt=0.0, le=1.0, description="q -> 0 is cross-entropy, q = 1 is MAE")


class ForwardCorrectedCrossEntropyRequest(ClassIndexRequest):
    transition_matrix: SharedTensor = Field(
        description="[C, C], row i = P(noisy label | clean class i); rows sum to 1"
    )


class LogitAdjustedCrossEntropyRequest(ClassIndexRequest):
    class_prior: OptionalSharedTensor = Field(None, description="[C] class prior (or class_counts)")
    class_counts: OptionalSharedTensor = Field(
        None, description="[C] class counts (or class_prior)"
    )
    tau: float = Field(1.0, ge=0.0, description="scale of the log-prior adjustment")


class BinaryCrossEntropyRequest(LossRequest):
    logits: ElementLogits = Field(description="any shape; -inf where the target is 0")
    labels: Tensor = Field(description="targets in [0, 1], the logits' shape")
    weight: OptionalBroadcastTensor = Field(None, description="broadcasts to the logits' shape")
    pos_weight: OptionalBroadcastTensor = Field(None, description="weight of positives, e.g. [C]")


class SigmoidFocalRequest(LossRequest):
    logits: ElementLogits = Field(description="any shape; -inf where the target is 0")
    labels: Tensor = Field(description="targets in [0, 1], the logits' shape")
    alpha: float | None = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="weight of positives (1 - alpha for negatives); null: none",
    )
    gamma: float = Field(2.0, ge=0.0, description="focusing parameter")
    weight: OptionalBroadcastTensor = Field(None, description="broadcasts to the logits' shape")


class KLDivergenceRequest(LossRequest):
    logits: Logits = Field(description="student logits [..., C]")
    target_logits: OptionalLogits = Field(None, description="teacher logits [..., C]")
    target_probs: OptionalTensor = Field(
        None,
        description="teacher probabilities [..., C] (instead of target_logits); each row in "
        "[0, 1] and summing to 1 within 1e-6, else a 422 (PyTorch's kl_div takes any target)",
    )
    temperature: float = Field(1.0, gt=0.0, description="both softmaxes at x / T; loss x T^2")


class BradleyTerryRequest(LossRequest):
    chosen: Tensor = Field(description="scores of the preferred responses [N]")
    rejected: Tensor = Field(description="scores of the other responses [N]")
    beta: float = Field(1.0, gt=0.0)
    margin: float = Field(0.0, description="subtracted inside the sigmoid")
    ref_chosen: OptionalTensor = Field(None, description="reference scores [N]: DPO")
    ref_rejected: OptionalTensor = Field(None, description="reference scores [N]: DPO")


class InfoNCERequest(LossRequest):
    query: Tensor = Field(description="[N, D]")
    keys: SharedTensor = Field(description="[M, D]")
    labels: IndexLabels = Field(description="[N]: the index of each query's positive key")
    temperature: float = Field(0.07, gt=0.0)
    normalize: bool = Field(True, description="L2-normalise query and key rows first")
    ignore_index: int = Field(-100, description=IGNORE_INDEX_DESCRIPTION)


class TripletMarginRequest(LossRequest):
    anchor: Tensor = Field(description="[N, D]")
    positive: Tensor = Field(description="[N, D]")
    negative: Tensor = Field(description="[N, D]")
    margin: float = Field(1.0, gt=0.0)
    p: float = Field(2.0, ge=1.0, description="the norm of the pairwise distance")
    eps: float = Field(1e-6, ge=0.0, description="added to the difference, as PyTorch")
    swap: bool = Field(False, description="use min(d(a, n), d(p, n)) (Balntas et al. 2016)")


class RegressionRequest(LossRequest):
    predictions: Tensor = Field(description="any shape")
    targets: Tensor = Field(description="the predictions' shape")
    weight: OptionalBroadcastTensor = Field(
        None, description="broadcasts to the predictions' shape"
    )


class HuberRequest(RegressionRequest):
    delta: float = Field(1.0, gt=0.0, description="quadratic below delta, linear above")


class LossResponse(BaseModel):
    name: str
    loss: float | None = Field(description="the reduced value (for `none`, the sum); null is NaN")
    per_sample: OptionalTensor = Field(None, description="with `reduction=none`")
    grad: OptionalTensor = Field(None, description="with `return_grad`: d loss / d logits")
    grads: dict[str, Tensor] | None = Field(
        None, description="with `return_grad`, for losses whose inputs are not `logits`"
    )
    n_valid: int = Field(description="samples that count (labels not ignored)")
    weight_sum: float = Field(description="the divisor of `mean`")
    backend: str
    dtype: str = Field(description="the dtype the loss was computed in")


class LossInput(BaseModel):
    name: str
    required: bool
    description: str | None


class LossOption(BaseModel):
    name: str
    default: Any
    description: str | None
    json_schema: dict[str, Any] = Field(description="the option's JSON Schema (type, bounds)")


class LossInfo(BaseModel):
    name: str
    path: str
    summary: str
    reference: str = Field(description="the paper or library whose convention it follows")
    inputs: list[LossInput]
    options: list[LossOption] = Field(description="besides the options every loss takes")


class LossCatalogue(BaseModel):
    losses: list[LossInfo]
    common_options: list[LossOption]


def _options(model: type[Body], names: list[str]) -> list[LossOption]:
    options = []
    for name in names:
        info = model.model_fields[name]
        # The field's type with its constraints (ge, le, ...), which pydantic keeps as metadata.
        annotated: Any = info.annotation
        if info.metadata:
            annotated = Annotated[(annotated, *info.metadata)]
        schema = TypeAdapter(annotated).json_schema()
        options.append(
            LossOption(
                name=name, default=info.default, description=info.description, json_schema=schema
            )
        )
    return options


def describe_loss(name: str, summary: str, reference: str, request: type[LossRequest]) -> LossInfo:
    """A catalogue entry, read off the loss's request model (the one source of its options)."""
    tensors = tensor_fields(request)
    inputs = [
        LossInput(
            name=field,
            required=request.model_fields[field].is_required(),
            description=request.model_fields[field].description,
        )
        for field in tensors
    ]
    own = [
        f for f in request.model_fields if f not in tensors and f not in LossRequest.model_fields
    ]
    return LossInfo(
        name=name,
        path=f"/v1/losses/{name}",
        summary=summary,
        reference=reference,
        inputs=inputs,
        options=_options(request, own),
    )


def common_options() -> list[LossOption]:
    return _options(LossRequest, list(LossRequest.model_fields))
