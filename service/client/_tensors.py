"""NumPy arrays <-> the service's wire forms: encoded tensor objects, JSON lists, OIP binary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.client._exceptions import ResponseError
from service.client._transfer import Body
from service.client._types import Array, ArrayLike, Encoding
from service.codecs._base64 import Base64Output, Base64Text, b64decode
from service.codecs._dtypes import WIRE_DTYPES, from_le_bytes, numpy_dtype, to_le_bytes
from service.codecs._oip import OIP_DATATYPES, OIP_OF_WIRE

INFER_HEADER_LENGTH = "Inference-Header-Content-Length"


def is_array(value: object) -> bool:
    """Whether `value` is sent as a tensor: an ndarray or anything with `__array__` (a CPU torch
    tensor, a JAX array), but not a NumPy scalar, which is an option's value."""
    return isinstance(value, np.ndarray) or (
        hasattr(value, "__array__") and not isinstance(value, np.generic)
    )


def as_array(value: ArrayLike, name: str) -> Array:
    """`value` as a NumPy array with a wire dtype; lists are read as NumPy reads them."""
    array = np.asarray(value)
    if array.dtype.name not in WIRE_DTYPES:
        raise TypeError(
            f"{name}: dtype {array.dtype} cannot be sent; cast to one of {', '.join(WIRE_DTYPES)}"
        )
    return array


def encode(value: ArrayLike, name: str, encoding: Encoding) -> Any:
    """A tensor field's value: an encoded tensor object, or nested JSON lists."""
    array = as_array(value, name)
    if encoding == "json":
        if array.dtype.name == "bfloat16":
            array = array.astype(np.float32)
        return array.tolist()
    # Encoded as the request body is sent, a piece at a time (`service.codecs.body_pieces`).
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": Base64Output(to_le_bytes(array)[1]),
    }


def decode(value: Any, name: str) -> Array | None:
    """An output tensor as sent (an encoded object, nested lists, a number, or null)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        try:
            wire = str(value["dtype"])
            data = value["data"]
            if not isinstance(data, str | Base64Text):
                raise TypeError(f"data is a {type(data).__name__}, not base64 text")
            shape = tuple(int(n) for n in value["shape"])
            return from_le_bytes(b64decode(data), wire).reshape(shape)
        except (KeyError, TypeError, ValueError) as error:
            raise ResponseError(f"{name}: not an encoded tensor ({error})") from None
    return np.asarray(value, dtype=np.float64)


def oip_input(name: str, value: ArrayLike) -> tuple[dict[str, Any], memoryview]:
    """An OIP input entry for the binary extension, and its bytes."""
    array = as_array(value, name)
    _, raw = to_le_bytes(array)
    entry = {
        "name": name,
        "shape": list(array.shape),
        "datatype": OIP_OF_WIRE[array.dtype.name],
        "parameters": {"binary_data_size": len(raw)},
    }
    return entry, raw


def oip_body(
    arrays: Mapping[str, ArrayLike], header: Mapping[str, Any]
) -> tuple[Body, dict[str, str]]:
    """An Open Inference Protocol body with Triton's binary extension, and its header: the JSON
    (`header` with an input entry per array), then the arrays' bytes in order."""
    inputs, chunks = [], []
    for name, value in arrays.items():
        entry, raw = oip_input(name, value)
        inputs.append(entry)
        chunks.append(raw)
    json_part = json.dumps({"inputs": inputs, **header}, separators=(",", ":")).encode()
    body = Body([json_part, *chunks], "application/octet-stream")
    return body, {INFER_HEADER_LENGTH: str(len(json_part))}


def oip_output(entry: Mapping[str, Any], binary: memoryview, offset: int) -> tuple[Array, int]:
    """An OIP output as an array, from its binary bytes at `offset` or its JSON `data`."""
    try:
        shape = tuple(int(n) for n in entry["shape"])
        wire = OIP_DATATYPES[str(entry["datatype"])]
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = binary[offset : offset + int(size)]
            if len(chunk) != int(size):
                raise ValueError(f"{size} bytes announced, {len(chunk)} left")
            return from_le_bytes(chunk, wire).reshape(shape), offset + int(size)
        data = [np.nan if v is None else v for v in entry.get("data", [])]
        return np.asarray(data, dtype=numpy_dtype(wire)).reshape(shape), offset
    except (KeyError, TypeError, ValueError) as error:
        raise ResponseError(f"an output of the inference answer is malformed ({error})") from None
