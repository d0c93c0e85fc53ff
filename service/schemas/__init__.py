"""Request and response bodies, one module per resource, with the names of docs/conventions.md."""

from service.schemas.calibration import (
    CalibrationMergeRequest,
    CalibrationOptions,
    CalibrationRequest,
    CalibrationResponse,
    CalibrationState,
    ReliabilityDiagramRequest,
)
from service.schemas.common import (
    Body,
    Logits,
    OptionalLogits,
    OptionalTensor,
    OutputEncoding,
    Tensor,
    TensorField,
    tensor_fields,
)
from service.schemas.health import Health, Readiness
from service.schemas.losses import (
    BinaryCrossEntropyRequest,
    CrossEntropyRequest,
    LossCatalogue,
    LossInfo,
    LossRequest,
    LossResponse,
    common_options,
    describe_loss,
)

__all__ = [
    "BinaryCrossEntropyRequest",
    "Body",
    "CalibrationMergeRequest",
    "CalibrationOptions",
    "CalibrationRequest",
    "CalibrationResponse",
    "CalibrationState",
    "CrossEntropyRequest",
    "Health",
    "Logits",
    "LossCatalogue",
    "LossInfo",
    "LossRequest",
    "LossResponse",
    "OptionalLogits",
    "OptionalTensor",
    "OutputEncoding",
    "Readiness",
    "ReliabilityDiagramRequest",
    "Tensor",
    "TensorField",
    "common_options",
    "describe_loss",
    "tensor_fields",
]
