"""The three steps every loss route takes: decode the tensors, call the engine, build the response.

A route hands its synchronous work to `ComputeContext.run`, which runs it on a worker thread
(heavy NumPy never blocks the event loop) under the configured request timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

from service.api.schemas import LossRequest, LossResponse
from service.codecs import DecodedTensor, TensorForm, TensorLimits, decode_tensor, encode_tensor
from service.config import Settings
from service.engine import Array, Backend, LossResult, reduce_loss
from service.errors import ComputeTimeout, LimitExceeded

T = TypeVar("T")


@dataclass(frozen=True)
class ComputeContext:
    backend: Backend
    settings: Settings

    async def run(self, work: Callable[..., T], *args: object) -> T:
        timeout = self.settings.request_timeout_s
        try:
            with anyio.fail_after(timeout):
                # The thread cannot be interrupted: on timeout the caller gets 503 and the
                # thread's result is discarded when it finishes.
                return await anyio.to_thread.run_sync(work, *args, abandon_on_cancel=True)
        except TimeoutError:
            raise ComputeTimeout(
                f"the computation took longer than request_timeout_s = {timeout}"
            ) from None

    def decode(self, value: object, field: str) -> DecodedTensor:
        limits = TensorLimits(max_elements=self.settings.max_elements)
        return decode_tensor(value, field=field, limits=limits)

    def decode_optional(self, value: object, field: str) -> Array | None:
        return None if value is None else self.backend.asarray(self.decode(value, field).array)

    def decode_logits(self, value: object, field: str = "logits") -> DecodedTensor:
        """Logits may hold -inf (a masked class); their class axis is capped by `max_classes`."""
        limits = TensorLimits(max_elements=self.settings.max_elements)
        decoded = decode_tensor(value, field=field, limits=limits, allow_neg_inf=True)
        shape = decoded.array.shape
        if shape and shape[-1] > self.settings.max_classes:
            raise LimitExceeded(
                f"{field}: {shape[-1]} classes exceed max_classes = {self.settings.max_classes}",
                field=field,
            )
        return decoded

    def respond(
        self, name: str, result: LossResult, request: LossRequest, input_form: TensorForm
    ) -> LossResponse:
        reduced = reduce_loss(result, request.reduction, empty=request.empty)
        form = request.output_encoding or input_form
        grad = reduced.grads["logits"]
        return LossResponse(
            name=name,
            loss=None if math.isnan(reduced.loss) else reduced.loss,
            per_sample=self._encode(reduced.per_sample, form),
            grad=self._encode(grad, form) if request.return_grad else None,
            n_valid=reduced.n_valid,
            weight_sum=reduced.weight_sum,
            backend=self.backend.name,
            dtype=str(grad.dtype),
        )

    def _encode(self, array: Array | None, form: TensorForm) -> object:
        return None if array is None else encode_tensor(self.backend.to_numpy(array), form)
