"""A typed Python client of the loss service: NumPy in, NumPy out.

    from service.client import LossClient

    with LossClient("http://127.0.0.1:8000") as client:
        result = client.loss("cross-entropy", logits=logits, labels=labels, return_grad=True)
        result.loss, result.grad  # a float and an ndarray of the logits' shape

`AsyncLossClient` has the same methods, awaited. Errors are `APIError`s carrying the service's
problem details (`status`, `type`, `detail`, `errors`); see `service.client._exceptions`.

An evaluation run, a dataset sent in batches (`Run`, `AsyncRun`; retried safely, see `Retry`):

        run = client.create_run(["cross-entropy"], calibration={"n_bins": 15})
        for logits, labels in batches:
            run.add_batch(logits, labels)
        report = run.report()  # as /v1/evaluate and /v1/calibration on every batch at once
"""

from service.client._client import AsyncLossClient, LossClient
from service.client._exceptions import (
    APIError,
    ConflictError,
    InvalidInputError,
    LimitExceededError,
    LossServiceError,
    NotFoundError,
    ResponseError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from service.client._models import (
    BatchReceipt,
    EvaluateResult,
    Health,
    InferResult,
    LabelNoiseResult,
    LossInfo,
    LossInput,
    LossOption,
    LossResult,
    Readiness,
    RunLoss,
    RunReport,
    StoredBatch,
)
from service.client._retry import Retry
from service.client._runs import AsyncRun, Run
from service.client._types import Array, ArrayLike, Encoding

__all__ = [
    "APIError",
    "Array",
    "ArrayLike",
    "AsyncLossClient",
    "AsyncRun",
    "BatchReceipt",
    "ConflictError",
    "Encoding",
    "EvaluateResult",
    "Health",
    "InferResult",
    "InvalidInputError",
    "LabelNoiseResult",
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
    "Retry",
    "Run",
    "RunLoss",
    "RunReport",
    "ServiceUnavailableError",
    "StoredBatch",
    "UnauthorizedError",
]

# Shown as `service.client.LossClient` in reprs, tracebacks and docs, as httpx does: only the
# classes defined here (the type aliases are typing and NumPy objects shared with everyone).
__locals = locals()
for __name in __all__:
    if getattr(__locals[__name], "__module__", "").startswith("service.client._"):
        __locals[__name].__module__ = "service.client"
