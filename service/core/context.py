"""What every use case computes with: the backend chosen at startup, the settings, and tensors
decoded from request fields under the service's limits."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pydantic import BaseModel

from service.codecs import DecodedTensor, TensorLimits, decode_tensor
from service.config import Settings
from service.engine import Array, Backend
from service.errors import FieldPath, LimitExceeded
from service.schemas.common import tensor_fields
from service.telemetry import count_elements


@dataclass(frozen=True)
class Context:
    backend: Backend
    settings: Settings

    @functools.cached_property
    def limits(self) -> TensorLimits:
        return TensorLimits(max_elements=self.settings.max_elements)

    def decode(self, field: FieldPath, value: object, *, logits: bool = False) -> DecodedTensor:
        """One tensor field. Logits may hold -inf (a masked class); their class axis is capped
        by `max_classes`."""
        decoded = decode_tensor(value, field=field, limits=self.limits, allow_neg_inf=logits)
        count_elements(decoded.array.size)
        if logits:
            self.check_classes(field, decoded.array)
        return decoded

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

    def check_classes(self, field: FieldPath, array: Array) -> None:
        """The class axis (the last) of logits is capped by `max_classes`."""
        if array.shape and array.shape[-1] > self.settings.max_classes:
            raise LimitExceeded(
                f"{'.'.join(map(str, field))}: {array.shape[-1]} classes exceed max_classes = "
                f"{self.settings.max_classes}",
                field=field,
            )
