"""Tensor fields on the wire <-> NumPy arrays, with the element limit and the finiteness rules.

A tensor field arrives as whatever the JSON parser produced for it, in one of two forms
(docs/conventions.md, "Tensors on the wire"):

- ``"json"``: a number or nested arrays of numbers, read as int64 when every number is an
  integer and as float64 otherwise;
- ``"base64"``: an object ``{"dtype", "shape", "data"}`` whose data is base64 of raw
  little-endian, row-major bytes.

This module tells the forms apart, reads the encoded form and writes both; the JSON form is read
in `_json_form`. Both end in the same checks (`_checks`: `check_elements`, `check_finite`), whose
errors are an `InvalidInput` (422) or a `LimitExceeded` (413) naming the field. Within
`request_elements(limit)`, every tensor decoded also counts against one budget for the whole
request.

Decoded arrays may be read-only views of the decoded bytes: the engine never writes into its
inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.codecs._base64 import Base64Output, Base64Text, b64decode
from service.codecs._checks import (
    TensorLimits,
    at_index,
    check_elements,
    check_finite,
    describe,
    invalid,
    unravel,
)
from service.codecs._dtypes import (
    _BFLOAT16,
    MAX_NDIM,
    WIRE_DTYPES,
    from_le_bytes,
    numpy_dtype,
    to_le_bytes,
    wire_name,
)
from service.codecs._json_form import decode_json
from service.errors import FieldPath

TensorForm = Literal["json", "base64"]

_ENCODED_KEYS = ("dtype", "shape", "data")


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
        array, form = decode_json(value, path, limits), "json"
    else:
        raise invalid(
            path,
            "expected a number, a nested array of numbers, or an encoded tensor object "
            f"{{dtype, shape, data}}, got {describe(value)}",
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
            f"expected one of {', '.join(WIRE_DTYPES)}, got {describe(name, echo=True)}",
        )
    shape = parse_shape(value["shape"], (*path, "shape"))
    # Before decoding anything: the shape alone says how much memory the tensor would take.
    check_elements(shape, (*path, "shape"), limits)

    data_path = (*path, "data")
    data = value["data"]
    if not isinstance(data, str | Base64Text):  # Base64Text: still in the body (loads_json)
        raise invalid(data_path, f"expected a base64 string, got {describe(data)}")
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
        raise invalid(path, f"expected an array of non-negative integers, got {describe(value)}")
    if len(value) > MAX_NDIM:
        raise invalid(path, f"has {len(value)} dimensions; at most {MAX_NDIM} are supported")
    for axis, size in enumerate(value):
        if type(size) is not int or size < 0:
            raise invalid(
                path,
                f"dimension {axis} is {describe(size, echo=True)}; "
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
            f"bool element{at_index(unravel(flat, shape))} is byte {int(octets[flat])}; "
            "bool bytes must be 0 or 1",
        )
