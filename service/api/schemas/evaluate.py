"""Body of `POST /v1/evaluate`: one upload of logits and labels, several losses.

Each entry of `losses` is typed by its `name`: its fields are that loss's options, the same as
`POST /v1/losses/{name}` takes, minus the shared inputs and encodings. Not re-exported from
`service.api.schemas`: it is built from the catalogue, which imports the loss schemas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model

from service.api.catalogue import LOSSES, LossSpec
from service.api.schemas.calibration import CalibrationOptions, CalibrationResponse
from service.api.schemas.common import Body, Logits, OutputEncoding, Tensor, tensor_fields
from service.api.schemas.losses import LossOptions, LossResponse
from service.engine import ComputeDtype

SHARED_FIELDS = {"logits", "labels", "output_encoding", "compute_dtype"}


class EvaluateItem(LossOptions):
    """What every entry of `losses` has; each loss's entry narrows `name` to its own."""

    name: str


def _takes_the_upload(spec: LossSpec) -> bool:
    return {"logits", "labels"} <= tensor_fields(spec.request).keys()


def _item_model(spec: LossSpec) -> type[BaseModel]:
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in spec.request.model_fields.items()
        if name not in SHARED_FIELDS
    }
    model_name = spec.request.__name__.removesuffix("Request") + "Item"
    fields["name"] = (Literal[spec.name], Field(description="the loss, as in /v1/losses/{name}"))
    return create_model(
        model_name,
        __base__=Body,
        __doc__=f"`{spec.name}` in /v1/evaluate: {spec.summary}",
        **fields,
    )


EVALUATED: tuple[LossSpec, ...] = tuple(spec for spec in LOSSES if _takes_the_upload(spec))
_ITEMS = tuple(_item_model(spec) for spec in EVALUATED)
if TYPE_CHECKING:
    EvaluateLoss = EvaluateItem
else:  # a union discriminated by `name`, so errors and the schema are per loss
    EvaluateLoss = Annotated[Union[_ITEMS], Field(discriminator="name")]  # noqa: UP007


class EvaluateRequest(Body):
    logits: Logits = Field(description="[..., C], shared by every loss")
    labels: Tensor = Field(description="shared by every loss")
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
