"""The loss registry: every loss the service serves, declared once.

A `LossSpec` names a loss, its engine function, its reference and its request model. The request
model declares each input (a tensor field: its role, wire kind and whether it holds logits, see
`service.schemas.common.TensorField`) and each option (a pydantic field with its bounds and
default). Every adapter reads the loss from here: the REST routes and the OpenAPI document, the
Open Inference Protocol's models and their metadata, `/v1/evaluate` and evaluation runs, the
offline CLI and its chunking. Adding a loss is one entry here plus its engine function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from service import engine
from service.engine import LossResult
from service.schemas.common import TensorField, tensor_fields
from service.schemas.losses import (
    BinaryCrossEntropyRequest,
    BradleyTerryRequest,
    CrossEntropyRequest,
    FocalRequest,
    ForwardCorrectedCrossEntropyRequest,
    GeneralizedCrossEntropyRequest,
    HuberRequest,
    InfoNCERequest,
    KLDivergenceRequest,
    LogitAdjustedCrossEntropyRequest,
    LossRequest,
    Poly1Request,
    RegressionRequest,
    SigmoidFocalRequest,
    SymmetricCrossEntropyRequest,
    TripletMarginRequest,
)


@dataclass(frozen=True)
class LossSpec:
    name: str  # the path segment and the `name` in responses: "cross-entropy"
    function: Callable[..., LossResult]
    request: type[LossRequest]
    summary: str
    reference: str
    differentiable: tuple[str, ...] = ("logits",)  # the inputs `grads` has entries for
    # `function` takes `grad_reduction`, the reduction the route will apply (a fused kernel then
    # writes the gradient already scaled; see service.engine._reduction)
    takes_grad_reduction: bool = False
    # Its cost grows with the square of the batch (every query against every key): a small body
    # can still take tens of ms, so it never computes on the event loop (service.api.deps).
    pairwise: bool = False

    @property
    def operation_id(self) -> str:
        return self.name.replace("-", "_")

    @cached_property
    def inputs(self) -> dict[str, TensorField]:
        """The loss's tensor fields, required ones first, each in declaration order."""
        return tensor_fields(self.request)

    @cached_property
    def required_inputs(self) -> tuple[str, ...]:
        fields = self.request.model_fields
        return tuple(name for name in self.inputs if fields[name].is_required())

    @property
    def takes_logits_and_labels(self) -> bool:
        """Whether it can share one upload of `logits` and `labels` (`/v1/evaluate`, runs)."""
        return {"logits", "labels"} <= self.inputs.keys()


LOSSES: tuple[LossSpec, ...] = (
    LossSpec(
        name="cross-entropy",
        function=engine.cross_entropy,
        takes_grad_reduction=True,
        request=CrossEntropyRequest,
        summary="Softmax cross-entropy with class weights, ignore_index, smoothing and z-loss",
        reference="PyTorch torch.nn.functional.cross_entropy; z-loss: Chowdhery et al. 2022 "
        "(PaLM); class-balanced weights: Cui et al. 2019",
    ),
    LossSpec(
        name="binary-cross-entropy",
        function=engine.binary_cross_entropy,
        takes_grad_reduction=True,
        request=BinaryCrossEntropyRequest,
        summary="Binary cross-entropy on logits, with weight and pos_weight",
        reference="PyTorch torch.nn.functional.binary_cross_entropy_with_logits",
    ),
)

SOFTMAX_FAMILY: tuple[LossSpec, ...] = (
    LossSpec(
        name="focal",
        function=engine.focal,
        takes_grad_reduction=True,
        request=FocalRequest,
        summary="Softmax focal loss -alpha_y (1 - p_y)^gamma log p_y",
        reference="Lin et al. 2017, Focal Loss for Dense Object Detection (softmax form); "
        "class-balanced alpha: Cui et al. 2019",
    ),
    LossSpec(
        name="poly1",
        function=engine.poly1,
        takes_grad_reduction=True,
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
        takes_grad_reduction=True,
        request=LogitAdjustedCrossEntropyRequest,
        summary="Cross-entropy on x + tau log prior",
        reference="Menon et al. 2021, Long-tail Learning via Logit Adjustment",
    ),
)

OTHERS: tuple[LossSpec, ...] = (
    LossSpec(
        name="sigmoid-focal",
        function=engine.sigmoid_focal,
        takes_grad_reduction=True,
        request=SigmoidFocalRequest,
        summary="Binary focal loss on logits, elementwise",
        reference="torchvision.ops.sigmoid_focal_loss (Lin et al. 2017)",
    ),
    LossSpec(
        name="kl-divergence",
        function=engine.kl_divergence,
        request=KLDivergenceRequest,
        summary="Distillation: batchmean KL(teacher || student) at temperature T, times T^2",
        reference="Hinton et al. 2015; PyTorch kl_div(reduction='batchmean')",
    ),
    LossSpec(
        name="bradley-terry",
        function=engine.bradley_terry,
        request=BradleyTerryRequest,
        summary="-log sigmoid(beta ((c - r) - (rc - rr)) - margin); with references, DPO",
        reference="Bradley & Terry 1952; DPO: Rafailov et al. 2023",
        differentiable=("chosen", "rejected"),
    ),
    LossSpec(
        name="info-nce",
        function=engine.info_nce,
        request=InfoNCERequest,
        summary="Cross-entropy over query @ keys.T / T, gradients for query and keys",
        reference="van den Oord et al. 2018 (CPC); Chen et al. 2020 (SimCLR)",
        differentiable=("query", "keys"),
        pairwise=True,
    ),
    LossSpec(
        name="triplet-margin",
        function=engine.triplet_margin,
        request=TripletMarginRequest,
        summary="max(d(a, p) - d(a, n) + margin, 0), gradients for all three inputs",
        reference="PyTorch torch.nn.functional.triplet_margin_loss",
        differentiable=("anchor", "positive", "negative"),
    ),
    LossSpec(
        name="mse",
        function=engine.mse,
        request=RegressionRequest,
        summary="Mean squared error",
        reference="PyTorch torch.nn.functional.mse_loss",
        differentiable=("predictions",),
    ),
    LossSpec(
        name="mae",
        function=engine.mae,
        request=RegressionRequest,
        summary="Mean absolute error",
        reference="PyTorch torch.nn.functional.l1_loss",
        differentiable=("predictions",),
    ),
    LossSpec(
        name="huber",
        function=engine.huber,
        request=HuberRequest,
        summary="Huber loss: quadratic below delta, linear above",
        reference="PyTorch torch.nn.functional.huber_loss",
        differentiable=("predictions",),
    ),
)

LOSSES = LOSSES + SOFTMAX_FAMILY + OTHERS

BY_NAME: dict[str, LossSpec] = {spec.name: spec for spec in LOSSES}
