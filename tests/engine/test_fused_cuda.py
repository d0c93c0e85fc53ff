"""The CUDA kernel (service/engine/_kernels/cuda.py) against the reference array code.

On a GPU: CuPy fused vs CuPy reference vs NumPy reference over the grid of
tests/engine/test_fused.py (weights x ignore_index x smoothing x z-loss x reductions x 2-D/3-D x
float32/float64), focal and poly-1, masked classes, logits of 1e4, empty batches.

Everywhere (no GPU needed): the dispatch rules, that importing the module imports no CuPy, and
the kernel's own source compiled by the host C++ compiler with one thread per CUDA lane (a
barrier for `__syncthreads`, shared slots for the warp shuffles), run through the Python side
and the losses over the same grid. That checks the kernel's arithmetic and its block reductions,
not NVRTC or the device.

Long because the GPU grid and the host-compiled kernel check share the launch-shape cases.
"""

from __future__ import annotations

import ctypes
import importlib
import re
import shutil
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from service.engine import (
    LossResult,
    ReducedLoss,
    _engine_path,
    cross_entropy,
    focal,
    poly1,
    reduce_loss,
    using_engine_path,
)
from service.engine._kernels import cuda
from service.errors import InvalidInput
from tests.engine.fused_cases import (
    FAMILY,
    FAMILY_IDS,
    GRID,
    GRID_IDS,
    MASKED,
    MASKED_IDS,
    RNG,
    TOLERANCES,
    C,
    assert_same,
    batch,
    grid_options,
    masked_logits,
)
from tests.engine_helpers import pin_engine_path


def _cupy_with_gpu() -> types.ModuleType | None:
    try:
        cupy = importlib.import_module("cupy")
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


CUPY = _cupy_with_gpu()


def host(array: Any) -> Any:
    get = getattr(array, "get", None)
    return np.asarray(get()) if callable(get) else array


def on_path(path: str, function: Callable[..., LossResult], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` on one engine path, reduced with `reduction` (default
    `none`); an InvalidInput is returned, not raised."""
    reduction = kwargs.pop("reduction", "none")
    with using_engine_path(path):
        try:
            return reduce_loss(function(*args, **kwargs), reduction)
        except InvalidInput as error:
            return error


def wide_batch(
    dtype: Any, n_classes: int = 300, *, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Six rows of `n_classes` wider than a few classes per lane: strided loops, the 16-byte
    vectors and several rounds of them. `offset` elements into a buffer: with 1, no row starts
    on a 16-byte boundary (the head and tail elements are read one by one)."""
    logits = at_offset((RNG.normal(size=(6, n_classes)) * 4).astype(dtype), offset)
    logits[1, ::7] = -np.inf
    late = n_classes - 50
    logits[2, late] = 30.0  # the maximum late in the row: the running sums are rescaled
    return logits, np.array([3, 2, late, -100, n_classes - 1, 0])


def at_offset(array: np.ndarray, offset: int) -> np.ndarray:
    """A C-contiguous copy of `array` starting `offset` elements into a 16-byte-aligned buffer."""
    buffer = np.empty(array.size + offset, array.dtype)
    assert buffer.ctypes.data % 16 == 0
    copy = buffer[offset:].reshape(array.shape)
    copy[...] = array
    return copy


# --- the kernel's source on the CPU (one thread per lane) ------------------------------------

EMULATION = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(...)
struct Dim3 { unsigned x; };
static thread_local Dim3 threadIdx;
static Dim3 blockIdx, blockDim;
static std::barrier<>* block_barrier;
static void __syncthreads() { block_barrier->arrive_and_wait(); }
template <typename V> V __shfl_xor_sync(unsigned, V v, int offset) {
    static V lanes[1024];
    lanes[threadIdx.x] = v;
    __syncthreads();
    V other = lanes[threadIdx.x ^ offset];
    __syncthreads();
    return other;
}
static float __int_as_float(unsigned bits) { float f; std::memcpy(&f, &bits, 4); return f; }
static double __longlong_as_double(unsigned long long bits) {
    double d; std::memcpy(&d, &bits, 8); return d;
}
// x86 reads a misaligned 16-byte vector without complaint, the GPU faults: count them.
static std::atomic<long> misaligned_vectors_seen{0};
extern "C" long misaligned_vectors() { return misaligned_vectors_seen.exchange(0); }
// (Said at once too: the access that follows may crash the process, x86 aligned moves.)
#define VECTOR_ACCESS(pointer) do {                                                  \
    if (reinterpret_cast<unsigned long long>(pointer) & 15) {                        \
        ++misaligned_vectors_seen;                                                   \
        std::fprintf(stderr, "misaligned vector at %p\n", (const void*)(pointer));  \
    }                                                                                \
} while (0)
"""

LAUNCHER = r"""
template <typename... A> static void launch(void (*kernel)(A...), unsigned grid, unsigned block,
                                            A... args) {
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        std::barrier<> barrier(block);
        block_barrier = &barrier;
        std::vector<std::thread> lanes;
        for (unsigned t = 0; t < block; ++t) {
            lanes.emplace_back([=] { threadIdx.x = t; kernel(args...); });
        }
        for (auto& lane : lanes) lane.join();
    }
}
#define EMULATE(NAME, FORMAT)                                                                 \
    extern "C" void run_##NAME(                                                               \
        unsigned grid, unsigned block, const FORMAT::Storage* x, const long long* y,          \
        const bool* valid, long long n_rows, int n_classes, int lanes, int kind,              \
        const FORMAT::Real* at_label, const FORMAT::Real* total, const FORMAT::Real* spread,  \
        int smoothing, double z_loss, double param, const FORMAT::Real* alpha, int weighted,  \
        double grad_scale, double* per_sample, double* lse, FORMAT::Real* grad) {             \
        launch(NAME, grid, block, x, y, valid, n_rows, n_classes, lanes, kind, at_label,      \
               total, spread, smoothing, z_loss, param, alpha, weighted, grad_scale,          \
               per_sample, lse, grad);                                                        \
    }
EMULATE(softmax_rows_f32, F32)
EMULATE(softmax_rows_f64, F64)
EMULATE(softmax_rows_f16, F16)
EMULATE(softmax_rows_bf16, BF16)
"""


class EmulatedKernel:
    """A `cupy.RawKernel` stand-in: `kernel(grid, block, arguments)` on NumPy arrays; records
    each launch's (blocks, threads per block, lanes per row)."""

    def __init__(self, library: ctypes.CDLL, name: str) -> None:
        self.function = getattr(library, f"run_{name}")
        self.launches: list[tuple[int, int, int]] = []

    def __call__(self, grid: tuple[int], block: tuple[int], arguments: tuple[Any, ...]) -> None:
        converted: list[Any] = [ctypes.c_uint(grid[0]), ctypes.c_uint(block[0])]
        for argument in arguments:
            if isinstance(argument, np.ndarray):
                assert argument.flags.c_contiguous
                converted.append(ctypes.c_void_p(argument.ctypes.data))
            elif isinstance(argument, np.int64):
                converted.append(ctypes.c_longlong(int(argument)))
            elif isinstance(argument, np.int32):
                converted.append(ctypes.c_int(int(argument)))
            else:
                assert isinstance(argument, np.float64), type(argument)
                converted.append(ctypes.c_double(float(argument)))
        self.launches.append((grid[0], block[0], int(arguments[5])))
        self.function(*converted)


@pytest.fixture(scope="module")
def emulation_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("g++")
    assert compiler is not None, "the tests marked cxx are deselected without g++ (conftest)"
    folder = tmp_path_factory.mktemp("kernel")
    source = folder / "kernel.cpp"
    source.write_text(EMULATION + cuda.source() + LAUNCHER)
    library = folder / "kernel.so"
    # -fno-strict-aliasing: the source reads rows through 16-byte vector types (as CUDA does)
    command = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w"]
    command.append("-fno-strict-aliasing")
    subprocess.run([*command, "-o", str(library), str(source)], check=True)
    return ctypes.CDLL(str(library))


@pytest.fixture
def emulated(
    emulation_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, EmulatedKernel]]:
    """The CUDA source, compiled for the CPU, as the fused path of NumPy arrays."""
    kernels = {
        dtype: EmulatedKernel(emulation_library, name) for dtype, name in cuda.KERNEL_NAMES.items()
    }
    monkeypatch.setattr(cuda, "_kernel", kernels.__getitem__)
    monkeypatch.setattr(_engine_path, "_load", lambda required: cuda)
    emulation_library.misaligned_vectors.restype = ctypes.c_long
    emulation_library.misaligned_vectors()
    yield kernels
    assert emulation_library.misaligned_vectors() == 0, "a 16-byte vector access off its boundary"


@pytest.mark.cxx
@pytest.mark.parametrize(
    ("weight", "ignored", "smoothing", "z_loss", "reduction", "shape", "dtype"), GRID, ids=GRID_IDS
)
def test_emulated_kernel_cross_entropy_agrees(
    emulated: dict[str, EmulatedKernel],
    weight: str | None,
    ignored: bool,
    smoothing: float,
    z_loss: float,
    reduction: str,
    shape: tuple[int, ...],
    dtype: Any,
) -> None:
    logits, labels = batch(shape, dtype, ignored=ignored)
    options = grid_options(weight, smoothing, z_loss, dtype)
    options["reduction"] = reduction
    reference = on_path("reference", cross_entropy, logits, labels, **options)
    fused = on_path("fused", cross_entropy, logits, labels, **options)
    assert_same(fused, reference, dtype)
    assert emulated[np.dtype(dtype).name].launches == [(1, 32, 1)]  # a thread per row


@pytest.mark.cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("function", "options"), FAMILY, ids=FAMILY_IDS)
def test_emulated_kernel_focal_and_poly1_agree(
    emulated: dict[str, EmulatedKernel],
    function: Callable[..., LossResult],
    options: dict[str, Any],
    dtype: Any,
) -> None:
    logits, labels = batch((4, 5), dtype, ignored=True)
    reference = on_path("reference", function, logits, labels, **options)
    assert_same(on_path("fused", function, logits, labels, **options), reference, dtype)


@pytest.mark.cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("function", "options"), MASKED, ids=MASKED_IDS)
def test_emulated_kernel_masked_classes(
    emulated: dict[str, EmulatedKernel],
    function: Callable[..., LossResult],
    options: dict[str, Any],
    dtype: Any,
) -> None:
    logits, labels = masked_logits(dtype, smoothing="label_smoothing" in options)
    reference = on_path("reference", function, logits, labels, **options)
    fused = on_path("fused", function, logits, labels, **options)
    assert_same(fused, reference, dtype)
    assert np.all(fused.grads["logits"][np.isneginf(logits)] == 0)


WIDE_LAYOUTS = [
    (300, 0, (1, 128, 16)),  # 8 rows of 16 lanes to a block
    (2001, 1, (6, 64, 64)),  # a block per row; rows off 16-byte boundaries, odd length
]


@pytest.mark.cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.1, "z_loss": 1e-3, "weight": "linspace"}],
    ids=["plain", "smoothing-z-weight"],
)
@pytest.mark.parametrize(
    ("n_classes", "offset", "launch"), WIDE_LAYOUTS, ids=["rows-of-16-lanes", "block-misaligned"]
)
def test_emulated_kernel_wide_rows_and_large_logits(
    emulated: dict[str, EmulatedKernel],
    options: dict[str, Any],
    dtype: Any,
    n_classes: int,
    offset: int,
    launch: tuple[int, int, int],
) -> None:
    logits, labels = wide_batch(dtype, n_classes, offset=offset)
    assert (logits.ctypes.data % 16 != 0) == (offset != 0)
    if options:
        options = {**options, "weight": np.linspace(0.0, 2.0, n_classes)}
        logits[1] = np.where(np.isneginf(logits[1]), 0, logits[1])  # mass on every class
        logits[4] = logits[4] * 2500  # magnitude 1e4
    reference = on_path("reference", cross_entropy, logits, labels, **options)
    assert_same(on_path("fused", cross_entropy, logits, labels, **options), reference, dtype)
    assert emulated[np.dtype(dtype).name].launches[0] == launch
    for function in (focal, poly1):
        reference = on_path("reference", function, logits, labels)
        assert_same(on_path("fused", function, logits, labels), reference, dtype)


@pytest.mark.cxx
def test_emulated_kernel_errors_and_empty_batches(emulated: dict[str, EmulatedKernel]) -> None:
    logits = np.zeros((3, C))
    logits[1, 2] = -np.inf
    labels = np.array([0, 2, 1])
    for function in (cross_entropy, focal, poly1):
        errors = [on_path(path, function, logits, labels) for path in ("reference", "fused")]
        assert all(isinstance(error, InvalidInput) for error in errors), errors
        assert errors[0].detail == errors[1].detail
        empty = on_path("fused", function, np.zeros((0, C), np.float32), np.zeros(0, np.int64))
        assert empty.loss == 0.0 and empty.n_valid == 0
        ignored = on_path("fused", function, np.ones((2, C)), np.full(2, -100), reduction="mean")
        assert ignored.loss == 0.0 and not np.any(ignored.grads["logits"])


def class_index_rows(
    x: Any, labels: Any, xp: Any = np, **options: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`softmax_rows` for plain cross-entropy with class-index `labels` (-1: ignored), on
    NumPy or (`xp`) CuPy arrays; the results on the host."""
    valid = labels >= 0
    mass = valid.astype(np.float64 if x.dtype == np.float64 else np.float32)
    y = xp.where(valid, labels, 0)
    kind = cuda.CROSS_ENTROPY
    per_sample, lse, grad = cuda.softmax_rows(
        x, y, valid, kind=kind, at_label=mass, total=mass, **options
    )
    return host(per_sample), host(lse), host(grad)


def sixteen_bit_inputs(x32: np.ndarray) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """float16 and bfloat16 versions of `x32` (bfloat16 twice: ml_dtypes, and uint16 bits)."""
    bfloat16 = x32.astype(ml_dtypes.bfloat16)
    return {
        "float16": (x32.astype(np.float16), {}),
        "bfloat16": (bfloat16, {}),
        "bfloat16-bits": (bfloat16.view(np.uint16), {"bfloat16_bits": True}),
    }


def expected_rows(
    x: np.ndarray, labels: np.ndarray, grad_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain cross-entropy of rows `x` in float64: per_sample, lse of every row (`softmax_rows`
    gives it for ignored rows only with a z-loss), grad; labels -1 are ignored."""
    x = x.astype(np.float64)
    valid = labels >= 0
    shift = np.max(x, axis=1, keepdims=True)
    shift[~np.isfinite(shift)] = 0
    exp = np.exp(x - shift)
    total = np.sum(exp, axis=1, keepdims=True)
    at_label = np.where(valid, labels, 0)
    # a fully masked row (ignored): log 0 = -inf is its lse, -inf - -inf and 0 / 0 are dropped
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = (shift + np.log(total))[:, 0]
        per_sample = np.where(valid, lse - x[np.arange(len(x)), at_label], 0.0)
        grad = exp / total
    grad[np.arange(len(x)), at_label] -= 1
    grad[~valid] = 0
    return per_sample, lse, grad * grad_scale


INPUT_DTYPES = ["float32", "float64", "float16", "bfloat16", "bfloat16-bits"]
# (rows, classes, offset in elements, launch shape), and what each covers
LAYOUTS = [
    pytest.param(300, 10, 0, (2, 256, 1), id="thread-per-row-40-byte-rows-2-blocks"),
    pytest.param(9, 1000, 0, (2, 256, 32), id="warp-per-row-last-block-part-full"),
    pytest.param(5, 1001, 1, (1, 256, 32), id="odd-rows-off-boundary-head-and-tail"),
    pytest.param(3, 2000, 0, (3, 64, 64), id="block-per-row-unrolled-then-single-vectors"),
    pytest.param(2, 5003, 3, (2, 256, 256), id="8-warps-per-row-misaligned-odd"),
]


def layout_rows(n_rows: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits with the edge cases, and labels (-1: ignored)."""
    x = (RNG.normal(size=(n_rows, n_classes)) * 3).astype(np.float32)
    labels = RNG.integers(0, n_classes, size=n_rows)
    x[0, n_classes - 1] = 40.0  # the maximum in the last element: the tail rescales the sum
    x[0, 0] = -np.inf if labels[0] != 0 else x[0, 0]  # a masked class
    x[-1] = -np.inf  # a fully masked row, ignored
    labels[-1] = -1
    if n_rows > 2:
        labels[1] = -1  # an ignored row between counted ones
        x[2] *= 2500 if n_classes > 20 else 1  # magnitude 1e4
    return x, labels


@pytest.mark.cxx
@pytest.mark.parametrize("input_dtype", INPUT_DTYPES)
@pytest.mark.parametrize(("n_rows", "n_classes", "offset", "launch"), LAYOUTS)
def test_emulated_kernel_layouts_and_16_bit_rows(
    emulated: dict[str, EmulatedKernel],
    input_dtype: str,
    n_rows: int,
    n_classes: int,
    offset: int,
    launch: tuple[int, int, int],
) -> None:
    """Every launch shape, vector/head/tail split and input dtype against float64 numbers of
    the same values; 16-bit rows are read as they are and give a float32 gradient."""
    check_layout(np, input_dtype, n_rows, n_classes, offset)
    kernel = "bfloat16" if input_dtype == "bfloat16-bits" else input_dtype
    assert emulated[kernel].launches[0] == launch


def check_layout(xp: Any, input_dtype: str, n_rows: int, n_classes: int, offset: int) -> None:
    """`softmax_rows` on `xp` arrays at `offset` elements into their buffer against float64
    numbers of the same values, without and with a z-loss (then every row has an `lse`)."""
    x32, labels = layout_rows(n_rows, n_classes)
    inputs: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
        "float32": (x32, {}),
        "float64": (x32.astype(np.float64), {}),
    }
    x, options = {**inputs, **sixteen_bit_inputs(x32)}[input_dtype]
    x = at_offset(x, offset)
    values = (x.view(ml_dtypes.bfloat16) if options else x).astype(np.float64)
    assert x.ctypes.data % 16 == (offset * x.itemsize) % 16
    if xp is not np:  # the same offset into a device buffer
        device: Any = xp.empty(x.size + offset, dtype=x.dtype)[offset:].reshape(x.shape)
        device[...] = xp.asarray(x)
        assert device.data.ptr % 16 == (offset * x.itemsize) % 16
        x, labels = device, xp.asarray(labels)
    grad_scale = 0.25 if n_classes % 2 else 1.0
    per_sample, lse, grad = class_index_rows(x, labels, xp, grad_scale=grad_scale, **options)
    assert grad.dtype == (np.float64 if input_dtype == "float64" else np.float32)
    labels = host(labels)
    expected_per_sample, expected_lse, expected_grad = expected_rows(values, labels, grad_scale)
    tolerance = TOLERANCES[np.float64 if input_dtype == "float64" else np.float32]
    np.testing.assert_allclose(per_sample, expected_per_sample, **tolerance)
    np.testing.assert_allclose(lse, np.where(labels >= 0, expected_lse, 0), **tolerance)
    np.testing.assert_allclose(grad, expected_grad, **tolerance)
    assert np.all(grad[np.isneginf(values)] == 0)
    # with a z-loss, the lse of every row, ignored ones too (the caller checks its overflow)
    _, lse, _ = class_index_rows(x, xp.asarray(labels), xp, z_loss=1e-3, **options)
    np.testing.assert_allclose(lse, expected_lse, **tolerance)


@pytest.mark.cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_emulated_kernel_grad_scale(emulated: dict[str, EmulatedKernel], dtype: Any) -> None:
    """The gradient is scaled as it is written (as `mean`'s `grad *= 1 / divisor`), nothing else."""
    x = (RNG.normal(size=(4, 300)) * 4).astype(dtype)
    labels = np.array([3, -1, 250, 0])
    per_sample, lse, grad = class_index_rows(x, labels)
    scale = 1 / 3
    scaled = class_index_rows(x, labels, grad_scale=scale)
    np.testing.assert_array_equal(scaled[0], per_sample)
    np.testing.assert_array_equal(scaled[1], lse)
    np.testing.assert_array_equal(scaled[2], grad * grad.dtype.type(scale))


def test_kernel_rejects_other_input_dtypes() -> None:
    with pytest.raises(ValueError, match="int32"):
        cuda.input_dtype_name(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="uint16 array of bits"):
        cuda.input_dtype_name(np.zeros((2, 3), np.float16), bfloat16_bits=True)


# --- dispatch (no GPU needed) ---------------------------------------------------------------


def fake_cupy() -> types.ModuleType:
    return types.ModuleType("cupy")


@pytest.mark.parametrize(
    ("path", "expected"),
    [("auto", cuda), ("fused", cuda), ("reference", None)],
)
def test_cupy_arrays_dispatch_to_the_cuda_kernel(
    monkeypatch: pytest.MonkeyPatch, path: str, expected: Any
) -> None:
    pin_engine_path(path, monkeypatch)
    assert _engine_path.fused_kernels(fake_cupy()) is expected


def test_cupy_dispatch_needs_no_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine_path, "_import_fused", lambda: (None, "ImportError: no numba"))
    pin_engine_path("fused", monkeypatch)
    assert _engine_path.fused_kernels(fake_cupy()) is cuda
    pin_engine_path("auto", monkeypatch)
    assert _engine_path.fused_kernels(np) is None  # NumPy falls back to the reference quietly


def test_other_namespaces_use_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    pin_engine_path("fused", monkeypatch)
    assert _engine_path.fused_kernels(types.ModuleType("array_api_strict")) is None


@pytest.mark.parametrize(
    ("n_rows", "n_classes", "shape"),
    [
        (65536, 10, (256, 256, 1)),  # a thread per row, 256 rows to a block
        (9, 7, (1, 32, 1)),  # one warp at least
        (300, 33, (3, 256, 2)),
        (8192, 1000, (1024, 256, 32)),  # a warp per row
        (5, 1000, (1, 256, 32)),
        (3, 1025, (3, 64, 64)),  # a block per row from here
        (256, 128256, (256, 512, 512)),
        (4096, 32000, (4096, 512, 512)),
    ],
)
def test_launch_shape(n_rows: int, n_classes: int, shape: tuple[int, int, int]) -> None:
    assert cuda.launch_shape(n_rows, n_classes) == shape
    blocks, threads, lanes = shape
    assert lanes & (lanes - 1) == 0 and threads % 32 == 0 and threads % lanes == 0
    assert blocks * (threads // lanes) >= n_rows > (blocks - 1) * (threads // lanes)
    assert threads <= cuda.MAX_BLOCK
    assert f"#define MAX_BLOCK {cuda.MAX_BLOCK} " in cuda.source()


def test_importing_the_kernel_module_imports_no_cupy() -> None:
    code = (
        "import sys, service, service.engine, service.engine._kernels.cuda, "
        "service.engine._engine_path; assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- on a GPU: CuPy fused vs CuPy reference vs NumPy reference -------------------------------


@pytest.fixture
def cp() -> types.ModuleType:
    """CuPy, for the tests marked `gpu` (deselected where no device is visible: conftest)."""
    assert CUPY is not None
    return CUPY


def three_ways(
    cp: types.ModuleType,
    function: Callable[..., LossResult],
    logits: np.ndarray,
    labels: np.ndarray,
    dtype: Any,
    **options: Any,
) -> ReducedLoss:
    """Check the three agree (same errors too); return the CuPy fused result."""
    on_device = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    numpy_reference = on_path("reference", function, logits, labels, **options)
    cupy_reference = on_path(
        "reference", function, cp.asarray(logits), cp.asarray(labels), **on_device
    )
    fused = on_path("fused", function, cp.asarray(logits), cp.asarray(labels), **on_device)
    if isinstance(numpy_reference, InvalidInput):
        for result in (cupy_reference, fused):
            assert isinstance(result, InvalidInput), result
            assert result.detail == numpy_reference.detail
        return fused  # type: ignore[no-any-return]
    assert_same(cupy_reference, numpy_reference, dtype)
    assert_same(fused, numpy_reference, dtype)
    assert_same(fused, cupy_reference, dtype)
    assert isinstance(fused.grads["logits"], cp.ndarray)
    return fused  # type: ignore[no-any-return]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("weight", "ignored", "smoothing", "z_loss", "reduction", "shape", "dtype"), GRID, ids=GRID_IDS
)
def test_cupy_kernel_cross_entropy_agrees(
    cp: types.ModuleType,
    weight: str | None,
    ignored: bool,
    smoothing: float,
    z_loss: float,
    reduction: str,
    shape: tuple[int, ...],
    dtype: Any,
) -> None:
    logits, labels = batch(shape, dtype, ignored=ignored)
    options = grid_options(weight, smoothing, z_loss, dtype)
    three_ways(cp, cross_entropy, logits, labels, dtype, reduction=reduction, **options)


@pytest.mark.gpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("function", "options"), FAMILY, ids=FAMILY_IDS)
def test_cupy_kernel_focal_and_poly1_agree(
    cp: types.ModuleType,
    function: Callable[..., LossResult],
    options: dict[str, Any],
    dtype: Any,
    reduction: str,
) -> None:
    logits, labels = batch((4, 5), dtype, ignored=True)
    three_ways(cp, function, logits, labels, dtype, reduction=reduction, **options)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("function", "options"), MASKED, ids=MASKED_IDS)
def test_cupy_kernel_masked_classes(
    cp: types.ModuleType, function: Callable[..., LossResult], options: dict[str, Any], dtype: Any
) -> None:
    logits, labels = masked_logits(dtype, smoothing="label_smoothing" in options)
    fused = three_ways(cp, function, logits, labels, dtype, **options)
    assert np.all(host(fused.grads["logits"])[np.isneginf(logits)] == 0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_kernel_wide_rows_large_logits_and_edges(cp: types.ModuleType, dtype: Any) -> None:
    logits, labels = wide_batch(dtype)
    three_ways(cp, cross_entropy, logits, labels, dtype)
    logits[1] = np.where(np.isneginf(logits[1]), 0, logits[1])
    logits[4] = logits[4] * 2500  # magnitude 1e4
    options = {"label_smoothing": 0.1, "z_loss": 1e-3, "weight": np.linspace(0.0, 2.0, 300)}
    three_ways(cp, cross_entropy, logits, labels, dtype, **options)
    three_ways(cp, focal, logits, labels, dtype)
    three_ways(cp, poly1, logits, labels, dtype)
    big = (RNG.normal(size=(3, 5000)) * 3).astype(dtype)  # 625 threads: several loop rounds
    three_ways(cp, cross_entropy, big, np.array([0, 4999, -100]), dtype, label_smoothing=0.2)
    inf_label = np.zeros((3, C), dtype=dtype)
    inf_label[1, 2] = -np.inf
    for function in (cross_entropy, focal, poly1):
        three_ways(cp, function, inf_label, np.array([0, 2, 1]), dtype)  # the same error
        empty = three_ways(cp, function, np.zeros((0, C), dtype), np.zeros(0, np.int64), dtype)
        assert empty.loss == 0.0
        three_ways(cp, function, np.ones((2, C), dtype), np.full(2, -100), dtype, reduction="mean")


@pytest.mark.gpu
@pytest.mark.parametrize("input_dtype", ["float32", "float64", "float16", "bfloat16-bits"])
@pytest.mark.parametrize(("n_rows", "n_classes", "offset", "launch"), LAYOUTS)
def test_cupy_kernel_layouts_and_16_bit_rows(
    cp: types.ModuleType,
    input_dtype: str,
    n_rows: int,
    n_classes: int,
    offset: int,
    launch: tuple[int, int, int],
) -> None:
    check_layout(cp, input_dtype, n_rows, n_classes, offset)


@pytest.mark.gpu
def test_cupy_kernel_float16_input_and_dispatch(
    cp: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits = RNG.normal(size=(6, C)).astype(np.float16)
    labels = RNG.integers(0, C, size=6)
    fused = three_ways(cp, cross_entropy, logits, labels, np.float32)
    assert fused.grads["logits"].dtype == np.float32
    calls: list[int] = []
    real = cuda.softmax_rows

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["kind"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cuda, "softmax_rows", counting)
    pin_engine_path("auto", monkeypatch)
    x, y = cp.asarray(logits), cp.asarray(labels)
    for function in (cross_entropy, focal, poly1):
        function(x, y)
    cross_entropy(x, cp.asarray(np.eye(C, dtype=np.float32)[labels]))  # probabilities: reference
    assert calls == [cuda.CROSS_ENTROPY, cuda.FOCAL, cuda.POLY1]


def test_the_source_compiles_with_nvcc_for_sm90(tmp_path: Path) -> None:
    """nvcc needs no GPU either: CUDA-only syntax errors show here, and the register count
    that lets two blocks of `MAX_BLOCK` threads share an SM (the occupancy the design needs)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH")
    source = tmp_path / "softmax_rows.cu"
    source.write_text(cuda.source())
    command = [nvcc, "-arch=sm_90", "-std=c++14", "--resource-usage", "-c", str(source)]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "softmax_rows.o")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    registers = dict(
        re.findall(r"entry function '(\w+)'.*?Used (\d+) registers", done.stderr, re.DOTALL)
    )
    assert set(registers) == set(cuda.KERNEL_NAMES.values()), done.stderr
    limit = 65536 // (2 * cuda.MAX_BLOCK)
    assert all(int(count) <= limit for count in registers.values()), registers


def test_the_source_compiles_with_nvrtc() -> None:
    """NVRTC (CuPy's compiler) needs no GPU: where its library loads, compile to PTX."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # type: ignore[import-not-found,import-untyped,unused-ignore]

        program = nvrtc.createProgram(cuda.source(), "softmax_rows.cu", [], [])
    except Exception as error:  # no CuPy, or no NVRTC library
        pytest.skip(f"NVRTC not usable here: {type(error).__name__}: {error}")
    try:
        nvrtc.compileProgram(program, ["--std=c++14", "-arch=compute_80"])
    except Exception as error:
        pytest.fail(f"{error}\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program).decode()
    for name in cuda.KERNEL_NAMES.values():
        assert f".entry {name}(" in ptx
