"""The wire dtypes: their names, the NumPy dtypes they decode to, and their byte order.

Encoded tensors carry raw little-endian, row-major bytes (docs/conventions.md, "Tensors on the
wire"). Each wire dtype therefore has two NumPy dtypes: the explicit little-endian *storage* dtype
the bytes are read and written as, and the native dtype the engine computes with. On a little-endian
machine the two are the same and converting between them costs nothing; on a big-endian one NumPy
swaps the bytes in that one conversion, so no code here branches on the machine.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

# NumPy 2 arrays have at most 64 dimensions (NPY_MAXDIMS); deeper shapes cannot be built.
MAX_NDIM = 64

_BFLOAT16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)

# name -> (native dtype, little-endian storage dtype of the same itemsize), in the order of
# docs/conventions.md.
# bfloat16 is stored as '<u2' and viewed as bfloat16 afterwards: ml_dtypes' bfloat16 has no
# byte-order variants (`newbyteorder('<')` turns it into an untyped 'V2').
_TABLE: dict[str, tuple[np.dtype[Any], np.dtype[Any]]] = {
    "float16": (np.dtype(np.float16), np.dtype("<f2")),
    "bfloat16": (_BFLOAT16, np.dtype("<u2")),
    "float32": (np.dtype(np.float32), np.dtype("<f4")),
    "float64": (np.dtype(np.float64), np.dtype("<f8")),
    "int8": (np.dtype(np.int8), np.dtype("i1")),
    "int16": (np.dtype(np.int16), np.dtype("<i2")),
    "int32": (np.dtype(np.int32), np.dtype("<i4")),
    "int64": (np.dtype(np.int64), np.dtype("<i8")),
    "uint8": (np.dtype(np.uint8), np.dtype("u1")),
    # Read as bytes first so that `decode_tensor` can check that each one is 0 or 1.
    "bool": (np.dtype(np.bool_), np.dtype("u1")),
}

WIRE_DTYPES: tuple[str, ...] = tuple(_TABLE)


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The native NumPy dtype of the wire dtype `name` (one of `WIRE_DTYPES`)."""
    return _TABLE[name][0]


def wire_name(dtype: np.dtype[Any]) -> str:
    """The wire name of `dtype`, whatever its byte order; TypeError if it has none."""
    native = dtype.newbyteorder("=")
    for name, (candidate, _) in _TABLE.items():
        # Compare with ==, not by hash: equivalent dtypes ('l' and 'q' on LP64) are equal.
        if native == candidate:
            return name
    raise TypeError(f"dtype {dtype} has no wire name; the wire dtypes are {', '.join(WIRE_DTYPES)}")


def is_floating(dtype: np.dtype[Any]) -> bool:
    """Whether `dtype` can hold NaN and infinities (bfloat16 is not of NumPy kind 'f')."""
    return dtype.kind == "f" or dtype == _BFLOAT16


def from_le_bytes(raw: bytes | memoryview | NDArray[np.uint8], name: str) -> NDArray[Any]:
    """The 1-d native array that little-endian bytes `raw` of wire dtype `name` hold.

    The result is a read-only view of `raw` on little-endian machines (a copy elsewhere); the
    caller checks that `len(raw)` is a multiple of the itemsize.
    """
    native, storage = _TABLE[name]
    stored = np.frombuffer(raw, dtype=storage)
    # A no-op on little-endian machines, a byte swap on big-endian ones.
    swapped = stored.astype(storage.newbyteorder("="), copy=False)
    return swapped.view(native)


def to_le_bytes(array: NDArray[Any]) -> tuple[str, memoryview]:
    """The wire name of `array`'s dtype and its elements as little-endian, row-major bytes.

    The bytes are a view of `array` itself when it is already little-endian and C-contiguous
    (the usual case): a 262 MB gradient is not copied before it is base64-encoded.
    """
    name = wire_name(array.dtype)
    native, storage = _TABLE[name]
    # Native byte order first (swaps a '>f4' array), then the same bits as the storage dtype.
    bits = array.astype(native, copy=False).view(storage.newbyteorder("="))
    little = np.ascontiguousarray(bits.astype(storage, copy=False))
    return name, little.reshape(-1).view(np.uint8).data
