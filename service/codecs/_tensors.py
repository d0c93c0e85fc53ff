"""Tensor fields on the wire <-> NumPy arrays, with the element limit and the finiteness rules.

A tensor field arrives as whatever the JSON parser produced for it, in one of two forms
(docs/conventions.md, "Tensors on the wire"):

- ``"json"``: a number or nested arrays of numbers, read as int64 when every number is an
  integer and as float64 otherwise;
- ``"base64"``: an object ``{"dtype", "shape", "data"}`` whose data is base64 of raw
  little-endian, row-major bytes.

Both forms end in the same checks (`check_elements`, `check_finite`). Every error is an
`InvalidInput` (422) or a `LimitExceeded` (413) whose message starts with the dotted field path
and whose `field` is that path as a tuple. Within `request_elements(limit)`, every tensor decoded
also counts against one budget for the whole request.

Decoded arrays may be read-only views of the decoded bytes: the engine never writes into its
inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray

from service.codecs._base64 import Base64Output, Base64Text, b64decode
from service.codecs._dtypes import (
    _BFLOAT16,
    MAX_NDIM,
    WIRE_DTYPES,
    from_le_bytes,
    is_floating,
    numpy_dtype,
    to_le_bytes,
    wire_name,
)
from service.errors import FieldPath, InvalidInput, LimitExceeded

TensorForm = Literal["json", "base64"]

_ENCODED_KEYS = ("dtype", "shape", "data")
_INT64 = np.iinfo(np.int64)


@dataclass(frozen=True)
class TensorLimits:
    """Size limits that apply to every tensor field."""

    max_elements: int

    def __post_init__(self) -> None:
        if self.max_elements < 0:
            raise ValueError(f"max_elements must be >= 0, got {self.max_elements}")


@dataclass
class _ElementBudget:
    limit: int
    used: int = 0


_REQUEST_BUDGET: ContextVar[_ElementBudget | None] = ContextVar("request_elements", default=None)
_OUTPUT_BUDGET: ContextVar[_ElementBudget | None] = ContextVar("output_elements", default=None)


@contextlib.contextmanager
def request_elements(limit: int) -> Iterator[None]:
    """Within the block, the tensors decoded hold at most `limit` elements together.

    Each tensor is counted as its shape is checked (`check_elements`): an encoded tensor before
    its base64 is decoded. The budget follows the context, into `anyio.to_thread` workers too.
    """
    token = _REQUEST_BUDGET.set(_ElementBudget(limit))
    try:
        yield
    finally:
        _REQUEST_BUDGET.reset(token)


@contextlib.contextmanager
def output_elements(limit: int) -> Iterator[None]:
    """Within the block, the output tensors of the answer hold at most `limit` elements together
    (`count_output`): a small request can ask for large answers (the gradient of every loss of
    `/v1/evaluate`, an OIP output asked for many times)."""
    token = _OUTPUT_BUDGET.set(_ElementBudget(limit))
    try:
        yield
    finally:
        _OUTPUT_BUDGET.reset(token)


def count_output(count: int, path: FieldPath) -> None:
    """Count an output tensor of `count` elements against the answer's budget
    (`output_elements`); LimitExceeded naming `path`, the request field that asked for it."""
    budget = _OUTPUT_BUDGET.get()
    if budget is None:
        return
    budget.used += count
    if budget.used > budget.limit:
        raise LimitExceeded(
            f"{_dotted(path)}: with this output the answer holds {budget.used} elements, over "
            f"the limit of {budget.limit} output elements per request (max_output_elements)",
            field=path,
        )


@contextlib.contextmanager
def counted_already() -> Iterator[None]:
    """Tensors decoded within the block are not counted again (their shape was)."""
    token = _REQUEST_BUDGET.set(None)
    try:
        yield
    finally:
        _REQUEST_BUDGET.reset(token)


@dataclass(frozen=True)
class DecodedTensor:
    """A decoded tensor field and the form it came in (outputs default to the same form)."""

    array: NDArray[Any]
    form: TensorForm


def decode_tensor(
    value: object,
    *,
    field: str | FieldPath,
    limits: TensorLimits,
    allow_neg_inf: bool = False,
) -> DecodedTensor:
    """Decode the parsed JSON `value` of a tensor field into an array.

    `field` names the field in errors: a top-level name ("logits") or a path
    (("losses", 0, "weight")). NaN and +inf in floating tensors are rejected, and so is -inf
    unless `allow_neg_inf` (logits use -inf to mask classes).
    """
    path: FieldPath = (field,) if isinstance(field, str) else tuple(field)
    form: TensorForm
    if isinstance(value, dict):
        array, form = _decode_encoded(value, path, limits), "base64"
    elif isinstance(value, list) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        array, form = _decode_json(value, path, limits), "json"
    else:
        raise invalid(
            path,
            "expected a number, a nested array of numbers, or an encoded tensor object "
            f"{{dtype, shape, data}}, got {_describe(value)}",
        )
    check_finite(array, path, allow_neg_inf=allow_neg_inf)
    return DecodedTensor(array, form)


def encode_tensor(
    array: NDArray[Any] | np.generic, form: TensorForm
) -> list[Any] | float | int | dict[str, Any]:
    """`array` in the wire `form`: nested lists (a bare number for 0-d) or an encoded object.

    JSON output is `tolist()`: plain Python numbers (bool arrays give booleans), with NaN and
    infinities as Python floats. An encoded object's `data` is a `Base64Output` (`str()` of it
    is the string). A dtype without a wire name raises TypeError: that is a bug in the caller, not
    bad input.
    """
    array = np.asarray(array)
    if form == "json":
        values: list[Any] | float | int = json_array(array).tolist()
        return values
    if form == "base64":
        name, raw = to_le_bytes(array)
        # Encoded as the response is sent, a piece at a time (service.codecs.body_pieces).
        return {"dtype": name, "shape": list(array.shape), "data": Base64Output(raw)}
    raise ValueError(f"unknown tensor form {form!r}; expected 'json' or 'base64'")


def json_array(array: NDArray[Any] | np.generic) -> NDArray[Any]:
    """`array` in a dtype that JSON encoders take: orjson serialises it natively and fast
    (`OPT_SERIALIZE_NUMPY`), `.tolist()` gives Python numbers. bfloat16, which neither knows,
    is widened to float32 (exactly). A dtype without a wire name raises TypeError."""
    array = np.asarray(array)
    wire_name(array.dtype)  # the same dtypes as the base64 form: TypeError for others
    return array.astype(np.float32) if array.dtype == _BFLOAT16 else array


# --- JSON form ---------------------------------------------------------------------------------


def _decode_json(value: object, path: FieldPath, limits: TensorLimits) -> NDArray[Any]:
    shape = _leading_shape(value)
    if len(shape) > MAX_NDIM:
        raise invalid(path, f"nested arrays are more than {MAX_NDIM} levels deep")
    # NumPy converts bools, numeric strings and null (as NaN) without complaint, so look at the
    # leaf types first. map(type, ...) over chained rows runs in C, about as fast as the
    # conversion itself; the Python walk in `_json_problem` only runs once something is wrong.
    try:
        leaf_types = set(map(type, _leaves(value, len(shape))))
    except TypeError:  # a number where a nested array should be
        leaf_types = {list}
    if not leaf_types <= {int, float}:
        raise _json_error(value, shape, path)
    dtype = np.int64 if leaf_types == {int} else np.float64  # empty arrays are float64
    try:
        array = np.asarray(value, dtype=dtype)
    except (ValueError, OverflowError):  # ragged, or an integer out of int64/float64 range
        raise _json_error(value, shape, path) from None
    check_elements(array.shape, path, limits)
    return array


def _leading_shape(value: object) -> tuple[int, ...]:
    """The shape the nested lists claim along their first elements (stops past MAX_NDIM)."""
    shape: list[int] = []
    node = value
    while isinstance(node, list) and len(shape) <= MAX_NDIM:
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    return tuple(shape)


def _leaves(value: object, ndim: int) -> Iterable[object]:
    """The leaves of nested lists `ndim` deep, in row-major order, flattened in C."""
    if ndim == 0:
        return (value,)
    leaves: Iterable[Any] = cast("list[Any]", value)  # nested lists, since ndim > 0
    for _ in range(ndim - 1):
        leaves = chain.from_iterable(leaves)
    return leaves


def _json_error(value: object, shape: tuple[int, ...], path: FieldPath) -> InvalidInput:
    """Why NumPy could not take `value` as it is: the first problem in row-major order."""
    problem = _json_problem(value, shape, ())
    if problem is None:
        problem = _json_overflow(value, shape)
    return invalid(path, problem)


def _json_problem(node: object, shape: tuple[int, ...], index: tuple[int, ...]) -> str | None:
    """The first structural or leaf-type problem at or under `node`, or None."""
    depth = len(index)
    if depth == len(shape):
        if isinstance(node, list):
            return f"nested arrays are ragged: expected a number{_at(index)}, found an array"
        if type(node) not in (int, float):
            return f"contains {_describe(node)}{_at(index)}; only numbers are accepted"
        return None
    if not isinstance(node, list):
        return f"nested arrays are ragged: expected an array{_at(index)}, found {_describe(node)}"
    if len(node) != shape[depth]:
        return (
            f"nested arrays are ragged: the array{_at(index)} has length {len(node)}, "
            f"expected {shape[depth]} like the first array at that depth"
        )
    for i, child in enumerate(node):
        problem = _json_problem(child, shape, (*index, i))
        if problem is not None:
            return problem
    return None


def _json_overflow(value: object, shape: tuple[int, ...]) -> str:
    """Which integer did not fit, for nested lists whose structure and leaf types are valid."""
    leaves = list(_leaves(value, len(shape)))
    all_ints = all(type(leaf) is int for leaf in leaves)
    for flat, leaf in enumerate(leaves):
        if type(leaf) is not int:
            continue
        index = _unravel(flat, shape)
        if all_ints and not _INT64.min <= leaf <= _INT64.max:
            # The value is not echoed: it may have thousands of digits.
            return f"the integer{_at(index)} does not fit in int64"
        if not all_ints:
            try:
                float(leaf)
            except OverflowError:
                return f"the integer{_at(index)} is too large for float64"
    # Unreachable when NumPy and the walk above agree; still a 422, never a 500.
    return "could not be read as an array of numbers"


# --- encoded form ------------------------------------------------------------------------------


def _decode_encoded(value: dict[Any, Any], path: FieldPath, limits: TensorLimits) -> NDArray[Any]:
    expected_keys = ", ".join(_ENCODED_KEYS)
    for key in value:
        if key not in _ENCODED_KEYS:
            raise invalid(
                (*path, str(key)), f"unknown key; an encoded tensor has exactly {expected_keys}"
            )
    for key in _ENCODED_KEYS:
        if key not in value:
            raise invalid((*path, key), f"missing; an encoded tensor has exactly {expected_keys}")

    name = value["dtype"]
    if not isinstance(name, str) or name not in WIRE_DTYPES:
        raise invalid(
            (*path, "dtype"),
            f"expected one of {', '.join(WIRE_DTYPES)}, got {_describe(name, echo=True)}",
        )
    shape = parse_shape(value["shape"], (*path, "shape"))
    # Before decoding anything: the shape alone says how much memory the tensor would take.
    check_elements(shape, (*path, "shape"), limits)

    data_path = (*path, "data")
    data = value["data"]
    if not isinstance(data, str | Base64Text):  # Base64Text: still in the body (loads_json)
        raise invalid(data_path, f"expected a base64 string, got {_describe(data)}")
    try:
        # pybase64: the same strict decoding as the standard library's, with SIMD, ~10x faster.
        raw = b64decode(data)
    except ValueError as error:  # binascii.Error, or non-ASCII characters in a str
        raise invalid(data_path, f"is not valid standard base64 ({error})") from None
    return array_from_bytes(raw, name, shape, data_path)


def array_from_bytes(
    raw: bytes | memoryview | NDArray[np.uint8], name: str, shape: tuple[int, ...], path: FieldPath
) -> NDArray[Any]:
    """Little-endian, row-major bytes of wire dtype `name` as an array of `shape`.

    The caller has checked `shape` against the limits; the byte count must match it exactly.
    Finiteness is checked by the caller too (`check_finite`), once per tensor.
    """
    dtype = numpy_dtype(name)
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise invalid(
            path,
            f"holds {len(raw)} bytes, but dtype {name} and shape {list(shape)} need "
            f"{count * dtype.itemsize} ({count} elements x {dtype.itemsize} bytes)",
        )
    array = from_le_bytes(raw, name).reshape(shape)
    if name == "bool":
        _check_bool_bytes(raw, shape, path)
    return array


def parse_shape(value: object, path: FieldPath) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise invalid(path, f"expected an array of non-negative integers, got {_describe(value)}")
    if len(value) > MAX_NDIM:
        raise invalid(path, f"has {len(value)} dimensions; at most {MAX_NDIM} are supported")
    for axis, size in enumerate(value):
        if type(size) is not int or size < 0:
            raise invalid(
                path,
                f"dimension {axis} is {_describe(size, echo=True)}; "
                "dimensions must be non-negative integers",
            )
    return tuple(value)


def _check_bool_bytes(
    raw: bytes | memoryview | NDArray[np.uint8], shape: tuple[int, ...], path: FieldPath
) -> None:
    """bool tensors hold one byte per element, and that byte must be 0 or 1."""
    octets = np.frombuffer(raw, dtype=np.uint8)
    bad = octets > 1
    if bad.any():
        flat = int(np.argmax(bad))
        raise invalid(
            path,
            f"bool element{_at(_unravel(flat, shape))} is byte {int(octets[flat])}; "
            "bool bytes must be 0 or 1",
        )


# --- checks shared by both forms ---------------------------------------------------------------


def check_elements(shape: tuple[int, ...], path: FieldPath, limits: TensorLimits) -> None:
    """LimitExceeded when `shape` has more elements than `limits` allow, or than are left to
    the request (`request_elements`), which the tensor's elements are then counted against.

    A single dimension over the limit is refused even when another one is 0: such a shape
    holds nothing useful, and NumPy cannot build dimensions past its index range.
    """
    for axis, size in enumerate(shape):
        if size > limits.max_elements:
            raise LimitExceeded(
                f"{_dotted(path)}: dimension {axis} is over the limit of "
                f"{limits.max_elements} elements per tensor",
                field=path,
            )
    count = math.prod(shape)
    if count > limits.max_elements:
        raise LimitExceeded(
            f"{_dotted(path)}: shape {list(shape)} has {count} elements, over the limit of "
            f"{limits.max_elements} elements per tensor",
            field=path,
        )
    budget = _REQUEST_BUDGET.get()
    if budget is not None:
        budget.used += count
        if budget.used > budget.limit:
            raise LimitExceeded(
                f"{_dotted(path)}: with this tensor the request holds {budget.used} elements, "
                f"over the limit of {budget.limit} elements per request",
                field=path,
            )


def check_finite(array: NDArray[Any], path: FieldPath, *, allow_neg_inf: bool) -> None:
    """InvalidInput naming the first NaN, +inf or (unless allowed) -inf in a floating array."""
    if not is_floating(array.dtype):
        return
    # isfinite/isnan/isneginf raise no floating-point warnings, float16 and bfloat16 included;
    # the fast path is one pass, the locating passes only run on bad input.
    finite = np.isfinite(array)
    if finite.all():
        return
    bad = ~finite
    if allow_neg_inf:
        bad &= ~np.isneginf(array)
        if not bad.any():
            return
    index = _unravel(int(np.argmax(bad)), array.shape)
    element = array[index]
    kind = "NaN" if np.isnan(element) else ("+inf" if element > 0 else "-inf")
    rule = "finite or -inf (a masked class)" if allow_neg_inf else "finite"
    raise invalid(path, f"contains {kind}{_at(index)}; values must be {rule}")


# --- messages ----------------------------------------------------------------------------------


def invalid(path: FieldPath, reason: str) -> InvalidInput:
    return InvalidInput(f"{_dotted(path)}: {reason}", field=path)


def _dotted(path: FieldPath) -> str:
    return ".".join(str(part) for part in path)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _at(index: tuple[int, ...]) -> str:
    """' at index (i, j)', or nothing for the single element of a 0-d tensor."""
    return f" at index {index}" if index else ""


def _describe(value: object, *, echo: bool = False) -> str:
    """What a parsed JSON value is, for messages; `echo` shows numbers and short strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return repr(value) if echo and len(value) <= 40 else "a string"
    if isinstance(value, int | float):
        return repr(value) if echo else "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
