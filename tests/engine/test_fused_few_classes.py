"""Rows of few classes (the few-class kernel up to `FEW_CLASSES`, the row kernels above) against
the reference array code, and the serial and parallel forms of the kernels against each other.

Every class count from 1 to 33 crosses the few-class bound: ignore_index, class weights, label
smoothing, z-loss, focal (with alpha) and poly-1, in every native dtype.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numba
import numpy as np
import pytest

from service.engine import LossResult, cross_entropy, focal, poly1
from service.engine._kernels import class_index_rows, cpu, cuda, few_classes, softmax, two_classes
from service.engine._kernels.interface import SoftmaxKernels
from service.engine._kernels.numerics import log_row_sum
from service.errors import InvalidInput
from tests.engine.fused_cases import TOLERANCES, assert_same
from tests.engine.test_fused import both_paths

RNG = np.random.default_rng(20261202)
DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
DTYPE_IDS = ["float32", "float64", "float16", "bfloat16"]


def rows(n_classes: int, dtype: Any, n_rows: int = 37) -> tuple[np.ndarray, np.ndarray]:
    logits = (RNG.normal(size=(n_rows, n_classes)) * 3).astype(dtype)
    labels = RNG.integers(0, n_classes, size=n_rows)
    labels[::4] = -100
    return logits, labels


def options(kind: str, n_classes: int) -> tuple[Callable[..., LossResult], dict[str, Any]]:
    weights = RNG.uniform(0.1, 3.0, size=n_classes)
    weights[::3] = 0.0  # a zero weight too
    table: dict[str, tuple[Callable[..., LossResult], dict[str, Any]]] = {
        "plain": (cross_entropy, {}),
        "weighted": (cross_entropy, {"weight": weights}),
        "smoothing": (cross_entropy, {"label_smoothing": 0.2, "weight": weights}),
        "z-loss": (cross_entropy, {"z_loss": 1e-2}),
        "focal": (focal, {"gamma": 2.0, "alpha": weights}),
        "poly1": (poly1, {"epsilon": 1.5}),
    }
    return table[kind]


def frozen(array: np.ndarray) -> np.ndarray:
    """A read-only copy: the argument type the kernels are compiled for."""
    copy = array.copy()
    copy.flags.writeable = False
    return copy


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ["plain", "weighted", "smoothing", "z-loss", "focal", "poly1"])
@pytest.mark.parametrize("n_classes", range(1, 34))
def test_few_classes_agree_with_the_reference(n_classes: int, kind: str, dtype: Any) -> None:
    logits, labels = rows(n_classes, dtype)
    function, kwargs = options(kind, n_classes)
    reference, fused = both_paths(function, logits, labels, reduction="mean", **kwargs)
    compute = np.float64 if dtype is np.float64 else np.float32  # 16-bit rows: float32
    assert_same(reference, fused, compute)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("n_classes", range(1, few_classes.FEW_CLASSES + 1))
def test_few_class_kernel_against_the_row_kernel(n_classes: int, dtype: Any) -> None:
    """The row kernel's numbers but for rounding: the row sums are added in another order (class
    order, not the row kernel's vector lanes) and their log is `log_row_sum`, not `log1p`."""
    x = (RNG.normal(size=(300, n_classes)) * 4).astype(dtype)
    x[5] = -np.inf  # an all -inf row: log_sum -inf, as the row kernel
    x[7, 0] = -np.inf
    x.flags.writeable = False
    y = RNG.integers(0, n_classes, size=300)
    y[5] = 0
    valid = RNG.random(300) > 0.1
    valid[5] = False
    mass = frozen(RNG.uniform(0.5, 2.0, size=300).astype(dtype))
    total = frozen(mass + dtype(0.25))
    empty = frozen(np.empty(0, dtype))
    for spread, z_loss in ((empty, 0.0), (frozen(RNG.uniform(0.0, 0.1, size=n_classes)), 1e-3)):
        spread = frozen(spread.astype(dtype))
        few = cpu.softmax_rows(
            x, y, valid, kind=cpu.CROSS_ENTROPY, at_label=mass, total=total,
            spread=spread if spread.size else None, z_loss=z_loss, grad_scale=0.5,
        )  # fmt: skip
        per_sample, lse, grad = np.zeros(300), np.zeros(300), np.empty_like(x)
        softmax.softmax_rows_serial(
            x, y, valid, cpu.CROSS_ENTROPY, mass, total, spread, z_loss, 0.0, empty, 0.5,
            per_sample, lse, grad,
        )  # fmt: skip
        tight = 4 * float(np.finfo(dtype).eps)
        np.testing.assert_allclose(few[2][valid], grad[valid], rtol=tight, atol=tight)
        np.testing.assert_allclose(few[0], per_sample, rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(few[1], lse, rtol=1e-15, atol=1e-15)  # -inf too


@pytest.mark.parametrize("n_classes", few_classes.PAIRED_CLASSES)
def test_paired_class_counts_move_pairs_and_unaligned_rows_as_they_are(n_classes: int) -> None:
    """float32 rows of `PAIRED_CLASSES` move through uint64 views where they are 8-byte
    aligned, and element by element where they are not: the same bits either way."""
    x, y = rows(n_classes, np.float32, n_rows=few_classes.BLOCK_ROWS + 77)  # two blocks
    valid = y != -100
    y = np.where(valid, y, 0)
    spare = np.empty(x.size + 2, dtype=np.float32)
    start = 1 if spare.ctypes.data % 8 == 0 else 0
    unaligned = spare[start : start + x.size].reshape(x.shape)
    unaligned[:] = x
    assert unaligned.ctypes.data % 8 == 4
    grad = np.empty(x.size, dtype=np.float32)
    assert all(view.size == x.size // 2 for view in cpu._pair_views(x.reshape(-1), grad, n_classes))
    assert cpu._pair_views(unaligned.reshape(-1), grad, n_classes)[0].size == 0
    mass = valid.astype(np.float32)
    results = [
        cpu.softmax_rows(rows_, y, valid, kind=cpu.CROSS_ENTROPY, at_label=mass, total=mass)
        for rows_ in (x, unaligned)
    ]
    for paired, one_by_one in zip(*results, strict=True):
        np.testing.assert_array_equal(paired, one_by_one)


@pytest.mark.parametrize("n_classes", [few_classes.FEW_CLASSES + 1, 33, 1000, 5000])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_serial_and_parallel_kernels_give_the_same_bits(n_classes: int, dtype: Any) -> None:
    x, y = rows(n_classes, dtype, n_rows=64)
    valid = y != -100
    y = np.where(valid, y, 0)
    compute = np.float64 if dtype is np.float64 else np.float32
    ones = np.ones(64, compute)
    cases: list[tuple[int, dict[str, Any]]] = [
        (
            cpu.CROSS_ENTROPY,
            {"at_label": ones, "total": np.full(64, 1.5, compute), "z_loss": 1e-3,
             "spread": np.full(n_classes, 0.01, compute)},
        ),
        (cpu.FOCAL, {"param": 2.0, "alpha": np.linspace(0, 1, n_classes).astype(compute)}),
        (cpu.POLY1, {"param": 1.0}),
    ]  # fmt: skip
    for kind, extra in cases:
        serial = cpu.softmax_rows(x, y, valid, kind=kind, grad_scale=0.25, parallel=False, **extra)
        parallel = cpu.softmax_rows(x, y, valid, kind=kind, grad_scale=0.25, parallel=True, **extra)
        for a, b in zip(serial[:2], parallel[:2], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(serial[2][valid], parallel[2][valid])
    targets = (RNG.random(x.shape) < 0.3).astype(x.dtype)
    binary_cases: list[dict[str, Any]] = [
        {},
        {"kind": cpu.SIGMOID_FOCAL, "gamma": 2.0, "alpha": 0.25},
    ]
    for binary in binary_cases:
        serial_b = cpu.binary_rows(x, targets, None, None, parallel=False, **binary)
        parallel_b = cpu.binary_rows(x, targets, None, None, parallel=True, **binary)
        for one, other in zip(serial_b, parallel_b, strict=True):
            np.testing.assert_array_equal(one, other)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n_classes", [1, 3, 10, 12])  # 10, 12: paired moves
def test_few_class_calls_in_spans_on_threads_give_the_same_bits(
    n_classes: int, dtype: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    n_rows = 5 * few_classes.BLOCK_ROWS + 77  # six blocks, the last one short: three spans of two
    x, y = rows(n_classes, dtype, n_rows=n_rows)
    valid = y != -100
    y = np.where(valid, y, 0)
    compute = np.float64 if dtype is np.float64 else np.float32
    cases: list[tuple[int, dict[str, Any]]] = [
        (
            cpu.CROSS_ENTROPY,
            {"at_label": np.ones(n_rows, compute), "total": np.full(n_rows, 1.5, compute),
             "z_loss": 1e-3, "spread": np.full(n_classes, 0.01, compute)},
        ),
        (cpu.FOCAL, {"param": 2.0, "alpha": np.linspace(0, 1, n_classes).astype(compute)}),
    ]  # fmt: skip
    serial = [
        cpu.softmax_rows(x, y, valid, kind=kind, grad_scale=0.25, parallel=False, **extra)
        for kind, extra in cases
    ]
    threads: list[str] = []  # of each span
    compiled_kernel = few_classes.few_class_kernel

    def recording(count: int) -> Callable[..., None]:
        def run(*arguments: Any) -> None:
            threads.append(threading.current_thread().name)
            compiled_kernel(count)(*arguments)

        return run

    monkeypatch.setattr("service.engine._kernels.cpu.few_class_kernel", recording)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 3)
    for (kind, extra), one_span in zip(cases, serial, strict=True):
        threads.clear()
        spans = cpu.softmax_rows(x, y, valid, kind=kind, grad_scale=0.25, parallel=True, **extra)
        assert len(threads) == 3 and threads.count("MainThread") == 1
        for a, b in zip(one_span[:2], spans[:2], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(one_span[2][valid], spans[2][valid])


def test_few_class_calls_below_their_size_bound_run_in_one_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pieces: list[int] = []
    real = cpu._few_class_rows

    def recording(arguments: tuple[Any, ...], count: int) -> None:
        pieces.append(count)
        real(arguments, count)

    monkeypatch.setattr(cpu, "_few_class_rows", recording)
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    n_classes = 10
    for n_rows in (1, cpu.FEW_CLASS_PARALLEL_MIN_ELEMENTS // n_classes + 1):
        x = np.zeros((n_rows, n_classes), np.float32)
        ones = np.ones(n_rows, np.float32)
        labels, valid = np.zeros(n_rows, np.int64), np.ones(n_rows, bool)
        cpu.softmax_rows(x, labels, valid, kind=cpu.CROSS_ENTROPY, at_label=ones, total=ones)
    assert pieces == [1, 2]


@pytest.mark.parametrize(("n_rows", "pieces"), [(1, 4), (512, 2), (513, 2), (5000, 3), (4096, 1)])
def test_block_spans_cover_the_rows_in_whole_blocks(n_rows: int, pieces: int) -> None:
    spans = cpu._block_spans(n_rows, pieces)
    assert 1 <= len(spans) <= pieces
    assert [s.start for s in spans] == [0, *(s.stop for s in spans[:-1])]
    assert spans[-1].stop == n_rows
    assert all(s.start % few_classes.BLOCK_ROWS == 0 for s in spans)


def test_calls_below_the_size_bound_run_serially(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[str] = []

    def recording(name: str) -> Callable[..., None]:
        real = getattr(cpu, name)

        def launch(*arguments: Any) -> None:
            launched.append(name)
            real(*arguments)

        return launch

    for name in ("softmax_rows_serial", "softmax_rows_parallel"):
        monkeypatch.setattr(cpu, name, recording(name))
    n_classes = few_classes.FEW_CLASSES + 1
    for n_rows in (1, cpu.PARALLEL_MIN_ELEMENTS // n_classes + 1):
        x = np.zeros((n_rows, n_classes), np.float32)
        ones = np.ones(n_rows, np.float32)
        labels, valid = np.zeros(n_rows, np.int64), np.ones(n_rows, bool)
        cpu.softmax_rows(x, labels, valid, kind=cpu.CROSS_ENTROPY, at_label=ones, total=ones)
    assert launched == ["softmax_rows_serial", "softmax_rows_parallel"]


def test_both_kernel_modules_implement_the_interface() -> None:
    modules: list[SoftmaxKernels] = [cpu, cuda]  # checked by mypy
    for module in modules:
        assert (module.CROSS_ENTROPY, module.FOCAL, module.POLY1) == (0, 1, 2)
        assert module.COMPUTE_DTYPES is cpu.COMPUTE_DTYPES
    assert set(TOLERANCES) == {np.float32, np.float64}


# The losses `class_index_rows` takes: the kernel's kind and parameter, the engine function.
ONE_CALL_LOSSES: dict[str, tuple[int, float, Callable[..., LossResult], dict[str, float]]] = {
    "cross-entropy": (cpu.CROSS_ENTROPY, 0.0, cross_entropy, {}),
    "focal": (cpu.FOCAL, 2.0, focal, {"gamma": 2.0}),
    "poly1": (cpu.POLY1, 1.5, poly1, {"epsilon": 1.5}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("ignored", [False, True], ids=["all-valid", "some-ignored"])
@pytest.mark.parametrize("mean", [True, False], ids=["mean", "sum"])
@pytest.mark.parametrize("loss", list(ONE_CALL_LOSSES))
@pytest.mark.parametrize("n_classes", [2, 7])  # 2: plain cross-entropy's own kernel
def test_class_index_rows_give_the_general_paths_numbers(
    n_classes: int, loss: str, dtype: Any, ignored: bool, mean: bool
) -> None:
    """The one-call path (`cpu.class_index_rows`) against the kernel with the general path's
    targets: the same numbers (`assert_general_paths_numbers`)."""
    kind, param, _, _ = ONE_CALL_LOSSES[loss]
    x, y = rows(n_classes, dtype, n_rows=301)
    if not ignored:
        y = np.where(y == -100, 1, y)
    found = cpu.class_index_rows(x, y, -100, mean=mean, kind=kind, param=param)
    assert found is not None
    assert_general_paths_numbers(x, y, -100, found, kind=kind, param=param, mean=mean)


def assert_general_paths_numbers(
    x: np.ndarray,
    y: np.ndarray,
    ignore_index: int,
    found: tuple[np.ndarray, np.ndarray, int, float, float],
    *,
    kind: int = cpu.CROSS_ENTROPY,
    param: float = 0.0,
    mean: bool = True,
) -> None:
    """`found`, a result of `cpu.class_index_rows`, has the bits of the general path's kernel
    call (`softmax_rows` with its targets) but for the order of the sum of the losses; plain
    cross-entropy over two float32-computed classes (`two_classes`) is within 3 ulp instead:
    the log of its row sum is float32's `log1p` of the other exponential (no 1 + e to round), the
    general path's the float64 log of the float64 sum, and its gradient factor 1 / (1 + e) a
    float32 division."""
    per_sample, grad, n_valid, total, scale = found
    valid = y != ignore_index
    assert n_valid == int(valid.sum())
    assert scale == (1.0 / n_valid if mean and n_valid else 1.0)
    compute = np.float64 if x.dtype == np.float64 else np.float32
    mass = valid.astype(compute)
    general = cpu.softmax_rows(
        x, np.where(valid, y, 0), valid, kind=kind, param=param, at_label=mass, total=mass,
        grad_scale=scale,
    )  # fmt: skip
    expected_losses = general[0].astype(compute)
    if x.shape[1] == 2 and kind == cpu.CROSS_ENTROPY and compute == np.float32:
        # The general path's float64 sum 1 + e rounds away e below 2^-53 (its loss 0): atol.
        np.testing.assert_allclose(
            per_sample, expected_losses.astype(np.float64), rtol=6 * 2.0**-24, atol=2.0**-52
        )
        # Both gradients subtract the one-hot from factors within an ulp of 1 of each other.
        np.testing.assert_allclose(grad[valid], general[2][valid], rtol=0, atol=2.0**-23 * scale)
    else:
        np.testing.assert_array_equal(per_sample, expected_losses)
        np.testing.assert_array_equal(grad[valid], general[2][valid])
    assert not grad[~valid].any()  # ignored rows: a zero gradient
    assert total == pytest.approx(float(per_sample.sum(dtype=np.float64)), rel=1e-13)


INF, NAN = np.inf, np.nan
# Rows of two classes at the edges of the two-class kernel, each with a counted label: whether
# `class_index_rows` takes it (finite losses) or leaves it to the general path.
TWO_CLASS_EDGES: dict[str, tuple[list[float], int, bool]] = {
    "tie": ([1.5, 1.5], 1, True),
    "signed zeros": ([-0.0, 0.0], 0, True),
    "other class at -inf": ([-INF, 2.0], 1, True),
    "label class at -inf": ([-INF, 2.0], 0, False),
    "both at -inf": ([-INF, -INF], 0, False),
    "+inf": ([INF, 1.0], 0, False),
    "+inf at the other class": ([INF, 1.0], 1, False),
    "NaN": ([NAN, 1.0], 1, False),
    "far apart": ([-90.0, 90.0], 0, True),  # e under float32's normal range: flushed to 0
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("edge", list(TWO_CLASS_EDGES))
def test_two_class_rows_at_the_edges(edge: str, dtype: Any) -> None:
    """Among ordinary rows, one edge row counted and one ignored: the two-class kernel gives the
    general path's numbers where the losses are finite, and leaves the call to it otherwise (a
    non-finite row that is ignored changes nothing)."""
    logits, label, taken = TWO_CLASS_EDGES[edge]
    x, y = rows(2, dtype, n_rows=41)
    x[5], y[5] = np.array(logits, dtype=dtype), label
    x[6], y[6] = np.array(logits, dtype=dtype), -100
    found = cpu.class_index_rows(x, y, -100, mean=True)
    assert (found is not None) == taken
    if found is not None:
        assert_general_paths_numbers(x, y, -100, found)
    ignored_only = np.where(np.arange(41) == 5, -100, y)
    found = cpu.class_index_rows(x, ignored_only, -100, mean=True)
    assert found is not None
    assert_general_paths_numbers(x, ignored_only, -100, found)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_two_class_losses_within_three_ulp_of_the_block_kernels(dtype: Any) -> None:
    """The documented bound of the float32 two-class losses: within 3 ulp of the general path's
    wherever the loss is above 1e-6, over logit gaps from 1e-3 to 1e3 (below 1e-6 the general
    path's float64 sum 1 + e is the coarser of the two: `assert_general_paths_numbers`)."""
    gaps = np.concatenate([RNG.normal(size=(4000, 2)) * s for s in (1e-3, 0.3, 3.0, 30.0, 1e3)])
    x, y = gaps.astype(dtype), RNG.integers(0, 2, size=len(gaps))
    found = cpu.class_index_rows(x, y, -100, mean=False)
    assert found is not None
    ones = np.ones(len(y), dtype=np.float32)
    general = cpu.softmax_rows(
        x, y, ones.astype(bool), kind=cpu.CROSS_ENTROPY, at_label=ones, total=ones
    )[0].astype(np.float32)
    above = general > 1e-6
    assert above.sum() > len(y) // 2
    np.testing.assert_array_max_ulp(found[0][above], general[above], maxulp=3)


@pytest.mark.parametrize("ignore_index", [0, 1])
def test_two_class_rows_with_a_class_as_ignore_index(ignore_index: int) -> None:
    x, y = rows(2, np.float32, n_rows=64)
    y = np.where(y == -100, 1 - ignore_index, y)
    found = cpu.class_index_rows(x, y, ignore_index, mean=False)
    assert found is not None
    assert_general_paths_numbers(x, y, ignore_index, found, mean=False)


def test_class_index_rows_leave_the_rest_to_the_general_path() -> None:
    x, y = rows(5, np.float32)
    y = np.where(y == -100, 0, y)
    assert cpu.class_index_rows(rows(few_classes.FEW_CLASSES + 1, np.float32)[0], y, -100,
                                mean=True) is None  # fmt: skip
    outside = y.copy()
    outside[3] = 5
    assert cpu.class_index_rows(x, outside, -100, mean=True) is None
    infinite = x.copy()
    infinite[2, y[2]] = -np.inf  # the label's class at -inf: an infinite loss
    assert cpu.class_index_rows(infinite, y, -100, mean=True) is None
    with pytest.raises(InvalidInput, match="label 5 at index"):
        cross_entropy(x, outside)
    with pytest.raises(InvalidInput, match="not finite"):
        cross_entropy(infinite, y)


def one_call_results(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each call of `cpu.class_index_rows` from now on took the call (not None)."""
    calls: list[bool] = []
    real = cpu.class_index_rows

    def recording(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        calls.append(found is not None)
        return found

    monkeypatch.setattr(cpu, "class_index_rows", recording)
    return calls


def test_plain_cross_entropy_takes_the_one_call_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = one_call_results(monkeypatch)
    x, y = rows(5, np.float32)
    both_paths(cross_entropy, x, y, reduction="mean")
    assert calls == [True]  # the fused path's call; the reference's makes none
    both_paths(cross_entropy, x, y, reduction="mean", weight=np.ones(5))
    unsigned = np.where(y == -100, 0, y).astype(np.uint64)  # may not fit int64
    both_paths(cross_entropy, x, unsigned, reduction="mean")
    assert calls == [True]


def test_the_warm_up_covers_json_and_float32_rows_of_few_classes() -> None:
    """JSON numbers arrive as float64 rows, binary bodies mostly as float32: after the warm-up
    neither compiles anything on its first request (seconds per class count otherwise)."""
    cpu.warm_up()
    dispatchers = [few_classes.few_class_kernel(c) for c in range(1, few_classes.FEW_CLASSES + 1)]
    dispatchers += [class_index_rows.count_class_indices, class_index_rows.mask_ignored]
    dispatchers += [class_index_rows.count_and_narrow_class_indices]
    dispatchers += [class_index_rows.class_index_total, two_classes.two_class_rows]
    before = [len(d.signatures) for d in dispatchers]
    for dtype in (np.float32, np.float64):
        for n_classes in range(1, few_classes.FEW_CLASSES + 1):
            x, y = rows(n_classes, dtype)
            all_valid = np.where(y == -100, 0, y)
            for labels in (all_valid, y, y.astype(np.int32)):
                assert cpu.class_index_rows(x, labels, -100, mean=True) is not None
    assert [len(d.signatures) for d in dispatchers] == before


@numba.njit
def _log_row_sums(sums: np.ndarray) -> np.ndarray:
    out = np.empty_like(sums)
    for i in range(sums.shape[0]):
        out[i] = log_row_sum(sums[i])
    return out


def test_log_row_sum_is_within_one_ulp_of_the_c_librarys_log1p() -> None:
    """The few-class kernel's log of its float64 row sums (s >= 1) against `math.log1p(s - 1)`:
    sums of a few classes, sums just above 1 (a confident row), both sides of the reduction's
    bound sqrt(2), powers of two and a huge sum."""
    rng = np.random.default_rng(20261203)
    sums = np.concatenate(
        [
            1.0 + rng.random(100_000) * 12.0,
            1.0 + 2.0 ** -rng.uniform(1.0, 52.0, 20_000),
            rng.uniform(1.40, 1.43, 10_000),
            2.0 ** rng.integers(0, 60, 200).astype(np.float64),
            [1.0, np.nextafter(1.0, 2.0), math.sqrt(2.0), np.nextafter(math.sqrt(2.0), 0.0), 1e300],
        ]
    )
    ours = _log_row_sums(sums)
    reference = np.array([math.log1p(s - 1.0) for s in sums])  # s - 1: exact below 2^53
    assert np.all(np.abs(ours - reference) <= np.spacing(reference))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("loss", ["focal", "poly1"])
def test_focal_and_poly1_take_the_one_call_path_with_the_reference_numbers(
    loss: str, dtype: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Focal without alpha and poly-1 go through `class_index_rows` too (its bits:
    `test_class_index_rows_give_the_general_paths_numbers`), with the reference array code's
    numbers; focal with alpha keeps the general path."""
    calls = one_call_results(monkeypatch)
    _, _, function, option = ONE_CALL_LOSSES[loss]
    x, y = rows(6, dtype, n_rows=301)
    reference, fused = both_paths(function, x, y, reduction="mean", **option)
    assert calls == [True]  # the fused path's call; the reference's makes none
    assert_same(reference, fused, np.float64 if dtype is np.float64 else np.float32)
    if loss == "focal":
        both_paths(focal, x, y, reduction="mean", alpha=np.ones(6), **option)
        assert calls == [True]
