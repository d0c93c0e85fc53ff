"""The CPU kernels' Python side: the `SoftmaxKernels` interface on NumPy arrays (numba).

`softmax_rows` (cross-entropy, focal, poly-1: `softmax`) and `binary_rows` (binary
cross-entropy, the sigmoid focal loss: `binary`) prepare the arrays the kernels take (contiguous,
read-only, 16-bit rows as their bits), pick the serial or the parallel form of a kernel by the
size of the call, and hand out gradient buffers from a pool (`GRADIENTS`).

Everything is compiled once per process for each native dtype of rows, or loaded from numba's
on-disk cache (`cache=True`, see `numerics.compiled`): seconds to compile, under one to load;
`warm_up()` does it ahead of the first request. This module imports numba: reach it only
through `_engine_path`.

One module of about 480 lines, on purpose: every entry point here shares the preparation of the
arrays (`_kernel_rows`, `_frozen`), the pool and the per-thread scratch; the compiled kernels
live in their own modules.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import numba
import numpy as np

from service.buffers import ArrayPool
from service.engine._dtypes import dtype_name
from service.engine._kernels.binary import (
    BINARY_CHUNK,
    LABEL_OUTSIDE,
    NOT_FINITE,
    binary_rows_parallel,
    binary_rows_serial,
    sigmoid_focal_rows_parallel,
    sigmoid_focal_rows_serial,
)
from service.engine._kernels.class_index_rows import (
    class_index_total,
    count_and_narrow_class_indices,
    count_class_indices,
    mask_ignored,
)
from service.engine._kernels.few_classes import (
    BLOCK_EXTRA_ROWS,
    BLOCK_ROWS,
    FEW_CLASSES,
    PAIRED_CLASSES,
    WIDE_ROWS,
    few_class_kernel,
)
from service.engine._kernels.interface import (
    BINARY_CROSS_ENTROPY,
    COMPUTE_DTYPES,
    CROSS_ENTROPY,
    FOCAL,
    NATIVE_INPUT_DTYPES,
    POLY1,
    SIGMOID_FOCAL,
)
from service.engine._kernels.numerics import HALF_BITS
from service.engine._kernels.softmax import softmax_rows_parallel, softmax_rows_serial
from service.engine._kernels.two_classes import two_class_rows
from service.engine._rows import kept_ones

__all__ = [
    "BINARY_CHUNK",
    "BINARY_CROSS_ENTROPY",
    "COMPUTE_DTYPES",
    "CROSS_ENTROPY",
    "FEW_CLASS_PARALLEL_MIN_ELEMENTS",
    "FOCAL",
    "GRADIENTS",
    "LABEL_OUTSIDE",
    "NATIVE_INPUT_DTYPES",
    "NOT_FINITE",
    "PARALLEL_MIN_ELEMENTS",
    "POLY1",
    "SIGMOID_FOCAL",
    "binary_rows",
    "class_index_rows",
    "softmax_rows",
    "warm_up",
]

# Numba's default threading layer ("workqueue" where neither TBB nor OpenMP is installed) must not
# be entered from two threads at once; the service runs requests on a thread pool. Both cores
# work on one parallel call anyway, so those take turns; serial calls need no turn.
_LAUNCH = threading.Lock()

# Calls on fewer elements run serially, on the caller's thread. A parallel call first wakes
# numba's worker threads, which costs milliseconds when the cores are busy (and tens of
# microseconds when idle), more than a small call's whole work. Measured (float32
# cross-entropy, 2 cores): under load serial is faster up to about 2^20 elements; on an idle
# machine parallel was faster from 2^17 up (1.3 -> 0.9 ms for 32 rows of 32000 classes, 3.0 ->
# 1.1 ms for 16384 rows of 32). 2^19 keeps the calls that a wake-up would dominate serial.
PARALLEL_MIN_ELEMENTS: Final = 1 << 19
# Rows of few classes split into spans on threads from this size (`_few_class_rows`). Measured in
# `bench.engine`, 2 cores, float32 rows of 10 classes: 262144 rows (2^21.3 elements) 10.2 -> 6.7
# ms, 131072 rows 4.8 -> 5.3 ms and 65536 rows 2.6 -> 2.9 ms: the other thread's start, in
# milliseconds when the core has slept through a long call, is more than half the work.
FEW_CLASS_PARALLEL_MIN_ELEMENTS: Final = 1 << 21


_COMPUTE_DTYPES: Final = {name: np.dtype(compute) for name, compute in COMPUTE_DTYPES.items()}


def _in_parallel(
    n_elements: int, parallel: bool | None, min_elements: int = PARALLEL_MIN_ELEMENTS
) -> bool:
    return n_elements >= min_elements if parallel is None else parallel


def _frozen(array: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles separately for writable and read-only arrays, and the
    logits of a request are often read-only (`np.frombuffer`). One type, one compile."""
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


@functools.cache
def _absent(dtype: np.dtype) -> np.ndarray:
    """An absent option vector: empty, read-only like the others (one kernel type)."""
    return _frozen(np.empty(0, dtype=dtype))


def _kernel_rows(x: np.ndarray) -> tuple[np.ndarray, np.dtype]:
    """Rows as the kernels take them (contiguous, read-only, 16-bit ones as their bits) and the
    dtype they compute in. KeyError for a dtype not in `NATIVE_INPUT_DTYPES`."""
    name = dtype_name(x.dtype)
    dtype = _COMPUTE_DTYPES[name]
    x = np.ascontiguousarray(x)
    if name in HALF_BITS:
        x = x.view(HALF_BITS[name])
    return _frozen(x), dtype


def softmax_rows(
    x: np.ndarray,
    y: np.ndarray,
    valid: np.ndarray,
    *,
    kind: int,
    at_label: np.ndarray | None = None,
    total: np.ndarray | None = None,
    spread: np.ndarray | None = None,
    z_loss: float = 0.0,
    param: float = 0.0,
    alpha: np.ndarray | None = None,
    grad_scale: float = 1.0,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the kernel on rows `x` [M, C]: (per_sample [M] float64, lse [M] float64, grad [M, C]),
    the gradient multiplied by `grad_scale` (a `mean` reduction's 1 / divisor: no second pass).
    `x` may be of any dtype in `NATIVE_INPUT_DTYPES`; the gradient and the option vectors are in
    its compute dtype (`COMPUTE_DTYPES`: float32 for 16-bit rows).

    Where `valid` is False: `per_sample` is 0, `lse` 0 unless `z_loss` > 0, `grad` unspecified.
    `parallel`: over numba's threads or not (None: by size, `PARALLEL_MIN_ELEMENTS`); the
    numbers are the same either way. Rows of up to `FEW_CLASSES` classes always take the
    few-class kernel (vectorised across rows; compiled on first use per class count), in
    parallel (from `FEW_CLASS_PARALLEL_MIN_ELEMENTS`) as spans of whole blocks on as many
    threads as numba has.
    """
    x, dtype = _kernel_rows(x)
    empty = _absent(dtype)

    def vector(array: np.ndarray | None) -> np.ndarray:
        if array is None:
            return empty
        return _frozen(np.ascontiguousarray(array, dtype=dtype))

    n_rows = x.shape[0]
    few_classes = 1 <= x.shape[1] <= FEW_CLASSES and n_rows > 0
    per_sample = GRADIENTS.empty((n_rows,), _FLOAT64)
    lse = GRADIENTS.empty((n_rows,), _FLOAT64)
    if not few_classes:  # the few-class kernel writes every row; the row kernels skip ignored ones
        per_sample.fill(0.0)
        lse.fill(0.0)
    grad = GRADIENTS.empty(x.shape, dtype)
    arguments = (
        x,
        _frozen(np.ascontiguousarray(y, dtype=np.int64)),
        _frozen(np.ascontiguousarray(valid, dtype=np.bool_)),
        kind,
        vector(at_label),
        vector(total),
        vector(spread),
        float(z_loss),
        float(param),
        vector(alpha),
        float(grad_scale),
        per_sample,
        lse,
        grad,
    )
    if few_classes:
        in_parallel = _in_parallel(x.size, parallel, FEW_CLASS_PARALLEL_MIN_ELEMENTS)
        pieces = numba.get_num_threads() if in_parallel else 1
        _few_class_rows(arguments, pieces)
    elif _in_parallel(x.size, parallel):
        with _LAUNCH:
            softmax_rows_parallel(*arguments)
    else:
        softmax_rows_serial(*arguments)
    return per_sample, lse, grad


def class_index_rows(
    x: np.ndarray,
    labels: np.ndarray,
    ignore_index: int,
    *,
    mean: bool,
    kind: int = CROSS_ENTROPY,
    param: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int, float, float] | None:
    """Cross-entropy (or focal, poly-1: `kind`, `param` as `softmax_rows`') of rows `x` [M, C]
    of up to `FEW_CLASSES` classes against class indices `labels` [M] (integers), without
    weights, smoothing, z-loss or alpha: the label checks and the target before `softmax_rows`,
    the sum of the losses after it, each one compiled call (`class_index_rows`). Cross-entropy
    over two classes takes its own one-pass kernel instead (`two_classes`).
    Returns (per_sample [M] and grad [M, C] in the compute dtype, the rows that count, the
    float64 sum of the losses, the scale folded into the gradient: `mean`'s 1 / rows that count,
    or 1), or None where the general path must take the call: other class counts, a label that
    is neither a class nor `ignore_index`, a loss that is not finite."""
    n_rows, n_classes = x.shape
    if not (1 <= n_classes <= FEW_CLASSES and n_rows > 0):
        return None
    dtype = _COMPUTE_DTYPES[dtype_name(x.dtype)]
    labels = _frozen(np.ascontiguousarray(labels, dtype=np.int64))  # one compiled type
    if n_classes == 2 and kind == CROSS_ENTROPY:
        return _two_class_rows(x, labels, ignore_index, mean=mean, dtype=dtype)
    outside, n_valid = count_class_indices(labels, ignore_index, n_classes)
    if outside:
        return None
    scale = _class_index_scale(n_valid, mean)
    if n_valid == n_rows:  # the common case: the labels as they are, every mass 1
        y, valid, mass = labels, kept_ones(n_rows, _BOOL, xp=np), kept_ones(n_rows, dtype, xp=np)
    else:
        y, valid = np.empty(n_rows, dtype=np.int64), np.empty(n_rows, dtype=np.bool_)
        mass = np.empty(n_rows, dtype=dtype)
        mask_ignored(labels, ignore_index, valid, y, mass)
    per_sample, _, grad = softmax_rows(
        x, y, valid, kind=kind, at_label=mass, total=mass, param=param, grad_scale=scale
    )
    total = class_index_total(per_sample, grad, valid, dtype.type(0))
    if not math.isfinite(total):
        return None
    return per_sample.astype(dtype), grad, n_valid, total, scale


def _class_index_scale(n_valid: int, mean: bool) -> float:
    return 1.0 / n_valid if mean and n_valid else 1.0  # as `reduction.grad_scale`


def _two_class_rows(
    x: np.ndarray, labels: np.ndarray, ignore_index: int, *, mean: bool, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, int, float, float] | None:
    """`class_index_rows` for plain cross-entropy over two classes: its own kernel, over the
    labels narrowed to int32 (ignored ones -1) by the count."""
    narrowed = GRADIENTS.empty(labels.shape, _INT32)
    outside, n_valid = count_and_narrow_class_indices(labels, ignore_index, 2, narrowed)
    if outside:
        return None
    scale = _class_index_scale(n_valid, mean)
    rows, _ = _kernel_rows(x)
    per_sample, grad = GRADIENTS.empty(labels.shape, dtype), GRADIENTS.empty(x.shape, dtype)
    total = two_class_rows(rows.reshape(-1), narrowed, -1, scale, per_sample, grad.reshape(-1))
    return (per_sample, grad, n_valid, total, scale) if math.isfinite(total) else None


_NO_PAIRS: Final = np.empty(0, dtype=np.uint64)  # `grad_pairs`: writable
_NO_PAIRS_IN: Final = _frozen(_NO_PAIRS)  # `x_pairs`: read-only, as the rows


def _few_class_rows(arguments: tuple[Any, ...], pieces: int) -> None:
    """The few-class kernel on `softmax_rows_serial`'s arguments (rows and gradient [M, C]) in up
    to `pieces` spans of whole blocks (`BLOCK_ROWS` rows), at once on as many threads (the kernel
    releases the GIL), each with its thread's scratch. The kernel computes a row the same way
    wherever its block starts: the numbers are those of one span."""
    x, y, valid, kind, at_label, total, spread, z_loss, param, alpha, scale = arguments[:11]
    per_sample, lse, grad = arguments[11:]
    n_classes = x.shape[1]
    kernel = few_class_kernel(n_classes)

    def span(rows: slice) -> None:
        flat_x, flat_grad = x[rows].reshape(-1), grad[rows].reshape(-1)
        kernel(
            flat_x,
            y[rows],
            valid[rows],
            kind,
            at_label[rows],  # an absent vector (empty) stays empty
            total[rows],
            spread,
            z_loss,
            param,
            alpha,
            scale,
            per_sample[rows],
            lse[rows],
            flat_grad,
            *_pair_views(flat_x, flat_grad, n_classes),
            *_few_class_scratch(n_classes, grad.dtype),
        )

    first, *rest = _block_spans(x.shape[0], pieces)
    others = [_span_threads(len(rest)).submit(span, rows) for rows in rest]
    span(first)
    for other in others:
        other.result()


def _block_spans(n_rows: int, pieces: int) -> list[slice]:
    """Up to `pieces` spans of whole `BLOCK_ROWS` blocks over `n_rows` rows (the last block may
    be short), as even as whole blocks allow."""
    blocks = -(-n_rows // BLOCK_ROWS)
    span_rows = -(-blocks // max(1, pieces)) * BLOCK_ROWS
    return [slice(first, min(first + span_rows, n_rows)) for first in range(0, n_rows, span_rows)]


@functools.cache
def _span_threads(count: int) -> ThreadPoolExecutor:
    """The threads that run the other spans of a few-class call (the caller runs the first)."""
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="few-class-rows")


def _pair_views(x: np.ndarray, grad: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """The few-class kernel's `x_pairs` and `grad_pairs`: uint64 views of the flat rows and
    gradient where the kernel moves them two classes at a time (`PAIRED_CLASSES`, float32),
    empty ones elsewhere. Rows must also be 8-byte aligned (numba compiles another kernel for
    unaligned arrays); the gradient is, as NumPy allocates it."""
    if n_classes not in PAIRED_CLASSES or sys.byteorder != "little" or grad.dtype != _FLOAT32:
        return _NO_PAIRS_IN, _NO_PAIRS
    rows_paired = x.dtype == _FLOAT32 and x.ctypes.data % 8 == 0  # 16-bit rows: as they are
    return (x.view(np.uint64) if rows_paired else _NO_PAIRS_IN), grad.view(np.uint64)


def _few_class_scratch(n_classes: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
    """The few-class kernel's scratch: the transposed block of rows (`BLOCK_ROWS` rows of the
    compute dtype, with room for per-row values), float64 per-row sums, int32 labels, the rows'
    maxima as `ordered_key`s. A few tens of KiB, kept per thread (calls on two threads at once
    each have their own) and per class count and dtype: allocating it cost as much as a small
    call's kernel."""
    kept: dict[tuple[int, np.dtype], tuple[np.ndarray, ...]] | None
    kept = getattr(_THREAD_SCRATCH, "few_classes", None)
    if kept is None:
        kept = _THREAD_SCRATCH.few_classes = {}
    scratch = kept.get((n_classes, dtype))
    if scratch is None:
        scratch = kept[n_classes, dtype] = (
            np.empty((n_classes + BLOCK_EXTRA_ROWS, BLOCK_ROWS), dtype=dtype),
            np.empty((WIDE_ROWS, BLOCK_ROWS), dtype=np.float64),
            np.empty(BLOCK_ROWS, dtype=np.int32),  # labels: compares vectorise beside float32
            np.empty(BLOCK_ROWS, dtype=np.dtype(f"i{dtype.itemsize}")),
        )
    return scratch


_THREAD_SCRATCH = threading.local()


def binary_rows(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    p: np.ndarray | None,
    *,
    grad_scale: float = 1.0,
    kind: int = BINARY_CROSS_ENTROPY,
    gamma: float = 0.0,
    alpha: float | None = None,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """BCE with logits on rows `x` [M, C] against targets `y` [M, C] of the same dtype (any of
    `NATIVE_INPUT_DTYPES`), with a weight `w` and a pos_weight `p` of shape [C] or [M, C] (None:
    absent) in its compute dtype, that of the outputs. `kind=SIGMOID_FOCAL`: the sigmoid focal
    loss with `gamma` and `alpha` (None: no alpha_t) instead, and no pos_weight.

    Returns (per-element loss [M, C], gradient [M, C] multiplied by `grad_scale`, status, the
    float64 sum of the losses): the status ORs `LABEL_OUTSIDE` and `NOT_FINITE`; where it is not
    0 the other results are unspecified.

    Short rows reach the kernel `BINARY_CHUNK // C` at a time, as one row of that many times C
    elements (a [C] factor repeated as often): a loop over 10 elements costs as much as one over
    100. The rows that do not fill a group go as they are, in a second launch.
    """
    x, dtype = _kernel_rows(x)
    y, _ = _kernel_rows(y)
    n_rows, n_cols = x.shape
    w_rows, p_rows = (
        np.ones((1, n_cols), dtype=dtype)
        if array is None
        else np.ascontiguousarray(array, dtype=dtype).reshape(-1 if n_cols else 1, n_cols)
        for array in (w, p)
    )
    per_element = GRADIENTS.empty(x.shape, dtype)
    grad = GRADIENTS.empty(x.shape, dtype)
    group = max(1, BINARY_CHUNK // n_cols) if n_cols else 1
    whole = n_rows // group * group
    status = 0
    total = 0.0
    in_parallel = _in_parallel(x.size, parallel)
    with _LAUNCH if in_parallel else contextlib.nullcontext():
        for first, stop, size in ((0, whole, group), (whole, n_rows, 1)):
            if stop == first:
                continue
            rows = slice(first, stop)
            shape = ((stop - first) // size, size * n_cols)
            bits = np.zeros(shape[0] * -(-shape[1] // BINARY_CHUNK), dtype=np.uint8)
            sums = np.zeros(bits.shape, dtype=np.float64)
            inputs = (x[rows].reshape(shape), y[rows].reshape(shape), _grouped(w_rows, rows, shape))
            # views: the kernel writes the outputs
            outputs = (per_element[rows].reshape(shape), grad[rows].reshape(shape), bits, sums)
            if kind == SIGMOID_FOCAL:
                a = -1.0 if alpha is None else float(alpha)
                focal = sigmoid_focal_rows_parallel if in_parallel else sigmoid_focal_rows_serial
                focal(*inputs, a, float(gamma), float(grad_scale), *outputs)
            else:
                bce = binary_rows_parallel if in_parallel else binary_rows_serial
                bce(*inputs, _grouped(p_rows, rows, shape), float(grad_scale), *outputs)
            status |= int(np.bitwise_or.reduce(bits, initial=0))
            total += float(np.sum(sums))
    return per_element, grad, status, total


def _grouped(factor: np.ndarray, rows: slice, shape: tuple[int, int]) -> np.ndarray:
    """A [1, C] or [M, C] factor for `rows` of `binary_rows` grouped into rows of `shape`."""
    if factor.shape[0] == 1:  # the same for every row: repeated along the group
        return _frozen(np.tile(factor, (1, shape[1] // max(factor.shape[1], 1))))
    return _frozen(factor[rows].reshape(shape))


# Gradients and per-row outputs of at least 64 KiB; up to 1 GiB of them kept (four 2048 x 32000
# float32 gradients). Below 64 KiB the allocator's free lists serve them without page faults.
GRADIENTS = ArrayPool(min_bytes=1 << 16, max_bytes=1 << 30)
_FLOAT64: Final = np.dtype(np.float64)
_FLOAT32: Final = np.dtype(np.float32)
_BOOL: Final = np.dtype(np.bool_)
_INT32: Final = np.dtype(np.int32)


_WARM_FEW_CLASS_DTYPES: Final = ("float32", "float64")


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for rows of every native dtype, serial and
    parallel, and for float32 and float64 rows (binary bodies' commonest dtype and JSON numbers')
    of every class count the few-class kernel and the calls of `class_index_rows` around it
    (those of 16-bit rows compile on first use: seconds per class count)."""
    labels = np.zeros(2, dtype=np.int64)
    ignored = np.array([0, -100])
    valid = np.ones(2, dtype=np.bool_)
    for name in sorted(NATIVE_INPUT_DTYPES):
        dtype = np.dtype(COMPUTE_DTYPES[name])
        ones = np.ones(2, dtype=dtype)
        few = name in _WARM_FEW_CLASS_DTYPES
        counts = range(1, FEW_CLASSES + 2) if few else (FEW_CLASSES + 1,)
        for n_classes in counts:  # FEW_CLASSES + 1: the row kernels
            x = np.zeros((2, n_classes), dtype=dtype).astype(_native_dtype(name))
            for parallel in (False, True):
                softmax_rows(
                    x, labels, valid, kind=CROSS_ENTROPY, at_label=ones, total=ones,
                    parallel=parallel,
                )  # fmt: skip
            for some_ignored in (labels, ignored):  # None from FEW_CLASSES + 1 classes on
                class_index_rows(x, some_ignored, -100, mean=True)
        for parallel in (False, True):
            binary_rows(x, x, None, None, parallel=parallel)
            binary_rows(x, x, None, None, kind=SIGMOID_FOCAL, gamma=2.0, parallel=parallel)


def _native_dtype(name: str) -> np.dtype:
    """The NumPy dtype of a name in `NATIVE_INPUT_DTYPES` (bfloat16: ml_dtypes')."""
    if name == "bfloat16":
        import ml_dtypes  # the codecs' bfloat16; only needed here to make one

        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    return np.dtype(name)
