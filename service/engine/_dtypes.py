"""The dtype a loss computes in.

16- and 32-bit floats compute in float32 (exp and log in float16 lose too much, and bfloat16 has no
native arithmetic on the CPU); float64 stays float64. Integer logits only arrive from JSON numbers,
which are float64 by contract. `compute_dtype` overrides the choice. Sums over samples are always
accumulated in float64 by the reduction, whatever the compute dtype.

The fused kernels read float16 and bfloat16 logits as they are and widen each element as they
read it (`_kernels`): the whole array is widened with `as_compute` only for the reference code
(`_rows.logit_rows`).
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from service.engine._namespace import Array

ComputeDtype = Literal["float32", "float64"]


def compute_dtype_for(dtype: np.dtype, requested: ComputeDtype | None = None) -> np.dtype:
    if requested is not None:
        return np.dtype(requested)
    if dtype == np.float64 or dtype.kind in "iub":  # integers and bools: JSON numbers
        return np.dtype(np.float64)
    return np.dtype(np.float32)  # float16, float32 and bfloat16 (an ml_dtypes dtype of kind "V")


@functools.cache
def dtype_name(dtype: np.dtype) -> str:
    """`dtype.name`, remembered: NumPy builds it in Python at every access, which costs as much
    as the whole kernel of a small loss."""
    return dtype.name


def read_as_is(dtype: np.dtype, requested: ComputeDtype | None, native: frozenset[str]) -> bool:
    """Whether a kernel that reads the dtypes `native` as they are takes an array of `dtype`
    without a cast: its dtype is native and the compute dtype asked for is its default one."""
    return dtype_name(dtype) in native and (
        requested is None or compute_dtype_for(dtype, requested) == compute_dtype_for(dtype)
    )


def as_compute(array: Array, dtype: np.dtype) -> Array:
    """`array` in `dtype`, copied only when the dtype changes (callers never write into it)."""
    return array if array.dtype == dtype else array.astype(dtype)


def to_compute_dtype(array: Array, requested: ComputeDtype | None = None) -> Array:
    """`array` cast once to the dtype a loss on it computes in (shared by several losses)."""
    return as_compute(array, compute_dtype_for(array.dtype, requested))
