"""Use case: several losses (and a calibration report) from one upload of logits and labels.

The body's model lives here, beside the use case, because it is built from the registry: each
entry of `losses` is typed by its `name`, and its fields are that loss's options, the same as
`POST /v1/losses/{name}` takes, minus the shared inputs and encodings. Evaluation runs take the
same entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from service import engine
from service.core.calibration import calibration_response
from service.core.context import Context
from service.core.losses import call_loss
from service.core.registry import BY_NAME, LOSSES, LossSpec
from service.core.responses import loss_response
from service.engine import ComputeDtype
from service.errors import FieldPath, InvalidInput, LimitExceeded
from service.schemas.calibration import CalibrationOptions, CalibrationResponse
from service.schemas.common import Body, IndexLabels, Logits, OutputEncoding
from service.schemas.losses import LossOptions, LossResponse

SHARED_FIELDS = {"logits", "labels", "output_encoding", "compute_dtype"}


class EvaluateItem(LossOptions):
    """What every entry of `losses` has; each loss's entry narrows `name` to its own."""

    name: str


def entry_model(
    spec: LossSpec, *, kind: str, used_in: str, without: frozenset[str] = frozenset()
) -> Any:
    """`spec`'s entry in a list of losses over one upload: its request model minus the shared
    inputs, the encodings and `without`, with `name` narrowed to the loss's."""
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in spec.request.model_fields.items()
        if name not in SHARED_FIELDS | without
    }
    model_name = spec.request.__name__.removesuffix("Request") + kind
    fields["name"] = (Literal[spec.name], Field(description="the loss, as in /v1/losses/{name}"))
    return create_model(
        model_name,
        __base__=Body,
        __doc__=f"`{spec.name}` in {used_in}: {spec.summary}",
        **fields,
    )


def entry_union(kind: str, used_in: str, without: frozenset[str] = frozenset()) -> Any:
    """The entries of every loss over logits and labels, as a union discriminated by `name`,
    so that errors and the schema are per loss."""
    entries = tuple(
        entry_model(spec, kind=kind, used_in=used_in, without=without) for spec in EVALUATED
    )
    return Annotated[Union[entries], Field(discriminator="name")]  # noqa: UP007


EVALUATED: tuple[LossSpec, ...] = tuple(spec for spec in LOSSES if spec.takes_logits_and_labels)
if TYPE_CHECKING:
    EvaluateLoss = EvaluateItem
else:
    EvaluateLoss = entry_union("Item", "/v1/evaluate")


class EvaluateRequest(Body):
    logits: Logits = Field(description="[..., C], shared by every loss")
    labels: IndexLabels = Field(description="shared by every loss")
    losses: list[EvaluateLoss] = Field(
        default_factory=list, description="each with its name and options, in the order answered"
    )
    calibration: CalibrationOptions | None = Field(
        None, description="the calibration report's options, as /v1/calibration takes them"
    )
    output_encoding: OutputEncoding | None = Field(
        None, description="form of output tensors; default: the form of `logits`"
    )
    compute_dtype: ComputeDtype | None = None


class EvaluateResponse(BaseModel):
    losses: list[LossResponse]
    calibration: CalibrationResponse | None = None


def evaluate(body: EvaluateRequest, *, ctx: Context) -> EvaluateResponse:
    """Every requested loss on one upload, sharing the softmax (`engine.shared_softmax`)."""
    if len(body.losses) > ctx.settings.max_evaluate_losses:
        # Each entry is a full computation and may answer a gradient the size of the logits.
        raise LimitExceeded(
            f"losses: {len(body.losses)} entries exceed max_evaluate_losses = "
            f"{ctx.settings.max_evaluate_losses}",
            field="losses",
        )
    logits = ctx.decode(("logits",), body.logits, logits=True)
    labels = ctx.decode(("labels",), body.labels)
    # Cast once: every loss then sees the same array, and the softmax cache recognises it.
    x = engine.to_compute_dtype(ctx.backend.asarray(logits.array), body.compute_dtype)
    y = ctx.backend.asarray(labels.array)
    form = body.output_encoding or logits.form
    responses = []
    with engine.shared_softmax(x):
        for index, item in enumerate(body.losses):
            spec = BY_NAME[item.name]
            path = ("losses", index)
            options, _ = ctx.decode_tensors(item, path)
            try:
                result = call_loss(
                    spec,
                    {"logits": x, "labels": y, **options},
                    item,
                    compute_dtype=body.compute_dtype,
                    reduction=item.reduction,
                )
            except InvalidInput as error:
                raise within(error, path) from None
            responses.append(
                loss_response(spec.name, result, item, form, logits.array.dtype, ctx.backend, path)
            )
    report = None
    if body.calibration is not None:
        report = calibration_response({"logits": x, "labels": y}, body.calibration, ctx=ctx)
    return EvaluateResponse(losses=responses, calibration=report)


def within(error: InvalidInput, path: FieldPath) -> InvalidInput:
    """An engine error about a loss's own option, located under `losses[i]` of the request."""
    if error.field[:1] in (("logits",), ("labels",)):
        return error  # the shared inputs: their names are already right
    dotted = ".".join(str(part) for part in path)
    return type(error)(f"{dotted}.{error.detail}", field=(*path, *error.field))
