"""Bodies of `POST /v1/calibration`, `/v1/calibration/merge` and `/reliability-diagram`.

Field names are those of docs/calibration.md. What is mergeable lives in `state`;
`temperature`, `bootstrap`, `smooth_ece` and quantile bins are computed from the samples of one
request and cannot be merged, which each field's description says.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service.engine.calibration import MAX_CLASSWISE_CELLS, STATE_VERSION, Binning, Task
from service.schemas.common import Body, OptionalLogits, OptionalTensor, Tensor

MAX_BINS = 1000
MAX_TOP_K = 32
NOT_MERGEABLE = "Not mergeable: computed from this request's samples, null in merge reports."


class CalibrationBinning(Body):
    """How confidences are binned."""

    n_bins: int = Field(15, ge=1, le=MAX_BINS, description="number of bins")
    binning: Binning = Field(
        "uniform",
        description="`uniform`: equal width, bin i is [i/n, (i+1)/n), the last one closed; "
        "`quantile`: equal mass (Nixon et al. 2019), edges from the data, so its state is not "
        "mergeable",
    )


class CalibrationInputs(Body):
    """Scores (exactly one of `logits` and `probs`) and labels."""

    logits: OptionalLogits = Field(
        None,
        description="[N]: binary, the positive class's logit; [N, C]: multiclass (top label). "
        "Exactly one of `logits` and `probs`",
    )
    probs: OptionalTensor = Field(
        None,
        description="[N]: binary, the positive class's probability; [N, C]: rows of class "
        "probabilities summing to 1 (within 1e-6)",
    )
    labels: Tensor = Field(description="[N] class indices (binary: 0 or 1)")


class CalibrationOptions(CalibrationBinning):
    """Everything `/v1/calibration` can compute besides the mergeable metrics."""

    top_k: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list,
        max_length=MAX_TOP_K,
        description="values of k for `top_k_accuracy` (k >= C counts every sample as a hit)",
    )
    fit_temperature: bool = Field(
        False,
        description="fit the temperature T minimising NLL (Guo et al. 2017). " + NOT_MERGEABLE,
    )
    n_bootstrap: int = Field(
        0,
        ge=0,
        description="bootstrap resamples for percentile intervals (at most the service's "
        "`max_bootstrap`). " + NOT_MERGEABLE,
    )
    confidence_level: float = Field(0.95, gt=0, lt=1, description="of the bootstrap intervals")
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="seed of the bootstrap resampling; drawn and reported when null",
    )
    smooth_ece: bool = Field(
        False,
        description="smooth ECE with its fixed-point bandwidth (Blasiok & Nakkiran 2023). "
        + NOT_MERGEABLE,
    )


class CalibrationRequest(CalibrationOptions, CalibrationInputs):
    pass


class ReliabilityDiagramRequest(CalibrationBinning, CalibrationInputs):
    pass


# --- the state --------------------------------------------------------------------------------


class CalibrationStateBins(Body):
    """Sums per bin of the top-label confidence (binary: of p)."""

    count: list[int]
    sum_confidence: list[float]
    sum_correct: list[int] = Field(description="correct top labels (binary: positive labels)")


class CalibrationStateClasswise(Body):
    """Per class c (rows) and bin (columns): sums of p_c and of the event `label == c`."""

    count: list[list[int]]
    sum_confidence: list[list[float]]
    sum_correct: list[list[int]]
    edges: list[list[float]] | None = Field(description="per-class edges of quantile bins")


class CalibrationState(Body):
    """Sufficient statistics of the mergeable metrics: fixed size, whatever N.

    `/v1/calibration/merge` adds the states of disjoint shards; the report it computes equals the
    report on the union of the shards' samples.
    """

    version: int = Field(
        description=f"format version; this service reads and writes {STATE_VERSION}"
    )
    task: Task
    n_classes: int = Field(ge=1, description="C (2 for binary)")
    n_bins: int = Field(ge=1, le=MAX_BINS)
    binning: Binning
    mergeable: bool = Field(description="false for quantile bins")
    edges: list[float] = Field(description="n_bins + 1 bin edges, from 0 to 1")
    top_k: list[int]
    n: int = Field(ge=0, description="samples")
    n_correct: int = Field(ge=0, description="samples whose prediction is the label")
    sum_brier: float = Field(ge=0)
    sum_nll: float = Field(ge=0)
    top_k_hits: list[int] = Field(description="per entry of `top_k`")
    bins: CalibrationStateBins
    classwise: CalibrationStateClasswise | None = Field(
        description=f"null when n_classes * n_bins > {MAX_CLASSWISE_CELLS}"
    )


class CalibrationMergeRequest(Body):
    states: list[CalibrationState] = Field(
        min_length=1, description="states of disjoint shards, from /v1/calibration or merges"
    )


# --- the report -------------------------------------------------------------------------------


class CalibrationBin(BaseModel):
    lower: float
    upper: float
    count: int
    mean_confidence: float | None = Field(description="null for an empty bin")
    accuracy: float | None = Field(
        description="fraction correct (binary: fraction positive); null for an empty bin"
    )


class TopKAccuracy(BaseModel):
    k: int
    accuracy: float | None


class TemperatureScaling(BaseModel):
    value: float = Field(description="T: divide the logits by it (T > 1 softens)")
    converged: bool = Field(
        description="false when the minimum lies outside T in [1e-4, 1e4] (the bound is given)"
    )
    iterations: int
    nll_before: float | None
    nll_after: float | None
    ece_before: float | None
    ece_after: float | None


class ConfidenceInterval(BaseModel):
    lower: float
    upper: float


class BootstrapIntervals(BaseModel):
    n_bootstrap: int
    confidence_level: float
    seed: int = Field(description="the seed used (drawn when the request had none)")
    ece: ConfidenceInterval | None
    mce: ConfidenceInterval | None
    brier: ConfidenceInterval | None
    nll: ConfidenceInterval | None
    accuracy: ConfidenceInterval | None


class SmoothEce(BaseModel):
    value: float
    bandwidth: float = Field(description="sigma, the fixed point smECE_sigma = sigma")


class CalibrationResponse(BaseModel):
    """The calibration report. Ratios with nothing to divide (N = 0) are null, never NaN."""

    task: Task = Field(description="`binary` for [N] scores, `multiclass` for [N, C]")
    n: int
    n_classes: int
    n_bins: int
    binning: Binning
    ece: float | None = Field(description="expected calibration error, L1 over bins")
    mce: float | None = Field(description="maximum calibration error over non-empty bins")
    rmsce: float | None = Field(description="root-mean-square calibration error, L2 over bins")
    ece_debiased: float | None = Field(
        description="debiased L2 calibration error (Kumar et al. 2019); compare with rmsce"
    )
    classwise_ece: float | None = Field(
        description="mean over classes of each class's ECE (Kull et al. 2019); null when "
        f"n_classes * n_bins > {MAX_CLASSWISE_CELLS}"
    )
    brier: float | None = Field(
        description="mean of sum_c (p_c - y_c)^2 (binary [N] scores: mean of (p - y)^2). [N, 2] "
        "scores are multiclass: their Brier score is twice scikit-learn's binary "
        "brier_score_loss of the positive class"
    )
    nll: float | None = Field(description="mean -log p_y, p_y clipped at 2.2e-16 as scikit-learn")
    accuracy: float | None
    mean_confidence: float | None = Field(description="binary: the mean of p")
    top_k_accuracy: list[TopKAccuracy]
    bins: list[CalibrationBin]
    temperature: TemperatureScaling | None = Field(description=NOT_MERGEABLE)
    bootstrap: BootstrapIntervals | None = Field(description=NOT_MERGEABLE)
    smooth_ece: SmoothEce | None = Field(description=NOT_MERGEABLE)
    state: CalibrationState
    backend: str
