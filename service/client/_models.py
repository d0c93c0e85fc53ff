"""What the client's methods return: frozen dataclasses with NumPy arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.client._exceptions import ResponseError
from service.client._tensors import decode
from service.client._types import Array


@dataclass(frozen=True)
class LossResult:
    """One loss, as `POST /v1/losses/{name}` answers it, with NumPy arrays.

    `loss` is the reduced value (for `reduction="none"`, the sum); NaN where the service sends
    null (`empty="nan"` with nothing to average). `grad` is d loss / d logits, `grads` the
    gradients of losses whose inputs are not logits, by input name.
    """

    name: str
    loss: float
    n_valid: int
    weight_sum: float
    backend: str
    dtype: str
    per_sample: Array | None = None
    grad: Array | None = None
    grads: Mapping[str, Array] | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LossResult:
        try:
            grads = body.get("grads")
            return cls(
                name=str(body["name"]),
                loss=math.nan if body["loss"] is None else float(body["loss"]),
                n_valid=int(body["n_valid"]),
                weight_sum=float(body["weight_sum"]),
                backend=str(body["backend"]),
                dtype=str(body["dtype"]),
                per_sample=decode(body.get("per_sample"), "per_sample"),
                grad=decode(body.get("grad"), "grad"),
                grads=None
                if grads is None
                else {key: _required(decode(value, key)) for key, value in grads.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ResponseError(f"not a loss response: {error!r}") from None


@dataclass(frozen=True)
class EvaluateResult:
    """`POST /v1/evaluate`: one LossResult per requested loss, in order, and the calibration
    report as the service sends it (a dict), when one was asked for."""

    losses: list[LossResult]
    calibration: Mapping[str, Any] | None = None

    def __getitem__(self, name: str) -> LossResult:
        """The first result of the loss called `name`."""
        for result in self.losses:
            if result.name == name:
                return result
        raise KeyError(name)


@dataclass(frozen=True)
class LossInput:
    name: str
    required: bool
    description: str | None = None


@dataclass(frozen=True)
class LossOption:
    name: str
    default: Any
    description: str | None = None
    json_schema: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossInfo:
    """An entry of `GET /v1/losses`: a loss's inputs, options, and the convention it follows."""

    name: str
    path: str
    summary: str
    reference: str
    inputs: list[LossInput]
    options: list[LossOption]

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LossInfo:
        try:
            return cls(
                name=str(body["name"]),
                path=str(body["path"]),
                summary=str(body["summary"]),
                reference=str(body["reference"]),
                inputs=[LossInput(**item) for item in body["inputs"]],
                options=[LossOption(**item) for item in body["options"]],
            )
        except (KeyError, TypeError) as error:
            raise ResponseError(f"not a loss catalogue entry: {error!r}") from None


@dataclass(frozen=True)
class Health:
    status: str


@dataclass(frozen=True)
class Readiness:
    status: str
    backend: str
    device: str
    version: str
    engine: str = ""  # `fused` or `reference`; empty from servers that do not say

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Readiness:
        """Fields this client knows; a newer server's extra fields are ignored."""
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})


@dataclass(frozen=True)
class InferResult:
    """An Open Inference Protocol answer: the outputs by name (`loss`, `per_sample`, `grad`, or
    `grad_<input>`), as NumPy arrays."""

    model_name: str
    outputs: Mapping[str, Array]
    model_version: str | None = None
    id: str | None = None

    @property
    def loss(self) -> float:
        return float(self.outputs["loss"].reshape(-1)[0])

    @property
    def per_sample(self) -> Array | None:
        return self.outputs.get("per_sample")

    @property
    def grad(self) -> Array | None:
        return self.outputs.get("grad")


def _required(array: Array | None) -> Array:
    if array is None:
        raise ValueError("a gradient is null")
    return array
