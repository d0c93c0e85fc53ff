"""Helpers the test modules share: tensors in the wire's encoded form, and back."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def encoded(array: np.ndarray) -> dict[str, Any]:
    """`array` as an encoded tensor field: its dtype and shape kept (JSON lists lose both)."""
    little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
    data = base64.b64encode(little.tobytes()).decode()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def decoded(tensor: dict[str, Any]) -> np.ndarray:
    """An encoded tensor of an answer as an array."""
    raw = base64.b64decode(tensor["data"])
    dtype = np.dtype(tensor["dtype"]).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).reshape(tensor["shape"])
