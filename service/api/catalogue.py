"""Every loss the service serves: its name, request body, engine function and reference.

Adding a loss is one `LossSpec` here: the routes, the OpenAPI document and `GET /v1/losses` are
built from this list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service import engine
from service.api.schemas.losses import (
    BinaryCrossEntropyRequest,
    CrossEntropyRequest,
    FocalRequest,
    ForwardCorrectedCrossEntropyRequest,
    GeneralizedCrossEntropyRequest,
    LogitAdjustedCrossEntropyRequest,
    LossRequest,
    Poly1Request,
    SymmetricCrossEntropyRequest,
)
from service.engine import LossResult


@dataclass(frozen=True)
class LossSpec:
    name: str  # the path segment and the `name` in responses: "cross-entropy"
    function: Callable[..., LossResult]
    request: type[LossRequest]
    summary: str
    reference: str

    @property
    def operation_id(self) -> str:
        return self.name.replace("-", "_")


LOSSES: tuple[LossSpec, ...] = (
    LossSpec(
        name="cross-entropy",
        function=engine.cross_entropy,
        request=CrossEntropyRequest,
        summary="Softmax cross-entropy with class weights, ignore_index, smoothing and z-loss",
        reference="PyTorch torch.nn.functional.cross_entropy; z-loss: Chowdhery et al. 2022 "
        "(PaLM); class-balanced weights: Cui et al. 2019",
    ),
    LossSpec(
        name="binary-cross-entropy",
        function=engine.binary_cross_entropy,
        request=BinaryCrossEntropyRequest,
        summary="Binary cross-entropy on logits, with weight and pos_weight",
        reference="PyTorch torch.nn.functional.binary_cross_entropy_with_logits",
    ),
)

SOFTMAX_FAMILY: tuple[LossSpec, ...] = (
    LossSpec(
        name="focal",
        function=engine.focal,
        request=FocalRequest,
        summary="Softmax focal loss -alpha_y (1 - p_y)^gamma log p_y",
        reference="Lin et al. 2017, Focal Loss for Dense Object Detection (softmax form); "
        "class-balanced alpha: Cui et al. 2019",
    ),
    LossSpec(
        name="poly1",
        function=engine.poly1,
        request=Poly1Request,
        summary="Poly-1: cross-entropy + epsilon (1 - p_y)",
        reference="Leng et al. 2022, PolyLoss",
    ),
    LossSpec(
        name="symmetric-cross-entropy",
        function=engine.symmetric_cross_entropy,
        request=SymmetricCrossEntropyRequest,
        summary="alpha CE + beta reverse CE, RCE = -log_zero (1 - p_y)",
        reference="Wang et al. 2019, Symmetric Cross Entropy for Robust Learning with Noisy Labels",
    ),
    LossSpec(
        name="generalized-cross-entropy",
        function=engine.generalized_cross_entropy,
        request=GeneralizedCrossEntropyRequest,
        summary="(1 - p_y^q) / q, between cross-entropy (q -> 0) and MAE (q = 1)",
        reference="Zhang & Sabuncu 2018, Generalized Cross Entropy Loss",
    ),
    LossSpec(
        name="forward-corrected-cross-entropy",
        function=engine.forward_corrected_cross_entropy,
        request=ForwardCorrectedCrossEntropyRequest,
        summary="-log (softmax(x) @ T)_y for a known label-noise transition matrix T",
        reference="Patrini et al. 2017, Making Deep Neural Networks Robust to Label Noise",
    ),
    LossSpec(
        name="logit-adjusted-cross-entropy",
        function=engine.logit_adjusted_cross_entropy,
        request=LogitAdjustedCrossEntropyRequest,
        summary="Cross-entropy on x + tau log prior",
        reference="Menon et al. 2021, Long-tail Learning via Logit Adjustment",
    ),
)

LOSSES = LOSSES + SOFTMAX_FAMILY

BY_NAME: dict[str, LossSpec] = {spec.name: spec for spec in LOSSES}
