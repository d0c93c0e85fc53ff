"""Pure array functions: losses, their gradients, the reduction they share, and confident
learning (`label_noise`: label issues and the noise transition matrix).

Nothing here imports FastAPI, pydantic or CuPy. Every function takes NumPy or CuPy arrays and
computes on the library its inputs belong to.
"""

from service.engine._backend import CPU, Backend, BackendUnavailable, DeviceChoice, select_backend
from service.engine._binary import binary_cross_entropy, sigmoid_focal
from service.engine._contrastive import info_nce
from service.engine._cross_entropy import cross_entropy
from service.engine._distillation import kl_divergence
from service.engine._dtypes import ComputeDtype, dtype_name, to_compute_dtype
from service.engine._engine_path import (
    EnginePath,
    checked_engine_path,
    engine_path,
    set_engine_path,
    using_engine_path,
    warm_up,
)
from service.engine._namespace import Array, array_namespace, errstate
from service.engine._pairwise import bradley_terry, triplet_margin
from service.engine._reduction import (
    EmptyPolicy,
    LossResult,
    ReducedLoss,
    Reduction,
    reduce_loss,
    reduce_total,
)
from service.engine._regression import huber, mae, mse
from service.engine._softmax import log_softmax, logsumexp, shared_softmax
from service.engine._softmax_family import (
    focal,
    forward_corrected_cross_entropy,
    generalized_cross_entropy,
    logit_adjusted_cross_entropy,
    poly1,
    symmetric_cross_entropy,
)
from service.engine.label_noise import (
    FILTERS,
    RANKINGS,
    FilterBy,
    LabelNoiseReport,
    RankBy,
    find_label_issues,
    find_label_issues_from_logits,
)

__all__ = [
    "CPU",
    "FILTERS",
    "RANKINGS",
    "Array",
    "Backend",
    "BackendUnavailable",
    "ComputeDtype",
    "DeviceChoice",
    "EmptyPolicy",
    "EnginePath",
    "FilterBy",
    "LabelNoiseReport",
    "LossResult",
    "RankBy",
    "ReducedLoss",
    "Reduction",
    "array_namespace",
    "binary_cross_entropy",
    "bradley_terry",
    "checked_engine_path",
    "cross_entropy",
    "dtype_name",
    "engine_path",
    "errstate",
    "find_label_issues",
    "find_label_issues_from_logits",
    "focal",
    "forward_corrected_cross_entropy",
    "generalized_cross_entropy",
    "huber",
    "info_nce",
    "kl_divergence",
    "log_softmax",
    "logit_adjusted_cross_entropy",
    "logsumexp",
    "mae",
    "mse",
    "poly1",
    "reduce_loss",
    "reduce_total",
    "select_backend",
    "set_engine_path",
    "shared_softmax",
    "sigmoid_focal",
    "symmetric_cross_entropy",
    "to_compute_dtype",
    "triplet_margin",
    "using_engine_path",
    "warm_up",
]
