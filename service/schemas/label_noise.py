"""Bodies of `POST /v1/label-noise`: confident learning on out-of-sample probabilities."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.engine.label_noise import FilterBy, RankBy
from service.schemas.common import (
    Body,
    IndexLabels,
    OptionalLogits,
    OptionalTensor,
    OutputEncoding,
    Tensor,
)

OUT_OF_SAMPLE = (
    "Out-of-sample: each row predicted by a model that did not train on it (cross-validated), "
    "or the estimates are biased towards the given labels."
)


class LabelNoiseRequest(Body):
    logits: OptionalLogits = Field(
        None, description=f"[N, C] (or `probs`; exactly one of the two). {OUT_OF_SAMPLE}"
    )
    probs: OptionalTensor = Field(
        None,
        description=f"[N, C] class probabilities, rows summing to 1 (within 1e-6). {OUT_OF_SAMPLE}",
    )
    labels: IndexLabels = Field(description="[N] the given (possibly wrong) class indices")
    filter_by: FilterBy = Field(
        "prune_by_noise_rate",
        description="which rows are flagged: cleanlab's `filter.find_label_issues` methods",
    )
    rank_by: RankBy = Field(
        "self_confidence",
        description="the label quality score, and the order of `label_issues` (lowest first)",
    )
    calibrate: bool = Field(
        True, description="calibrate the confident joint to the label counts (cleanlab's default)"
    )
    max_issues: int | None = Field(
        None, ge=0, description="return at most this many issues (the likeliest); null: all"
    )
    output_encoding: OutputEncoding | None = Field(
        None, description="form of the output tensors; default: the form of the scores"
    )


class LabelNoiseResponse(BaseModel):
    label_issues: Tensor = Field(description="row indices of likely wrong labels, likeliest first")
    n_issues: int = Field(description="rows flagged, before `max_issues` cuts the list")
    label_quality: Tensor = Field(description="[N] in [0, 1]; low: the label is likely wrong")
    noise_rate: float = Field(
        description="estimated fraction of wrong labels: 1 - trace of the normalised joint"
    )
    confident_joint: Tensor = Field(
        description="[C, C] counts: rows the given label, columns the true class"
    )
    class_thresholds: Tensor = Field(description="[C] mean self-confidence of each class's rows")
    transition_matrix: Tensor = Field(
        description="[C, C] row i = P(given label | true class i), each row summing to 1: the "
        "`transition_matrix` of `forward-corrected-cross-entropy`, as it is"
    )
    n: int
    n_classes: int
