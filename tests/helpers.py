"""Helpers the test modules share: tensors in the wire's encoded form and back, and a loss of the
catalogue replaced by another function for one test."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16: np.dtype("bfloat16") finds it)
import numpy as np
import pytest
from numpy.typing import NDArray

from service.core.registry import BY_NAME


def encoded(array: NDArray[Any]) -> dict[str, Any]:
    """`array` as an encoded tensor field, built without the service's codec: its dtype (bfloat16
    included) and shape kept, the data little-endian base64 (JSON lists lose both)."""
    little = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
    data = base64.b64encode(little.tobytes()).decode()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def decoded(tensor: dict[str, Any]) -> NDArray[Any]:
    """An encoded tensor of an answer as an array."""
    raw = base64.b64decode(tensor["data"])
    dtype = np.dtype(tensor["dtype"]).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).reshape(tensor["shape"])


def replace_engine_function(
    monkeypatch: pytest.MonkeyPatch, name: str, function: Callable[..., Any]
) -> None:
    """The loss `name` of the catalogue computed by `function` until the test ends."""
    monkeypatch.setitem(BY_NAME, name, dataclasses.replace(BY_NAME[name], function=function))
