"""Tensors of the Open Inference Protocol v2 (KServe, Triton), JSON and binary.

An input is `{"name", "shape", "datatype", "data"}` with `data` the row-major elements (flat or
nested), or, with Triton's binary tensor extension, `"parameters": {"binary_data_size": n}` and
its n little-endian bytes after the JSON header of the body. The checks are the ones every
tensor field gets (`service.codecs._tensors`): limits from the shape before any data is read,
exact byte counts, finiteness.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.codecs._checks import (
    TensorLimits,
    check_elements,
    check_finite,
    counted_already,
    invalid,
)
from service.codecs._dtypes import numpy_dtype, wire_name
from service.codecs._json_body import JsonBody
from service.codecs._tensors import array_from_bytes, decode_tensor, parse_shape
from service.errors import FieldPath, InvalidInput, shown

# OIP datatype -> wire dtype (as docs/conventions.md names them); BYTES (strings) has no place in a
# loss.
OIP_DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "BF16": "bfloat16",
    "FP32": "float32",
    "FP64": "float64",
}
OIP_OF_WIRE = {wire: oip for oip, wire in OIP_DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"


def split_body(
    body: JsonBody, header_length: str | None
) -> tuple[dict[str, Any], bytes | memoryview]:
    """The JSON header of an infer request and the binary tensor data that follows it.

    `body` is bytes, or an mmap for a large body (`service.api.request_body`)."""
    json_part: bytes | memoryview
    binary: bytes | memoryview
    if header_length is None:
        json_part, binary = memoryview(body), b""
    else:
        # isdigit() alone takes "²" and other Unicode digits (a latin-1 header byte) that
        # int() refuses: only ASCII digits are a byte count.
        digits = header_length.isascii() and header_length.isdigit()
        if not digits or int(header_length) > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length: {shown(header_length)} is not a byte count "
                f"within the body's {len(body)} bytes",
                field="Inference-Header-Content-Length",
            )
        # A view, not a copy: the tensors are most of the body.
        view = memoryview(body)
        json_part, binary = view[: int(header_length)], view[int(header_length) :]
    try:
        header = orjson.loads(json_part)
    except orjson.JSONDecodeError as error:  # also bad UTF-8 and nesting past orjson's limit
        raise InvalidInput(f"the inference request header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return header, binary


def decode_input(
    shape: object,
    datatype: object,
    data: object,
    binary: bytes | memoryview | None,
    *,
    field: FieldPath,
    limits: TensorLimits,
    allow_neg_inf: bool = False,
) -> NDArray[Any]:
    """One OIP input as an array of its declared shape and datatype."""
    if not isinstance(datatype, str) or datatype not in OIP_DATATYPES:
        raise invalid(
            (*field, "datatype"),
            f"expected one of {', '.join(OIP_DATATYPES)}, got {shown(datatype)}",
        )
    wire = OIP_DATATYPES[datatype]
    dims = parse_shape(shape, (*field, "shape"))
    check_elements(dims, (*field, "shape"), limits)
    if binary is not None:
        array = array_from_bytes(binary, wire, dims, (*field, "binary_data"))
    else:
        if data is None:
            raise invalid((*field, "data"), "missing: give data or parameters.binary_data_size")
        with counted_already():  # from `shape`, above
            flat = decode_tensor(data, field=(*field, "data"), limits=limits, allow_neg_inf=True)
        values = flat.array.reshape(-1)
        if values.size != int(np.prod(dims)):
            raise invalid(
                (*field, "data"),
                f"holds {values.size} elements, but shape {list(dims)} needs {int(np.prod(dims))}",
            )
        array = _cast_exactly(values, wire, (*field, "data")).reshape(dims)
    check_finite(array, field, allow_neg_inf=allow_neg_inf)
    return array


def _cast_exactly(values: NDArray[Any], wire: str, path: FieldPath) -> NDArray[Any]:
    """JSON numbers into the declared datatype; integers must survive the cast unchanged."""
    dtype = numpy_dtype(wire)
    if dtype.kind in "iub":
        if values.dtype.kind == "f" and not np.all(values == np.floor(values)):
            raise invalid(path, f"datatype {OIP_OF_WIRE[wire]} needs whole numbers")
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if (
            info is not None
            and values.size
            and (values.min() < info.min or values.max() > info.max)
        ):
            raise invalid(path, f"values do not fit datatype {OIP_OF_WIRE[wire]}")
    with np.errstate(over="ignore"):  # an overflow to inf is reported by check_finite
        return values.astype(dtype)


def oip_datatype(array: NDArray[Any]) -> str:
    return OIP_OF_WIRE[wire_name(array.dtype)]
