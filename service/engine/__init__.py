"""Pure array functions: losses, their gradients, and the reduction they share.

Nothing here imports FastAPI, pydantic or CuPy. Every function takes NumPy or CuPy arrays and
computes on the library its inputs belong to.
"""

from service.engine._backend import CPU, Backend, BackendUnavailable, DeviceChoice, select_backend
from service.engine._binary import binary_cross_entropy
from service.engine._cross_entropy import cross_entropy
from service.engine._dtypes import ComputeDtype
from service.engine._namespace import Array, array_namespace
from service.engine._reduction import EmptyPolicy, LossResult, ReducedLoss, Reduction, reduce_loss
from service.engine._softmax import log_softmax, logsumexp

__all__ = [
    "CPU",
    "Array",
    "Backend",
    "BackendUnavailable",
    "ComputeDtype",
    "DeviceChoice",
    "EmptyPolicy",
    "LossResult",
    "ReducedLoss",
    "Reduction",
    "array_namespace",
    "binary_cross_entropy",
    "cross_entropy",
    "log_softmax",
    "logsumexp",
    "reduce_loss",
    "select_backend",
]
