"""Which array library a computation runs on.

The engine is written once against the NumPy API; CuPy implements the same API on the GPU. The
namespace is resolved once at each public function (as scikit-learn's `get_namespace` does) and
passed to private helpers as `xp`. CuPy is never imported here: an array can only be a CuPy array
if the caller already imported CuPy, so looking in `sys.modules` is enough and keeps
`import service` free of CUDA initialisation.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # a numpy.ndarray or a cupy.ndarray: the engine treats them alike


def array_namespace(*arrays: object) -> ModuleType:
    """Return `cupy` if any argument is a CuPy array, else `numpy` (None arguments are skipped)."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and any(isinstance(a, cupy.ndarray) for a in arrays):
        return cupy
    return np


@contextlib.contextmanager
def errstate(xp: ModuleType, **kwargs: str) -> Iterator[None]:
    """`numpy.errstate` for NumPy; CuPy never warns about floating-point events."""
    if xp is np:
        with np.errstate(**kwargs):  # type: ignore[arg-type]
            yield
    else:
        yield
