"""What the client's methods return: frozen dataclasses with NumPy arrays."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.client._exceptions import ResponseError, error_from_response
from service.client._tensors import INFER_HEADER_LENGTH, decode, oip_output
from service.client._transfer import Answer
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
class LabelNoiseResult:
    """Confident learning's answer (`POST /v1/label-noise`), with NumPy arrays.

    `transition_matrix` is `forward-corrected-cross-entropy`'s option as it is: row i is
    P(given label | true class i)."""

    label_issues: Array
    n_issues: int
    label_quality: Array
    noise_rate: float
    confident_joint: Array
    class_thresholds: Array
    transition_matrix: Array
    n: int
    n_classes: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> LabelNoiseResult:
        try:
            arrays = {
                name: _required(decode(body[name], name))
                for name in (
                    "label_issues",
                    "label_quality",
                    "confident_joint",
                    "class_thresholds",
                    "transition_matrix",
                )
            }
            return cls(
                **arrays,
                n_issues=int(body["n_issues"]),
                noise_rate=float(body["noise_rate"]),
                n=int(body["n"]),
                n_classes=int(body["n_classes"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ResponseError(f"not a label-noise response: {error!r}") from None


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

    @classmethod
    def from_answer(cls, answer: Answer) -> InferResult:
        """The result of an answer: its JSON header, then its outputs' binary data."""
        response = answer.response
        if response.status_code >= 400:
            raise error_from_response(response)
        content = memoryview(answer.body)
        length = response.headers.get(INFER_HEADER_LENGTH)
        split = int(length) if length is not None and length.isdigit() else len(content)
        try:
            header = json.loads(bytes(content[:split]))
            binary, offset = content[split:], 0
            outputs = {}
            for entry in header["outputs"]:
                outputs[str(entry["name"])], offset = oip_output(entry, binary, offset)
            return cls(
                model_name=str(header["model_name"]),
                model_version=header.get("model_version"),
                id=header.get("id"),
                outputs=outputs,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ResponseError(f"not an inference answer: {error!r}") from None

    @property
    def loss(self) -> float:
        return float(self.outputs["loss"].reshape(-1)[0])

    @property
    def per_sample(self) -> Array | None:
        return self.outputs.get("per_sample")

    @property
    def grad(self) -> Array | None:
        return self.outputs.get("grad")


@dataclass(frozen=True)
class RunLoss:
    """A loss of a run, reduced over every batch: `/v1/evaluate` on their concatenation."""

    name: str
    loss: float  # NaN where the service sends null (`empty="nan"`, nothing to average)
    n_valid: int
    weight_sum: float


@dataclass(frozen=True)
class RunReport:
    """`GET /v1/runs/{id}`: a run's counts and its report over every batch so far.

    `calibration` is the calibration report as the service sends it (a dict, as in
    `EvaluateResult`), None before the first batch or without calibration options; `spec` the
    losses and calibration options the run was created with.
    """

    id: str
    name: str | None
    metadata: Mapping[str, str]
    status: str  # `open` or `closed`
    created_at: datetime
    updated_at: datetime
    n_batches: int
    n_samples: int
    losses: list[RunLoss]
    calibration: Mapping[str, Any] | None
    spec: Mapping[str, Any]

    def __getitem__(self, name: str) -> RunLoss:
        """The first loss called `name`."""
        for loss in self.losses:
            if loss.name == name:
                return loss
        raise KeyError(name)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RunReport:
        try:
            return cls(
                id=str(body["id"]),
                name=body["name"],
                metadata=dict(body["metadata"]),
                status=str(body["status"]),
                created_at=datetime.fromisoformat(body["created_at"]),
                updated_at=datetime.fromisoformat(body["updated_at"]),
                n_batches=int(body["n_batches"]),
                n_samples=int(body["n_samples"]),
                losses=[
                    RunLoss(
                        name=str(item["name"]),
                        loss=math.nan if item["loss"] is None else float(item["loss"]),
                        n_valid=int(item["n_valid"]),
                        weight_sum=float(item["weight_sum"]),
                    )
                    for item in body["losses"]
                ],
                calibration=body["calibration"],
                spec=body["spec"],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ResponseError(f"not a run: {error!r}") from None


@dataclass(frozen=True)
class BatchReceipt:
    """`PUT /v1/runs/{id}/batches/{batch_id}`: the batch counted now, or before (`duplicate`)."""

    run_id: str
    batch_id: str
    duplicate: bool  # true: this batch id and digest were counted before; nothing changed
    n_samples: int
    digest: str  # SHA-256 of the tensors, as `batch_digest` computes it

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> BatchReceipt:
        try:
            return cls(**{name: body[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as error:
            raise ResponseError(f"not a batch receipt: {error!r}") from None


@dataclass(frozen=True)
class StoredBatch:
    """`GET /v1/runs/{id}/batches/{batch_id}`: a batch the run has counted."""

    run_id: str
    batch_id: str
    digest: str
    n_samples: int
    created_at: datetime

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> StoredBatch:
        try:
            return cls(
                run_id=str(body["run_id"]),
                batch_id=str(body["batch_id"]),
                digest=str(body["digest"]),
                n_samples=int(body["n_samples"]),
                created_at=datetime.fromisoformat(body["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ResponseError(f"not a stored batch: {error!r}") from None


def _required(array: Array | None) -> Array:
    if array is None:
        raise ValueError("a gradient is null")
    return array
