"""Losses over `.npy` / `.npz` files without a server: what `loss-service compute` runs.

The HTTP path, minus HTTP: the options are validated by the loss's own request model, the loss is
the catalogue's engine function, and the answer is built by `ComputeContext.respond`, so the JSON
is the JSON `POST /v1/losses/{name}` answers for the same arrays.

Inputs larger than a chunk are processed in chunks of rows (axis 0, the sample axis) and the
per-chunk results combined exactly before the one reduction: per-sample losses and the gradients
of per-sample inputs are concatenated, the gradients of inputs shared by every row (InfoNCE's
`keys`) are added, and `n_valid` and the divisor of `mean` (a count or a sum of weights) are added.
`mean` is then the total sum over the total divisor, as for one piece. `.npy` files are memory-
mapped, so only one chunk of them is in memory at a time.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.api.catalogue import LossSpec
from service.api.compute import ComputeContext
from service.api.schemas import LossResponse
from service.api.schemas.common import tensor_fields
from service.api.schemas.losses import loss_options
from service.codecs import WIRE_DTYPES
from service.engine import Array, LossResult, array_namespace
from service.errors import InvalidInput

# Rows per chunk are chosen so that a chunk of the per-sample inputs is about this size.
CHUNK_BYTES = 64 * 2**20
# Inputs whose axis 0 is the sample axis.
SAMPLE_INPUTS = frozenset(
    {
        "logits",
        "labels",
        "target_logits",
        "target_probs",
        "chosen",
        "rejected",
        "ref_chosen",
        "ref_rejected",
        "anchor",
        "positive",
        "negative",
        "predictions",
        "targets",
        "query",
    }
)
# Required inputs that every row shares (passed whole with each chunk).
SHARED_INPUTS = frozenset({"keys", "transition_matrix"})
# Losses whose options broadcast against the inputs elementwise: such an option with the inputs'
# rank and row count is per-sample (a BCE `weight` of the logits' shape).
ELEMENTWISE = frozenset({"binary-cross-entropy", "sigmoid-focal", "mse", "mae", "huber"})
ELEMENTWISE_OPTIONS = frozenset({"weight", "pos_weight"})

Progress = Callable[[int, int], None]  # (rows done, rows in all)


def load_arrays(path: str, default_key: str | None = None) -> dict[str, NDArray[Any]]:
    """The arrays of a file: `x.npy` (memory-mapped), `x.npz` (every array, by name), or
    `x.npz:key` (one array). With `default_key`, an `.npz` gives its array of that name, or its
    only array."""
    file, _, key = path.rpartition(":") if ":" in Path(path).name else (path, "", "")
    if file.endswith(".npy"):
        array = np.load(file, mmap_mode="r", allow_pickle=False)
        return {default_key or Path(file).stem: array}
    if not file.endswith(".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file (or file.npz:name)")
    arrays = _load_npz(file)
    if key:
        if key not in arrays:
            raise ValueError(f"{path}: no array {key!r}; the file has {', '.join(arrays)}")
        return {default_key or key: arrays[key]}
    if default_key is None:
        return arrays
    if default_key in arrays:
        return {default_key: arrays[default_key]}
    if len(arrays) == 1:
        return {default_key: next(iter(arrays.values()))}
    raise ValueError(
        f"{path}: no array {default_key!r} among {', '.join(arrays)}; name one as {file}:NAME"
    )


def _load_npz(file: str) -> dict[str, NDArray[Any]]:
    """Every array of an `.npz`; those stored uncompressed are memory-mapped in place."""
    with np.load(file, allow_pickle=False) as npz:
        names = list(npz.files)
        arrays = {name: _mapped_member(file, name) for name in names}
        return {name: array if array is not None else npz[name] for name, array in arrays.items()}


def _mapped_member(file: str, name: str) -> NDArray[Any] | None:
    """A stored (uncompressed) `.npy` member of a zip file as a memory map, or None."""
    with zipfile.ZipFile(file) as archive:
        info = archive.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(file, "rb") as handle:
        # The local file header: 30 bytes, then the name and the extra field.
        handle.seek(info.header_offset + 26)
        name_length, extra_length = np.frombuffer(handle.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_length) + int(extra_length)
        handle.seek(start)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        if dtype.hasobject:
            return None
        offset = handle.tell()
    return np.memmap(
        file, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
    )


@dataclass(frozen=True)
class _Plan:
    rows: int  # samples along axis 0 (1 when not chunked)
    row_inputs: frozenset[str]  # the inputs sliced per chunk; the others go whole


def _plan(spec: LossSpec, arrays: Mapping[str, NDArray[Any]]) -> _Plan:
    """Which inputs are split into rows, or one piece when the loss cannot be split safely."""
    fields = tensor_fields(spec.request)
    required = [name for name in fields if spec.request.model_fields[name].is_required()]
    one_piece = _Plan(rows=1, row_inputs=frozenset())
    if not required or any(n not in SAMPLE_INPUTS | SHARED_INPUTS for n in required):
        return one_piece  # a loss this module does not know: never split it
    primary = arrays.get(required[0])
    if primary is None or primary.ndim == 0:
        return one_piece
    # Over a class axis (the last), axis 0 is the sample axis only with at least two axes.
    if required[0] == "logits" and spec.name not in ELEMENTWISE and primary.ndim < 2:
        return one_piece
    rows = primary.shape[0]
    row_inputs = set()
    for name, array in arrays.items():
        if name in SAMPLE_INPUTS:
            if array.ndim == 0 or array.shape[0] != rows:
                return one_piece  # mismatched: the engine names the problem on the whole input
            row_inputs.add(name)
        elif (
            spec.name in ELEMENTWISE
            and name in ELEMENTWISE_OPTIONS
            and array.ndim == primary.ndim
            and array.shape[0] == rows
            and rows > 1
        ):
            row_inputs.add(name)
    return _Plan(rows=rows, row_inputs=frozenset(row_inputs))


def default_chunk_rows(arrays: Mapping[str, NDArray[Any]], plan: _Plan) -> int:
    per_row = sum(arrays[name].nbytes for name in plan.row_inputs) / max(plan.rows, 1)
    return max(1, int(CHUNK_BYTES // per_row)) if per_row else max(plan.rows, 1)


def compute_loss(
    spec: LossSpec,
    arrays: Mapping[str, NDArray[Any]],
    options: Mapping[str, Any],
    compute: ComputeContext,
    *,
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
    for name, mark in tensor_fields(spec.request).items():
        if name in options and options[name] is not None:
            decoded = compute.decode((name,), options[name], logits=mark.logits)
            arrays[name] = compute.backend.to_numpy(decoded.array)
    plan = _plan(spec, arrays)
    rows_per_chunk = chunk_rows or default_chunk_rows(arrays, plan)
    combined = _Combined(plan, keep_grads=body.return_grad)
    for start, stop in _chunks(plan.rows, rows_per_chunk):
        chunk = {
            name: array[start:stop] if name in plan.row_inputs else array
            for name, array in arrays.items()
        }
        combined.add(_loss(spec, body, chunk, compute, start, stop, plan), start, stop, arrays)
        if progress is not None:
            progress(stop, plan.rows)
    # As over HTTP, the first input (in the loss's field order) gives the outputs' dtype defaults.
    first = next(name for name in tensor_fields(spec.request) if name in arrays)
    return compute.respond(
        spec.name,
        combined.result(),
        body,
        body.output_encoding or "json",
        input_dtype=arrays[first].dtype,
    )


def _chunks(rows: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, max(rows, 1), size):
        yield start, min(start + size, max(rows, 1))


def _loss(
    spec: LossSpec,
    body: Any,
    chunk: Mapping[str, NDArray[Any]],
    compute: ComputeContext,
    start: int,
    stop: int,
    plan: _Plan,
) -> LossResult:
    """One engine call on one chunk; errors name the rows when the input was split."""
    try:
        logits = _logit_fields(spec)
        inputs = {
            name: compute.backend.asarray(
                _checked(
                    name,
                    array,
                    allow_neg_inf=name in logits,
                    start=start if name in plan.row_inputs else 0,
                )
            )
            for name, array in chunk.items()
        }
        return spec.function(**inputs, **loss_options(body), compute_dtype=body.compute_dtype)
    except InvalidInput as error:
        if plan.rows <= stop - start:
            raise
        raise type(error)(f"rows [{start}, {stop}): {error.detail}", field=error.field) from None


def _logit_fields(spec: LossSpec) -> set[str]:
    return {name for name, mark in tensor_fields(spec.request).items() if mark.logits}


def _checked(name: str, array: NDArray[Any], *, allow_neg_inf: bool, start: int) -> NDArray[Any]:
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
