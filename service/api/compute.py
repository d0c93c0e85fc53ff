"""The three steps every loss route takes: decode the tensors, call the engine, build the response.

A route hands its synchronous work to `ComputeContext.run`, which runs it on a worker thread
(heavy NumPy never blocks the event loop) under the configured request timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from pydantic import BaseModel

from service import engine
from service.api import calibration_reports
from service.api.catalogue import BY_NAME
from service.api.concurrency import ComputeGate
from service.api.metrics import count_elements
from service.api.schemas import LossRequest, LossResponse
from service.api.schemas.common import tensor_fields
from service.api.schemas.evaluate import EvaluateRequest, EvaluateResponse
from service.api.schemas.losses import LossOptions, loss_options
from service.codecs import (
    DecodedTensor,
    TensorForm,
    TensorLimits,
    decode_tensor,
    encode_tensor,
    json_array,
    request_elements,
)
from service.codecs._dtypes import numpy_dtype
from service.config import Settings
from service.engine import Array, Backend, LossResult, reduce_loss
from service.errors import (
    FieldPath,
    InvalidInput,
    LimitExceeded,
)

if TYPE_CHECKING:
    from service.api.catalogue import LossSpec

T = TypeVar("T")


@dataclass(frozen=True)
class ComputeContext:
    backend: Backend
    settings: Settings
    # The app's compute slots (service.api.deps); without them, `run` makes its own.
    gate: ComputeGate | None = None

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` on a worker thread, once one of the `max_concurrent` compute slots is
        free (`service.api.concurrency`), within `request_timeout_s`; the tensors it decodes
        hold at most `max_request_elements` together."""
        gate = self.gate or ComputeGate.from_settings(self.settings)
        with request_elements(self.settings.max_request_elements):
            return await gate.run(work, *args, timeout_s=self.settings.request_timeout_s)

    def loss(self, spec: LossSpec, body: LossRequest) -> LossResponse:
        """Decode `body`'s tensors, call the loss's engine function once, build the response."""
        inputs, first = self.decode_tensors(body)
        result = spec.function(
            **inputs,
            **loss_options(body),
            compute_dtype=body.compute_dtype,
            **grad_reduction_option(spec, body),
        )
        form = body.output_encoding or (first.form if first else "json")
        input_dtype = first.array.dtype if first else None
        return self.respond(spec.name, result, body, form, input_dtype)

    def evaluate(self, body: EvaluateRequest) -> EvaluateResponse:
        """Every requested loss on one upload, sharing the softmax (`engine.shared_softmax`)."""
        logits = self.decode(("logits",), body.logits, logits=True)
        labels = self.decode(("labels",), body.labels)
        # Cast once: every loss then sees the same array, and the softmax cache recognises it.
        x = engine.to_compute_dtype(self.backend.asarray(logits.array), body.compute_dtype)
        y = self.backend.asarray(labels.array)
        form = body.output_encoding or logits.form
        responses = []
        with engine.shared_softmax(x):
            for index, item in enumerate(body.losses):
                spec = BY_NAME[item.name]
                path = ("losses", index)
                options, _ = self.decode_tensors(item, path)
                try:
                    result = spec.function(
                        x,
                        y,
                        **options,
                        **loss_options(item),
                        compute_dtype=body.compute_dtype,
                        **grad_reduction_option(spec, item),
                    )
                except InvalidInput as error:
                    raise _within(error, path) from None
                responses.append(self.respond(spec.name, result, item, form, logits.array.dtype))
        report = None
        if body.calibration is not None:
            report = calibration_reports.report({"logits": x, "labels": y}, body.calibration, self)
        return EvaluateResponse(losses=responses, calibration=report)

    def decode_tensors(
        self, body: BaseModel, path: FieldPath = ()
    ) -> tuple[dict[str, Array], DecodedTensor | None]:
        """Every tensor field of `body` that is set, on the backend, and the first one as sent
        (its form and dtype are the defaults of the outputs')."""
        arrays: dict[str, Array] = {}
        first = None
        for name, mark in tensor_fields(type(body)).items():
            value = getattr(body, name)
            if value is None:
                continue
            decoded = self.decode((*path, name), value, logits=mark.logits)
            first = first or decoded
            arrays[name] = self.backend.asarray(decoded.array)
        return arrays, first

    def decode(self, field: FieldPath, value: object, *, logits: bool = False) -> DecodedTensor:
        """Logits may hold -inf (a masked class); their class axis is capped by `max_classes`."""
        limits = TensorLimits(max_elements=self.settings.max_elements)
        decoded = decode_tensor(value, field=field, limits=limits, allow_neg_inf=logits)
        count_elements(decoded.array.size)
        if logits:
            self.check_classes(field, decoded.array)
        return decoded

    def check_classes(self, field: FieldPath, array: Array) -> None:
        """The class axis (the last) of logits is capped by `max_classes`."""
        if array.shape and array.shape[-1] > self.settings.max_classes:
            raise LimitExceeded(
                f"{'.'.join(map(str, field))}: {array.shape[-1]} classes exceed max_classes = "
                f"{self.settings.max_classes}",
                field=field,
            )

    def respond(
        self,
        name: str,
        result: LossResult,
        options: LossOptions,
        form: TensorForm,
        input_dtype: np.dtype | None,
    ) -> LossResponse:
        """Reduce `result` as `options` ask and encode its tensors in `form`."""
        reduced = reduce_loss(result, options.reduction, empty=options.empty)
        grads = {
            key: grad_in_dtype(grad, options.grad_dtype, input_dtype)
            for key, grad in reduced.grads.items()
        }
        logits_grad = grads.pop("logits", None)
        dtype = next(iter(reduced.grads.values())).dtype  # the compute dtype, before any cast
        return LossResponse(
            name=name,
            loss=None if math.isnan(reduced.loss) else reduced.loss,
            per_sample=self._encode(reduced.per_sample, form),
            grad=self._encode(logits_grad, form) if options.return_grad else None,
            grads=(
                {key: self._encode(g, form) for key, g in grads.items()}
                if options.return_grad and grads
                else None
            ),
            n_valid=reduced.n_valid,
            weight_sum=reduced.weight_sum,
            backend=self.backend.name,
            dtype=str(dtype),
        )

    def _encode(self, array: Array | None, form: TensorForm) -> object:
        """An output tensor for the response: base64 objects, or, for JSON, an array that
        `OrjsonResponse` writes as nested lists without building them in Python."""
        if array is None:
            return None
        host = self.backend.to_numpy(array)
        return json_array(host) if form == "json" else encode_tensor(host, form)


def grad_reduction_option(spec: LossSpec, options: LossOptions) -> dict[str, object]:
    """`grad_reduction` for a loss that takes it: its gradient then needs no rescaling."""
    return {"grad_reduction": options.reduction} if spec.takes_grad_reduction else {}


def _within(error: InvalidInput, path: FieldPath) -> InvalidInput:
    """An engine error about a loss's own option, located under `losses[i]` of /v1/evaluate."""
    if error.field[:1] in (("logits",), ("labels",)):
        return error  # the shared inputs: their names are already right
    dotted = ".".join(str(part) for part in path)
    return type(error)(f"{dotted}.{error.detail}", field=(*path, *error.field))


def grad_in_dtype(grad: Array, grad_dtype: str | None, input_dtype: np.dtype | None) -> Array:
    """The gradient as `grad_dtype` asks: the compute dtype (None), `input`, or a float dtype.

    A float16 or bfloat16 upload can get its gradient back at half the bytes of float32.
    """
    if grad_dtype is None or (grad_dtype == "input" and input_dtype is None):
        return grad
    target = input_dtype if grad_dtype == "input" else numpy_dtype(grad_dtype)
    if target is None or target.kind not in "fV":  # integer inputs: keep the float gradient
        return grad
    return grad.astype(target, copy=False)
