"""A typed Python client of the loss service: NumPy in, NumPy out.

    from service.client import LossClient

    with LossClient("http://127.0.0.1:8000") as client:
        result = client.loss("cross-entropy", logits=logits, labels=labels, return_grad=True)
        result.loss, result.grad  # a float and an ndarray of the logits' shape

`AsyncLossClient` has the same methods, awaited. Errors are `APIError`s carrying the service's
problem details (`status`, `type`, `detail`, `errors`); see `service.client._exceptions`.
"""

from service.client._client import AsyncLossClient, LossClient
from service.client._exceptions import (
    APIError,
    InvalidInputError,
    LimitExceededError,
    LossServiceError,
    NotFoundError,
    ResponseError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from service.client._models import (
    EvaluateResult,
    Health,
    InferResult,
    LossInfo,
    LossInput,
    LossOption,
    LossResult,
    Readiness,
)
from service.client._types import Array, ArrayLike, Encoding

__all__ = [
    "APIError",
    "Array",
    "ArrayLike",
    "AsyncLossClient",
    "Encoding",
    "EvaluateResult",
    "Health",
    "InferResult",
    "InvalidInputError",
    "LimitExceededError",
    "LossClient",
    "LossInfo",
    "LossInput",
    "LossOption",
    "LossResult",
    "LossServiceError",
    "NotFoundError",
    "Readiness",
    "ResponseError",
    "ServiceUnavailableError",
    "UnauthorizedError",
]

# Shown as `service.client.LossClient` in reprs, tracebacks and docs, as httpx does: only the
# classes defined here (the type aliases are typing and NumPy objects shared with everyone).
__locals = locals()
for __name in __all__:
    if getattr(__locals[__name], "__module__", "").startswith("service.client._"):
        __locals[__name].__module__ = "service.client"
