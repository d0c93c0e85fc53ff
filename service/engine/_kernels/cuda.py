"""Cross-entropy, focal and poly-1 with their gradients on CuPy arrays: one CUDA kernel.

The GPU counterpart of `cpu` (numba), with the same interface (`interface.SoftmaxKernels`) so
that the losses call either through `_engine_path.fused_kernels`. The kernel's source is
`softmax_rows.cu`, next to this module (package data, read with importlib.resources).

Its cost is memory traffic (each row is read twice and its gradient written once, a few float32
operations per byte), so it is written to keep many loads in flight per thread and every lane busy:

- a row belongs to a group of `lanes` threads (`launch_shape`): a whole block of up to
  `MAX_BLOCK` threads for a wide row, or 1 to 32 lanes of a warp for a narrow one, several rows to
  a block (a 10-class row to one thread, a 1000-class row to a warp): narrow rows are neither one
  tiny block each nor mostly idle lanes;
- each thread reads 16-byte vectors of its row (4 float32, 8 bfloat16 or float16, 2 float64),
  `UNROLL` of them issued before the first is used; the elements before the row's first 16-byte
  boundary and after its last whole vector (rows of any length or offset) are read one by one;
- pass 1 keeps, per thread, a running maximum `m` and the float64 sum `s` of `exp(x - m)` (the
  online softmax of Milakov & Gimelshein 2018). The maximum is compared once per vector, and `s`
  rescaled by `exp(m_old - m_new)` (float64) only when it grew, a few times per thread; a thread
  whose values are all -inf so far adds `exp(-inf - 0) = 0`, without a branch;
- reductions over the group (warp shuffles; for a block, then one value per warp through shared
  memory) give the row maximum `shift` and `sum_c exp(x_c - shift)` in float64, whose largest term
  is exactly 1;
- every thread then has the row's `log_sum = log1p(sum - 1)`, `lse`, the label term and the
  gradient factor (the CPU kernels' formulas, in the same order), and pass 2 writes
  `(factor * exp(x_c - shift) - spread_c - [c == y] mass) * grad_scale` in 16-byte stores, adding
  up the label-smoothing dot product `sum_c w_c (x_c - shift)` (a zero weight adds 0, even at
  -inf); a last reduction of that, and the group's first lane writes the row's loss and `lse`.

float16 and bfloat16 rows are read as they are and widened in registers (exactly); like float32
rows they compute in float32 (`expf`, no fast-math) with float64 row sums, and get a float32
gradient. float64 rows compute in float64. Ignored rows get a zero gradient and loss 0 (their
`lse` is still computed when there is a z-loss: the caller checks its overflow for every row).
An all -inf row gets `shift = 0` and `log_sum = -inf`: its loss is not finite, which
`finish_rows` rejects, as on the other paths.

CuPy compiles the source on the first call per dtype (NVRTC, then CuPy's on-disk kernel cache)
and is imported only then: `import service` never imports CuPy.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any, Final

import numpy as np

from service.engine._kernels.interface import (
    COMPUTE_DTYPES,
    CROSS_ENTROPY,
    FOCAL,
    NATIVE_INPUT_DTYPES,
    POLY1,
)
from service.engine._namespace import Array, array_namespace

__all__ = [
    "COMPUTE_DTYPES",
    "CROSS_ENTROPY",
    "FOCAL",
    "KERNEL_NAMES",
    "NATIVE_INPUT_DTYPES",
    "POLY1",
    "class_index_rows",
    "launch_shape",
    "softmax_rows",
    "source",
    "warm_up",
]

KERNEL_NAMES: Final = {  # by the dtype of the logits
    "float16": "softmax_rows_f16",
    "bfloat16": "softmax_rows_bf16",
    "float32": "softmax_rows_f32",
    "float64": "softmax_rows_f64",
}
MAX_BLOCK: Final = 512  # threads of a block that takes one row: the source's MAX_BLOCK
ROWS_BLOCK: Final = 256  # threads of a block that takes several rows of up to 32 lanes each
ELEMENTS_PER_THREAD: Final = 32  # what `launch_shape` aims at: two rounds of 4 float32 vectors


@functools.cache
def source() -> str:
    """The CUDA source of the kernels. Every block-wide step in it is reached by all threads of
    the block (the branches around them depend on the row or on kernel arguments only):
    `block_reduce` needs it, and so do the tests that run it on the CPU with threads for lanes."""
    return resources.files(__package__).joinpath("softmax_rows.cu").read_text(encoding="utf-8")


@functools.cache
def _kernel(dtype_name: str) -> Any:
    """The compiled kernel for rows of `dtype_name` (CuPy compiles on first launch, once)."""
    import cupy  # only here: a CuPy array reached this module, so CuPy is already imported

    return cupy.RawKernel(source(), KERNEL_NAMES[dtype_name], options=("--std=c++14",))


def launch_shape(n_rows: int, n_classes: int) -> tuple[int, int, int]:
    """(blocks, threads per block, lanes per row) for rows of `n_classes` (`n_rows` > 0).

    About `ELEMENTS_PER_THREAD` classes per lane, a power of two from 1 to `MAX_BLOCK` lanes.
    Up to 32 lanes, a row is part of a warp and a block of up to `ROWS_BLOCK` threads takes
    several rows; above, a block takes one row.
    """
    wanted = -(-n_classes // ELEMENTS_PER_THREAD)
    lanes = min(MAX_BLOCK, 1 << (wanted - 1).bit_length()) if wanted > 1 else 1
    if lanes > 32:
        return n_rows, lanes, lanes
    threads = min(ROWS_BLOCK, max(32, 1 << (n_rows * lanes - 1).bit_length()))
    rows_per_block = threads // lanes
    return -(-n_rows // rows_per_block), threads, lanes


def input_dtype_name(x: Array, bfloat16_bits: bool = False) -> str:
    """The dtype of the logits `x` as the kernel reads them: `bfloat16` for a uint16 array
    flagged `bfloat16_bits` (CuPy has no bfloat16 dtype) or an ml_dtypes bfloat16 array (NumPy),
    else `x.dtype`'s name. ValueError for a dtype not in `NATIVE_INPUT_DTYPES`."""
    name = str(np.dtype(x.dtype).name)
    if bfloat16_bits:
        if name != "uint16":
            raise ValueError(f"bfloat16_bits: expected a uint16 array of bits, got {name}")
        name = "bfloat16"
    if name not in NATIVE_INPUT_DTYPES:
        raise ValueError(f"the CUDA kernel reads {sorted(NATIVE_INPUT_DTYPES)} rows, not {name}")
    return name


def softmax_rows(
    x: Array,
    y: Array,
    valid: Array,
    *,
    kind: int,
    at_label: Array | None = None,
    total: Array | None = None,
    spread: Array | None = None,
    z_loss: float = 0.0,
    param: float = 0.0,
    alpha: Array | None = None,
    grad_scale: float = 1.0,
    bfloat16_bits: bool = False,
) -> tuple[Array, Array, Array]:
    """Run the kernel on rows `x` [M, C]: (per_sample [M] float64, lse [M] float64, grad [M, C]).

    As `cpu.softmax_rows`: where `valid` is False, `per_sample` is 0, `lse` 0 unless
    `z_loss` > 0, and the gradient row is 0. The gradient is multiplied by `grad_scale` (the
    1 / divisor of `mean`) as it is written; `per_sample` and `lse` are not. `x` may be of any
    dtype in `NATIVE_INPUT_DTYPES` (bfloat16: see `input_dtype_name`); 16-bit rows compute in
    float32 and get a float32 gradient, and the option vectors are in the compute dtype.
    Everything stays on the device.
    """
    xp = array_namespace(x)
    name = input_dtype_name(x, bfloat16_bits)
    dtype = np.dtype(COMPUTE_DTYPES[name])
    kernel = _kernel(name)
    n_rows, n_classes = x.shape
    if n_classes >= 2**31:  # the kernel's column indices are 32-bit
        raise ValueError(f"the CUDA kernel takes rows of under 2^31 classes, not {n_classes}")
    empty = xp.empty(0, dtype=dtype)  # an absent option: a pointer the kernel never reads

    def vector(array: Array | None) -> Array:
        return empty if array is None else xp.ascontiguousarray(array, dtype=dtype)

    per_sample = xp.empty(n_rows, dtype=np.float64)
    lse = xp.empty(n_rows, dtype=np.float64)
    grad = xp.empty((n_rows, n_classes), dtype=dtype)
    if n_rows == 0:
        return per_sample, lse, grad
    blocks, threads, lanes = launch_shape(n_rows, n_classes)
    rows = x.view(np.uint16) if name in ("float16", "bfloat16") else x  # the kernel widens bits
    arguments = (
        xp.ascontiguousarray(rows),
        xp.ascontiguousarray(y, dtype=np.int64),
        xp.ascontiguousarray(valid, dtype=np.bool_),
        np.int64(n_rows),
        np.int32(n_classes),
        np.int32(lanes),
        np.int32(kind),
        vector(at_label),
        vector(total),
        vector(spread),
        np.int32(spread is not None),
        np.float64(z_loss),
        np.float64(param),
        vector(alpha),
        np.int32(alpha is not None),
        np.float64(grad_scale),
        per_sample,
        lse,
        grad,
    )
    kernel((blocks,), (threads,), arguments)
    return per_sample, lse, grad


def class_index_rows(
    x: Array,
    labels: Array,
    ignore_index: int,
    *,
    mean: bool,
    kind: int = CROSS_ENTROPY,
    param: float = 0.0,
) -> tuple[Array, Array, int, float, float] | None:
    """None: on the GPU every cross-entropy, focal and poly-1 loss takes the general path (a
    launch is one call already, and the checks around it are a few reductions on the device)."""
    return None


def warm_up() -> None:
    """Compile (or load from CuPy's cache) the kernel for every dtype in `NATIVE_INPUT_DTYPES`."""
    import cupy

    for name in sorted(NATIVE_INPUT_DTYPES):
        bits = name == "bfloat16"  # CuPy has no bfloat16: its bits, flagged
        x = cupy.zeros((2, 3), dtype=np.uint16 if bits else name)
        labels = cupy.zeros(2, dtype=np.int64)
        valid = cupy.ones(2, dtype=np.bool_)
        ones = cupy.ones(2, dtype=COMPUTE_DTYPES[name])
        softmax_rows(
            x, labels, valid, kind=CROSS_ENTROPY, at_label=ones, total=ones, bfloat16_bits=bits
        )
