"""Use case: a loss over arrays too large for one request, in chunks of rows (the offline CLI).

The HTTP path, minus HTTP: the options are validated by the loss's own request model, the loss is
the registry's engine function (`call_loss`), and the answer is built by `loss_response`, so the
JSON is the JSON `POST /v1/losses/{name}` answers for the same arrays.

Inputs larger than a chunk are processed in chunks of rows (axis 0, the sample axis) and the
per-chunk results combined exactly before the one reduction: per-sample losses and the gradients
of per-sample inputs are concatenated, the gradients of inputs shared by every row (InfoNCE's
`keys`) are added, and `n_valid` and the divisor of `mean` (a count or a sum of weights) are added.
`mean` is then the total sum over the total divisor, as for one piece. Which inputs are split is
read off the registry (`TensorField.role`): `sample` inputs are, `shared` ones go whole with each
chunk, `broadcast` ones are split when they have the inputs' rank and rows. Memory-mapped inputs
(`service.npy_files`) are then read one chunk at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.codecs import WIRE_DTYPES
from service.core.context import Context
from service.core.losses import call_loss
from service.core.registry import LossSpec
from service.core.responses import loss_response
from service.engine import Array, LossResult, array_namespace
from service.errors import InvalidInput
from service.schemas import LossResponse

# Rows per chunk are chosen so that a chunk of the per-sample inputs is about this size.
CHUNK_BYTES = 64 * 2**20

Progress = Callable[[int, int], None]  # (rows done, rows in all)


@dataclass(frozen=True)
class _Plan:
    rows: int  # samples along axis 0 (1 when not chunked)
    row_inputs: frozenset[str]  # the inputs sliced per chunk; the others go whole


def _plan(spec: LossSpec, arrays: Mapping[str, NDArray[Any]]) -> _Plan:
    """Which inputs are split into rows, or one piece when the loss cannot be split safely."""
    one_piece = _Plan(rows=1, row_inputs=frozenset())
    required = spec.required_inputs
    if not required or any(spec.inputs[name].role == "broadcast" for name in required):
        return one_piece  # a required input that is neither per sample nor shared: never split
    primary_mark = spec.inputs[required[0]]
    primary = arrays.get(required[0])
    if primary is None or primary.ndim == 0:
        return one_piece
    # Over a class axis (the last), axis 0 is the sample axis only with at least two axes.
    if primary_mark.class_axis and primary.ndim < 2:
        return one_piece
    rows = primary.shape[0]
    row_inputs = set()
    for name, array in arrays.items():
        role = spec.inputs[name].role if name in spec.inputs else "shared"
        if role == "sample":
            if array.ndim == 0 or array.shape[0] != rows:
                return one_piece  # mismatched: the engine names the problem on the whole input
            row_inputs.add(name)
        elif role == "broadcast" and array.ndim == primary.ndim and array.shape[0] == rows > 1:
            row_inputs.add(name)
    return _Plan(rows=rows, row_inputs=frozenset(row_inputs))


def default_chunk_rows(arrays: Mapping[str, NDArray[Any]], plan: _Plan) -> int:
    per_row = sum(arrays[name].nbytes for name in plan.row_inputs) / max(plan.rows, 1)
    return max(1, int(CHUNK_BYTES // per_row)) if per_row else max(plan.rows, 1)


def offline_loss(
    spec: LossSpec,
    arrays: Mapping[str, NDArray[Any]],
    options: Mapping[str, Any],
    *,
    ctx: Context,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
) -> LossResponse:
    """`spec`'s response for `arrays` (by input name) and `options` (as in the request body)."""
    # The loss's request model checks the options and the input names as over HTTP; the files'
    # tensors stand in as empty lists (they are checked below, chunk by chunk).
    body = spec.request.model_validate(
        {"output_encoding": "json", **options, **{name: [] for name in arrays}}
    )
    # Tensors given as JSON among the options (`weight=[1, 2, 0.5]`) are decoded as over HTTP.
    arrays = dict(arrays)
    for name, mark in spec.inputs.items():
        if name in options and options[name] is not None:
            decoded = ctx.decode((name,), options[name], logits=mark.logits)
            arrays[name] = ctx.backend.to_numpy(decoded.array)
    plan = _plan(spec, arrays)
    rows_per_chunk = chunk_rows or default_chunk_rows(arrays, plan)
    combined = _Combined(plan, keep_grads=body.return_grad)
    for start, stop in _chunks(plan.rows, rows_per_chunk):
        chunk = {
            name: array[start:stop] if name in plan.row_inputs else array
            for name, array in arrays.items()
        }
        combined.add(_loss(spec, body, chunk, ctx, start, stop, plan), start, stop, arrays)
        if progress is not None:
            progress(stop, plan.rows)
    # As over HTTP, the first input (in the loss's field order) gives the outputs' dtype defaults.
    first = next(name for name in spec.inputs if name in arrays)
    form = body.output_encoding or "json"
    return loss_response(spec.name, combined.result(), body, form, arrays[first].dtype, ctx.backend)


def _chunks(rows: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, max(rows, 1), size):
        yield start, min(start + size, max(rows, 1))


def _loss(
    spec: LossSpec,
    body: Any,
    chunk: Mapping[str, NDArray[Any]],
    ctx: Context,
    start: int,
    stop: int,
    plan: _Plan,
) -> LossResult:
    """One engine call on one chunk; errors name the rows when the input was split."""
    try:
        inputs = {
            name: ctx.backend.asarray(
                checked_array(
                    name,
                    array,
                    allow_neg_inf=name in spec.inputs and spec.inputs[name].logits,
                    start=start if name in plan.row_inputs else 0,
                )
            )
            for name, array in chunk.items()
        }
        # No `reduction`: the chunks' gradients are combined unscaled, then reduced once.
        return call_loss(spec, inputs, body, compute_dtype=body.compute_dtype)
    except InvalidInput as error:
        if plan.rows <= stop - start:
            raise
        raise type(error)(f"rows [{start}, {stop}): {error.detail}", field=error.field) from None


def checked_array(
    name: str, array: NDArray[Any], *, allow_neg_inf: bool, start: int
) -> NDArray[Any]:
    """The codecs' rules for a file's array: a wire dtype, no NaN or +inf (-inf in logits).

    A C-contiguous, native-endian ndarray (a memory map's chunk is read here). `start` is the
    chunk's first row, so that an index in a message is the index in the whole input.
    """
    if array.dtype.name not in WIRE_DTYPES:
        raise InvalidInput(
            f"{name}: dtype {array.dtype} is not supported; use one of {', '.join(WIRE_DTYPES)}",
            field=name,
        )
    array = np.asarray(array, dtype=array.dtype.newbyteorder("="))
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        bad = ~np.isfinite(array)
        if allow_neg_inf:
            bad &= ~np.isneginf(array)
        if bad.any():
            local = np.unravel_index(int(np.argmax(bad)), array.shape)
            index = (start + int(local[0]), *(int(i) for i in local[1:])) if local else ()
            value = array[local]
            kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
            rule = "finite or -inf (a masked class)" if allow_neg_inf else "finite"
            at = f" at index {index}" if index else ""
            raise InvalidInput(f"{name}: contains {kind}{at}; values must be {rule}", field=name)
    return array


class _Combined:
    """The chunks' results as one (see the module docstring), added up as they come: a chunk's
    gradients are dropped unless asked for, so only one chunk's are ever held beyond the answer.
    """

    def __init__(self, plan: _Plan, *, keep_grads: bool) -> None:
        self.plan = plan
        self.keep_grads = keep_grads
        self.only: LossResult | None = None  # one chunk: its result, as it is
        self.per_sample: list[Array] = []
        self.grads: dict[str, Array] = {}
        self.n_valid = 0
        self.divisors: list[float] = []

    def add(
        self, result: LossResult, start: int, stop: int, arrays: Mapping[str, NDArray[Any]]
    ) -> None:
        whole = stop - start >= self.plan.rows
        if whole:
            self.only = result
            return
        xp = array_namespace(result.per_sample)
        self.per_sample.append(result.per_sample)
        self.n_valid += result.n_valid
        self.divisors.append(result.divisor)
        for name, grad in result.grads.items():
            if not self.keep_grads:
                self.grads.setdefault(name, xp.zeros((0,), dtype=grad.dtype))  # for its dtype
            elif name in self.plan.row_inputs:
                if name not in self.grads:
                    self.grads[name] = xp.empty(arrays[name].shape, dtype=grad.dtype)
                self.grads[name][start:stop] = grad
            elif name in self.grads:
                self.grads[name] += grad
            else:
                self.grads[name] = grad

    def result(self) -> LossResult:
        if self.only is not None:
            return self.only
        xp = array_namespace(self.per_sample[0])
        return LossResult(
            per_sample=xp.concatenate(self.per_sample),
            grads=self.grads,
            n_valid=self.n_valid,
            divisor=math.fsum(self.divisors),
        )
