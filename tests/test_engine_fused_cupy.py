"""The CUDA kernel (service/engine/_fused_cupy.py) against the reference array code.

On a GPU: CuPy fused vs CuPy reference vs NumPy reference over the grid of
tests/test_engine_fused.py (weights x ignore_index x smoothing x z-loss x reductions x 2-D/3-D x
float32/float64), focal and poly-1, masked classes, logits of 1e4, empty batches.

Everywhere (no GPU needed): the dispatch rules, that importing the module imports no CuPy, and
the kernel's own source compiled by the host C++ compiler with one thread per CUDA lane (a
barrier for `__syncthreads`, shared slots for the warp shuffles), run through the Python side
and the losses over the same grid. That checks the kernel's arithmetic and its block reductions,
not NVRTC or the device.
"""

from __future__ import annotations

import ctypes
import importlib
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
    _fused_cupy,
    cross_entropy,
    focal,
    poly1,
    reduce_loss,
)
from service.errors import InvalidInput
from tests.fused_cases import (
    FAMILY,
    FAMILY_IDS,
    GRID,
    GRID_IDS,
    MASKED,
    MASKED_IDS,
    RNG,
    C,
    assert_same,
    batch,
    grid_options,
    masked_logits,
)


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
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(_engine_path.ENGINE_ENV, path)
        try:
            return reduce_loss(function(*args, **kwargs), reduction)
        except InvalidInput as error:
            return error


def wide_batch(dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows wider than a block (300 classes, 64 threads): strided loops and two warps."""
    logits = (RNG.normal(size=(6, 300)) * 4).astype(dtype)
    logits[1, ::7] = -np.inf
    logits[2, 250] = 30.0  # the maximum late in the row: the running sums are rescaled
    return logits, np.array([3, 2, 250, -100, 299, 0])


# --- the kernel's source on the CPU (one thread per lane) ------------------------------------

EMULATION = r"""
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __shared__ static
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
#define EMULATE(NAME, T)                                                                      \
    extern "C" void run_##NAME(                                                               \
        unsigned grid, unsigned block, const T* x, const long long* y, const bool* valid,     \
        long long n_classes, int kind, const T* at_label, const T* total, const T* spread,    \
        int smoothing, double z_loss, double param, const T* alpha, int weighted,             \
        double grad_scale, double* per_sample, double* lse, T* grad) {                        \
        launch(NAME, grid, block, x, y, valid, n_classes, kind, at_label, total, spread,      \
               smoothing, z_loss, param, alpha, weighted, grad_scale, per_sample, lse, grad); \
    }
EMULATE(softmax_rows_f32, float)
EMULATE(softmax_rows_f64, double)
"""


class EmulatedKernel:
    """A `cupy.RawKernel` stand-in: `kernel(grid, block, arguments)` on NumPy arrays."""

    def __init__(self, library: ctypes.CDLL, name: str) -> None:
        self.function = getattr(library, f"run_{name}")
        self.blocks: list[int] = []

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
        self.blocks.append(block[0])
        self.function(*converted)


@pytest.fixture(scope="module")
def emulation_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no host C++ compiler (g++) to run the kernel source on the CPU")
    folder = tmp_path_factory.mktemp("kernel")
    source = folder / "kernel.cpp"
    source.write_text(EMULATION + _fused_cupy.SOURCE + LAUNCHER)
    library = folder / "kernel.so"
    command = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w"]
    subprocess.run([*command, "-o", str(library), str(source)], check=True)
    return ctypes.CDLL(str(library))


@pytest.fixture
def emulated(
    emulation_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, EmulatedKernel]]:
    """The CUDA source, compiled for the CPU, as the fused path of NumPy arrays."""
    kernels = {
        dtype: EmulatedKernel(emulation_library, name)
        for dtype, name in _fused_cupy.KERNEL_NAMES.items()
    }
    monkeypatch.setattr(_fused_cupy, "_kernel", kernels.__getitem__)
    monkeypatch.setattr(_engine_path, "_load", lambda required: _fused_cupy)
    yield kernels


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
    assert emulated[np.dtype(dtype).name].blocks == [32]


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.1, "z_loss": 1e-3, "weight": np.linspace(0.0, 2.0, 300)}],
    ids=["plain", "smoothing-z-weight"],
)
def test_emulated_kernel_wide_rows_and_large_logits(
    emulated: dict[str, EmulatedKernel], options: dict[str, Any], dtype: Any
) -> None:
    logits, labels = wide_batch(dtype)
    if options:
        logits[1] = np.where(np.isneginf(logits[1]), 0, logits[1])  # mass on every class
        logits[4] = logits[4] * 2500  # magnitude 1e4
    reference = on_path("reference", cross_entropy, logits, labels, **options)
    assert_same(on_path("fused", cross_entropy, logits, labels, **options), reference, dtype)
    assert emulated[np.dtype(dtype).name].blocks == [64]
    for function in (focal, poly1):
        reference = on_path("reference", function, logits, labels)
        assert_same(on_path("fused", function, logits, labels), reference, dtype)


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
    x: np.ndarray, labels: np.ndarray, **options: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`softmax_rows` for plain cross-entropy with class-index `labels` (-1: ignored)."""
    valid = labels >= 0
    mass = valid.astype(np.float64 if x.dtype == np.float64 else np.float32)
    y = np.where(valid, labels, 0)
    kind = _fused_cupy.CROSS_ENTROPY
    per_sample, lse, grad = _fused_cupy.softmax_rows(
        x, y, valid, kind=kind, at_label=mass, total=mass, **options
    )
    return per_sample, lse, grad


def sixteen_bit_inputs(x32: np.ndarray) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """float16 and bfloat16 versions of `x32` (bfloat16 twice: ml_dtypes, and uint16 bits)."""
    bfloat16 = x32.astype(ml_dtypes.bfloat16)
    return {
        "float16": (x32.astype(np.float16), {}),
        "bfloat16": (bfloat16, {}),
        "bfloat16-bits": (bfloat16.view(np.uint16), {"bfloat16_bits": True}),
    }


@pytest.mark.parametrize("input_dtype", ["float16", "bfloat16", "bfloat16-bits"])
def test_emulated_kernel_reads_16_bit_rows(
    emulated: dict[str, EmulatedKernel], input_dtype: str
) -> None:
    """16-bit rows give the numbers of the same values widened to float32, gradient float32."""
    x32 = (RNG.normal(size=(5, 300)) * 4).astype(np.float32)
    x32[1, ::5] = -np.inf
    labels = np.array([3, 2, -1, 299, 0])
    x, options = sixteen_bit_inputs(x32)[input_dtype]
    widened = x.view(ml_dtypes.bfloat16) if input_dtype == "bfloat16-bits" else x
    expected = class_index_rows(widened.astype(np.float32), labels)
    for got, want in zip(class_index_rows(x, labels, **options), expected, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert {"float16", "bfloat16", "float32", "float64"} <= _fused_cupy.NATIVE_INPUT_DTYPES


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
        _fused_cupy.input_dtype_name(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="uint16 array of bits"):
        _fused_cupy.input_dtype_name(np.zeros((2, 3), np.float16), bfloat16_bits=True)


# --- dispatch (no GPU needed) ---------------------------------------------------------------


def fake_cupy() -> types.ModuleType:
    return types.ModuleType("cupy")


@pytest.mark.parametrize(
    ("path", "expected"),
    [("auto", _fused_cupy), ("fused", _fused_cupy), ("reference", None)],
)
def test_cupy_arrays_dispatch_to_the_cuda_kernel(
    monkeypatch: pytest.MonkeyPatch, path: str, expected: Any
) -> None:
    monkeypatch.setenv(_engine_path.ENGINE_ENV, path)
    assert _engine_path.fused_kernels(fake_cupy()) is expected


def test_cupy_dispatch_needs_no_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_engine_path, "_import_fused", lambda: (None, "ImportError: no numba"))
    monkeypatch.setenv(_engine_path.ENGINE_ENV, "fused")
    assert _engine_path.fused_kernels(fake_cupy()) is _fused_cupy
    monkeypatch.setenv(_engine_path.ENGINE_ENV, "auto")
    assert _engine_path.fused_kernels(np) is None  # NumPy falls back to the reference quietly


def test_other_namespaces_use_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_engine_path.ENGINE_ENV, "fused")
    assert _engine_path.fused_kernels(types.ModuleType("array_api_strict")) is None


def test_kernel_interface_matches_the_numba_kernels() -> None:
    """The losses call either module the same way."""
    source = Path(_engine_path.__file__).with_name("_fused.py").read_text()
    for name in ("CROSS_ENTROPY", "FOCAL", "POLY1"):
        assert f"{name}: Final = {getattr(_fused_cupy, name)}" in source


@pytest.mark.parametrize(
    ("n_classes", "threads"),
    [(1, 32), (7, 32), (256, 32), (257, 64), (1000, 128), (32000, 1024), (128256, 1024)],
)
def test_block_size(n_classes: int, threads: int) -> None:
    assert _fused_cupy.block_size(n_classes) == threads


def test_importing_the_kernel_module_imports_no_cupy() -> None:
    code = (
        "import sys, service, service.engine, service.engine._fused_cupy, "
        "service.engine._engine_path; assert 'cupy' not in sys.modules, 'cupy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- on a GPU: CuPy fused vs CuPy reference vs NumPy reference -------------------------------


@pytest.fixture(
    params=[
        pytest.param(
            "cupy",
            marks=pytest.mark.skipif(CUPY is None, reason="CuPy with a CUDA device not found"),
        )
    ]
)
def cp(request: pytest.FixtureRequest) -> types.ModuleType:
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("function", "options"), MASKED, ids=MASKED_IDS)
def test_cupy_kernel_masked_classes(
    cp: types.ModuleType, function: Callable[..., LossResult], options: dict[str, Any], dtype: Any
) -> None:
    logits, labels = masked_logits(dtype, smoothing="label_smoothing" in options)
    fused = three_ways(cp, function, logits, labels, dtype, **options)
    assert np.all(host(fused.grads["logits"])[np.isneginf(logits)] == 0)


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


def test_cupy_kernel_float16_input_and_dispatch(
    cp: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    logits = RNG.normal(size=(6, C)).astype(np.float16)
    labels = RNG.integers(0, C, size=6)
    fused = three_ways(cp, cross_entropy, logits, labels, np.float32)
    assert fused.grads["logits"].dtype == np.float32
    calls: list[int] = []
    real = _fused_cupy.softmax_rows

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["kind"])
        return real(*args, **kwargs)

    monkeypatch.setattr(_fused_cupy, "softmax_rows", counting)
    monkeypatch.delenv(_engine_path.ENGINE_ENV, raising=False)
    x, y = cp.asarray(logits), cp.asarray(labels)
    for function in (cross_entropy, focal, poly1):
        function(x, y)
    cross_entropy(x, cp.asarray(np.eye(C, dtype=np.float32)[labels]))  # probabilities: reference
    assert calls == [_fused_cupy.CROSS_ENTROPY, _fused_cupy.FOCAL, _fused_cupy.POLY1]


def test_the_source_compiles_with_nvrtc() -> None:
    """NVRTC (CuPy's compiler) needs no GPU: where its library loads, compile to PTX."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # type: ignore[import-not-found]

        program = nvrtc.createProgram(_fused_cupy.SOURCE, "softmax_rows.cu", [], [])
    except Exception as error:  # no CuPy, or no NVRTC library
        pytest.skip(f"NVRTC not usable here: {type(error).__name__}: {error}")
    try:
        nvrtc.compileProgram(program, ["--std=c++14", "-arch=compute_80"])
    except Exception as error:
        pytest.fail(f"{error}\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program).decode()
    for name in _fused_cupy.KERNEL_NAMES.values():
        assert f".entry {name}(" in ptx
