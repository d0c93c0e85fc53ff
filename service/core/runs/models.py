"""The bodies of the run routes: a run's spec, a batch, and the answers."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from service.core.evaluate import EvaluateItem, entry_union
from service.engine import ComputeDtype
from service.schemas.calibration import CalibrationOptions, CalibrationResponse
from service.schemas.common import Body, IndexLabels, Logits

MAX_RUN_LOSSES = 64
MAX_METADATA_ITEMS = 64
BatchId = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:~@+=-]+$")
]

if TYPE_CHECKING:
    RunLoss = EvaluateItem
else:  # /v1/evaluate's entries without what only a single answer has (a gradient)
    RunLoss = entry_union(
        "RunEntry", "an evaluation run", without=frozenset({"return_grad", "grad_dtype"})
    )

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MetadataValue = Annotated[str, StringConstraints(max_length=1024)]


class RunSpec(Body):
    """What a run computes on every batch; fixed when the run is created."""

    losses: list[RunLoss] = Field(
        default_factory=list,
        max_length=MAX_RUN_LOSSES,
        description="each with its name and options, as in /v1/evaluate (no `return_grad`)",
    )
    calibration: CalibrationOptions | None = Field(
        None,
        description="the calibration options; only those whose statistics merge exactly: "
        "uniform bins, no temperature fit, no bootstrap, no smooth ECE",
    )
    compute_dtype: ComputeDtype | None = None


class RunCreate(RunSpec):
    name: str | None = Field(None, max_length=200)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ITEMS, description="labels, str -> str"
    )


class BatchBody(Body):
    """One batch of a run: logits and labels, in any tensor form."""

    logits: Logits = Field(description="[N, C] (or [N] binary); -inf masks a class")
    labels: IndexLabels = Field(
        description="[N] class indices; -100 rows count as the losses' ignore_index says and "
        "are left out of calibration"
    )


RunStatus = Literal["open", "closed"]


class RunSummary(BaseModel):
    id: str = Field(description="a UUID")
    name: str | None
    metadata: dict[str, str]
    status: RunStatus
    created_at: datetime
    updated_at: datetime
    n_batches: int
    n_samples: int = Field(description="rows (positions) of logits received")


class RunLossTotal(BaseModel):
    name: str
    loss: float | None = Field(
        description="the reduced value over every batch, as /v1/evaluate on their "
        "concatenation; null is NaN (`empty: nan`)"
    )
    n_valid: int
    weight_sum: float = Field(description="the divisor of `mean`")


class Run(RunSummary):
    spec: RunSpec
    losses: list[RunLossTotal]
    calibration: CalibrationResponse | None = Field(
        description="the report of every batch's rows whose label is not -100, as "
        "/v1/calibration on their concatenation; null before the first batch"
    )


class RunList(BaseModel):
    runs: list[RunSummary] = Field(description="newest first")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class BatchReceipt(BaseModel):
    run_id: str
    batch_id: str
    duplicate: bool = Field(description="true: this batch was stored before; nothing changed")
    n_samples: int
    digest: str = Field(description="SHA-256 of the batch's decoded tensors")


class StoredBatch(BaseModel):
    """A batch a run has counted: what a client resuming an upload compares with its own."""

    run_id: str
    batch_id: str
    digest: str = Field(description="SHA-256 of the batch's decoded tensors, as in the receipt")
    n_samples: int
    created_at: datetime = Field(description="when the batch was counted")
