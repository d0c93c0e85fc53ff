"""The fused CPU kernels (service/engine/_kernels/) against the reference array code.

Both paths must give the same losses, gradients, counts and errors: over weights x ignore_index x
label smoothing x z-loss x reductions x 2-D/3-D x float32/float64, focal and poly-1 options,
masked (-inf) classes, logits of 1e4, ignored and empty batches. Also: the polynomial `exp` against
NumPy's, the dispatch rules, and the gradient buffers the kernel writes into.

Long because it is the one grid both paths are checked over (tests/engine/test_fused_cuda.py and the
16-bit and few-class modules import from it).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service import engine
from service.buffers import ArrayPool
from service.engine import (
    LossResult,
    ReducedLoss,
    _engine_path,
    cross_entropy,
    focal,
    poly1,
    reduce_loss,
    shared_softmax,
    using_engine_path,
)
from service.engine._kernels import cpu, softmax
from service.engine._kernels.numerics import EXP_F32_FLUSH
from service.errors import InvalidInput
from tests.engine.fused_cases import (
    FAMILY,
    FAMILY_IDS,
    GRID,
    GRID_IDS,
    RNG,
    C,
    assert_same,
    batch,
    grid_options,
    masked_logits,
)
from tests.engine_helpers import pin_engine_path


def on_path(path: str, function: Callable[..., LossResult], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` on one engine path; an InvalidInput is returned, not raised."""
    with using_engine_path(path):
        try:
            return function(*args, **kwargs)
        except InvalidInput as error:
            return error


def both_paths(
    function: Callable[..., LossResult], *args: Any, reduction: str = "none", **kwargs: Any
) -> tuple[ReducedLoss, ReducedLoss]:
    results = []
    for path in ("reference", "fused"):
        result = on_path(path, function, *args, **kwargs)
        assert isinstance(result, LossResult), result
        results.append(reduce_loss(result, reduction))  # type: ignore[arg-type]
    return results[0], results[1]


@pytest.mark.parametrize(
    ("weight", "ignored", "smoothing", "z_loss", "reduction", "shape", "dtype"),
    GRID,
    ids=GRID_IDS,
)
def test_cross_entropy_paths_agree(
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
    reference, fused = both_paths(cross_entropy, logits, labels, reduction=reduction, **options)
    assert_same(reference, fused, dtype)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("function", "options"),
    FAMILY,
    ids=FAMILY_IDS,
)
def test_focal_and_poly1_paths_agree(
    function: Callable[..., LossResult], options: dict[str, Any], dtype: Any, reduction: str
) -> None:
    logits, labels = batch((4, 5), dtype, ignored=True)
    reference, fused = both_paths(function, logits, labels, reduction=reduction, **options)
    assert_same(reference, fused, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("function", "options"),
    [
        (cross_entropy, {}),
        (cross_entropy, {"z_loss": 1e-2}),
        (cross_entropy, {"label_smoothing": 0.1, "weight": np.array([1, 2, 1, 1, 1, 0, 3.0])}),
        (focal, {"gamma": 2.0}),
        (poly1, {"epsilon": 1.0}),
    ],
    ids=["ce", "z-loss", "smoothing-zero-weight-on-masked", "focal", "poly1"],
)
def test_masked_classes_contribute_nothing_on_both_paths(
    function: Callable[..., LossResult], options: dict[str, Any], dtype: Any
) -> None:
    logits, labels = masked_logits(dtype, smoothing="label_smoothing" in options)
    reference, fused = both_paths(function, logits, labels, **options)
    assert_same(reference, fused, dtype)
    grad = fused.grads["logits"]
    assert np.all(grad[np.isneginf(logits)] == 0)
    assert fused.per_sample is not None and np.all(np.isfinite(fused.per_sample))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("function", "options"),
    [
        (cross_entropy, {"label_smoothing": 0.1, "z_loss": 1e-4}),
        (focal, {"gamma": 2.0}),
        (poly1, {"epsilon": 1.0}),
    ],
    ids=["ce", "focal", "poly1"],
)
def test_logits_of_magnitude_1e4(
    function: Callable[..., LossResult], options: dict[str, Any], dtype: Any
) -> None:
    logits = (RNG.normal(size=(6, C)) * 1e4).astype(dtype)
    logits[0] = 1e4
    logits[0, 3] = 1e4 - 1  # the label term must survive the shift exactly
    labels = np.array([3, 1, 2, 0, 6, 5])
    reference, fused = both_paths(function, logits, labels, **options)
    assert_same(reference, fused, dtype)
    assert np.all(np.isfinite(fused.grads["logits"]))


@pytest.mark.parametrize("function", [cross_entropy, focal, poly1])
@pytest.mark.parametrize("shape", [(4,), (0,), (2, 0)], ids=["all-ignored", "empty", "empty-3d"])
def test_all_ignored_and_empty_batches(function: Callable[..., LossResult], shape: Any) -> None:
    logits = RNG.normal(size=(*shape, C)).astype(np.float32)
    labels = np.full(shape, -100)
    reference, fused = both_paths(function, logits, labels, reduction="mean")
    assert_same(reference, fused, np.float32)
    assert fused.loss == 0.0 and fused.n_valid == 0
    assert not np.any(fused.grads["logits"])


def test_float16_and_readonly_inputs() -> None:
    logits = RNG.normal(size=(6, C)).astype(np.float16)
    labels = RNG.integers(0, C, size=6)
    logits.flags.writeable = False
    labels.flags.writeable = False
    reference, fused = both_paths(cross_entropy, logits, labels)
    assert fused.grads["logits"].dtype == np.float32
    assert_same(reference, fused, np.float32)


def test_non_contiguous_logits() -> None:
    logits = np.asfortranarray(RNG.normal(size=(8, C)))[:, ::1]
    labels = RNG.integers(0, C, size=8)
    reference, fused = both_paths(cross_entropy, logits[::2], labels[::2], label_smoothing=0.1)
    assert_same(reference, fused, np.float64)


@pytest.mark.parametrize(
    ("function", "options"),
    [
        (cross_entropy, {"weight": np.arange(1.0, C + 1), "label_smoothing": 0.3, "z_loss": 0.1}),
        (focal, {"gamma": 2.0, "alpha": np.ones(C)}),
        (poly1, {}),
    ],
    ids=["ce", "focal", "poly1"],
)
def test_inputs_are_not_modified(function: Callable[..., LossResult], options: Any) -> None:
    logits, labels = batch((5,), np.float32, ignored=True)
    arrays = [logits, labels, *(v for v in options.values() if isinstance(v, np.ndarray))]
    saved = [array.copy() for array in arrays]
    on_path("fused", function, logits, labels, **options)
    for before, after in zip(saved, arrays, strict=True):
        np.testing.assert_array_equal(before, after)


def _neg_inf_label() -> tuple[np.ndarray, np.ndarray]:
    logits = np.zeros((3, C))
    logits[1, 2] = -np.inf
    return logits, np.array([0, 2, 1])


def _neg_inf_off_label() -> tuple[np.ndarray, np.ndarray]:
    logits = np.zeros((3, C))
    logits[0, 3] = -np.inf  # smoothing puts mass there
    return logits, np.array([0, 2, 1])


ERRORS: list[tuple[Callable[..., LossResult], Callable[[], tuple[Any, Any]], dict[str, Any]]] = [
    (cross_entropy, lambda: (np.zeros((3, C)), np.array([0, 7, 1])), {}),
    (cross_entropy, lambda: (np.zeros((3, C)), np.array([0, 1.5, 1])), {}),
    (cross_entropy, lambda: (np.zeros((3, C)), np.array([0, 1, 2])), {"weight": np.ones(3)}),
    (cross_entropy, lambda: (np.zeros((3, C)), np.array([0, 1, 2])), {"weight": -np.ones(C)}),
    (cross_entropy, lambda: (np.zeros((3, C)), np.array([0, 1, 2])), {"label_smoothing": 1.5}),
    (cross_entropy, _neg_inf_label, {}),
    (cross_entropy, _neg_inf_off_label, {"label_smoothing": 0.1}),
    (cross_entropy, lambda: (np.full((2, C), 1e200), np.array([0, -100])), {"z_loss": 1.0}),
    (cross_entropy, lambda: (np.full((2, C), 1e200), np.array([-100, -100])), {"z_loss": 1.0}),
    (
        cross_entropy,
        lambda: (np.full((2, C), 1e300), np.array([0, 1])),
        {"compute_dtype": "float32"},
    ),
    (focal, _neg_inf_label, {"gamma": 2.0}),
    (focal, lambda: (np.zeros((3, C)), np.array([0, 1, 2])), {"alpha": np.ones(2)}),
    (focal, lambda: (np.zeros((3, C)), np.array([0, 9, 2])), {"alpha": np.ones(2)}),
    (focal, lambda: (np.zeros((3, C)), np.array([0, 1, 2])), {"gamma": -1.0}),
    (focal, lambda: (np.zeros((3, C)), np.array([[0, 1, 2]])), {}),
    (poly1, _neg_inf_label, {}),
    (poly1, lambda: (np.zeros((3, C)), np.array([0, 1, 2])), {"epsilon": -2.0}),
]


@pytest.mark.parametrize(("function", "inputs", "options"), ERRORS)
def test_errors_are_identical(
    function: Callable[..., LossResult],
    inputs: Callable[[], tuple[Any, Any]],
    options: dict[str, Any],
) -> None:
    raised = [on_path(path, function, *inputs(), **options) for path in ("reference", "fused")]
    reference, fused = raised
    assert isinstance(reference, InvalidInput), reference
    assert isinstance(fused, InvalidInput), fused
    assert (fused.detail, fused.field) == (reference.detail, reference.field)


# --- the mean scale folded into the kernel ----------------------------------------------------

FOLDING = [
    (cross_entropy, {"weight": np.arange(1.0, C + 1), "label_smoothing": 0.2, "z_loss": 1e-3}),
    (cross_entropy, {}),
    (focal, {"gamma": 2.0, "alpha": np.linspace(0.5, 2.0, C)}),
    (poly1, {"epsilon": 1.0}),
    (engine.logit_adjusted_cross_entropy, {"class_counts": np.arange(1.0, C + 1)}),
]
FOLDING_IDS = ["ce-options", "ce", "focal", "poly1", "logit-adjusted"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("grad_reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("function", "options"), FOLDING, ids=FOLDING_IDS)
def test_folded_scale_gives_every_reduction_the_reference_result(
    function: Callable[..., LossResult],
    options: dict[str, Any],
    grad_reduction: str,
    reduction: str,
    dtype: Any,
) -> None:
    """Whatever scale the kernel folded in (`grad_reduction`), `reduce_loss` ends at the
    reference result of the reduction asked for."""
    logits, labels = batch((4, 5), dtype, ignored=True)
    expected = reduce_loss(on_path("reference", function, logits, labels, **options), reduction)  # type: ignore[arg-type]
    result = on_path("fused", function, logits, labels, grad_reduction=grad_reduction, **options)
    assert isinstance(result, LossResult), result
    assert_same(reduce_loss(result, reduction), expected, dtype)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("function", "options"), FOLDING, ids=FOLDING_IDS)
def test_kernel_writes_the_mean_gradient_itself(
    function: Callable[..., LossResult], options: dict[str, Any], dtype: Any
) -> None:
    """With `grad_reduction="mean"` the gradient leaves the kernel divided by the divisor, bit
    for bit what `reduce_loss` makes of the gradient of the sum, and `reduce_loss` leaves it
    alone; `sum` and `none` get the gradient of the sum."""
    logits, labels = batch((6, 3), dtype, ignored=True)
    mean = on_path("fused", function, logits, labels, grad_reduction="mean", **options)
    total = on_path("fused", function, logits, labels, grad_reduction="sum", **options)
    none = on_path("fused", function, logits, labels, grad_reduction="none", **options)
    assert mean.grad_scale == 1 / mean.divisor and total.grad_scale == none.grad_scale == 1
    folded = mean.grads["logits"].copy()
    np.testing.assert_array_equal(none.grads["logits"], total.grads["logits"])
    assert not np.array_equal(folded, total.grads["logits"])  # the scale is there
    reduced = reduce_loss(mean, "mean")
    np.testing.assert_array_equal(reduced.grads["logits"], folded)  # no second pass
    expected = reduce_loss(total, "mean")
    np.testing.assert_array_equal(folded, expected.grads["logits"])
    assert reduced.loss == expected.loss


@pytest.mark.parametrize("empty", ["zero", "nan"])
@pytest.mark.parametrize(
    ("labels", "weight"),
    [(np.full(4, -100), None), (np.zeros(0, dtype=np.int64), None), (np.arange(4), np.zeros(C))],
    ids=["all-ignored", "empty", "zero-weights"],
)
def test_folded_mean_with_nothing_to_average(
    labels: np.ndarray, weight: np.ndarray | None, empty: str
) -> None:
    logits = RNG.normal(size=(labels.shape[0], C))
    result = on_path("fused", cross_entropy, logits, labels, weight=weight, grad_reduction="mean")
    assert result.divisor == 0 and result.grad_scale == 1
    reduced = reduce_loss(result, "mean", empty=empty)  # type: ignore[arg-type]
    assert reduced.loss == 0 if empty == "zero" else math.isnan(reduced.loss)
    assert not np.any(reduced.grads["logits"])


# --- the polynomial exp ---------------------------------------------------------------------


def kernel_exp(t: np.ndarray) -> np.ndarray:
    """exp(t), t <= 0, by the kernel's own exp loop (the row shifted by 0)."""
    rows = t.reshape(1, -1)
    rows.flags.writeable = False  # the kernel's argument types: no new compile
    out = np.empty_like(rows)
    softmax._store_exp(rows, 0, t.dtype.type(0), out)
    return out.reshape(-1)


def test_polynomial_exp_is_within_one_float32_ulp() -> None:
    t = np.concatenate(
        [-np.linspace(0, 87, 1_000_001), -np.geomspace(1e-30, 87, 10_001), [0.0, -0.0]]
    ).astype(np.float32)
    exact = np.exp(t.astype(np.float64))
    relative = np.abs(kernel_exp(t).astype(np.float64) - exact) / exact
    # Measured 8.4e-8 over 2e7 random points; NumPy's own float32 exp is off by up to 2.0e-7.
    assert relative.max() < 1e-7
    assert kernel_exp(np.zeros(1, np.float32))[0] == 1.0  # the row's maximum: exactly 1


def test_polynomial_exp_flushes_below_its_threshold_to_zero() -> None:
    below = np.nextafter(EXP_F32_FLUSH, np.float32(-100))
    values = kernel_exp(np.array([EXP_F32_FLUSH, below, -100, -1e30, -np.inf], np.float32))
    assert values[0] > 0 and np.isclose(values[0], math.exp(-87.0), rtol=1e-6)
    assert np.all(values[1:] == 0)


def test_float64_rows_use_the_library_exp() -> None:
    t = -np.geomspace(1e-300, 700, 10_001)
    np.testing.assert_array_max_ulp(kernel_exp(t), np.exp(t), maxulp=1)  # C library vs NumPy


# --- dispatch ---------------------------------------------------------------------------------


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real = cpu.softmax_rows

    @functools.wraps(real)  # the same signature: `grad_scale` is still passed
    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["kind"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu, "softmax_rows", counting)
    yield calls


def test_auto_uses_the_kernel_for_class_indices_on_numpy(
    kernel_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    pin_engine_path("auto", monkeypatch)
    assert engine.engine_path() == "auto"
    logits, labels = batch((4,), np.float32, ignored=False)
    cross_entropy(logits, labels)
    focal(logits, labels)
    poly1(logits, labels)
    assert kernel_calls == [cpu.CROSS_ENTROPY, cpu.FOCAL, cpu.POLY1]


def test_reference_path_and_probability_targets_skip_the_kernel(
    kernel_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    logits, labels = batch((4,), np.float32, ignored=False)
    probabilities = np.eye(C, dtype=np.float32)[labels]
    pin_engine_path("fused", monkeypatch)
    cross_entropy(logits, probabilities)
    pin_engine_path("reference", monkeypatch)
    cross_entropy(logits, labels)
    focal(logits, labels)
    assert kernel_calls == []


def test_inside_shared_softmax_the_kernel_gives_the_same_numbers(
    kernel_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/v1/evaluate (a shared softmax) must equal /v1/losses/{name} bit for bit."""
    pin_engine_path("auto", monkeypatch)
    logits, labels = batch((6,), np.float64, ignored=True)
    losses: list[tuple[Callable[..., LossResult], dict[str, Any]]] = [
        (cross_entropy, {"label_smoothing": 0.1}),
        (focal, {}),
        (poly1, {}),
    ]
    alone = [reduce_loss(f(logits, labels, **o), "none") for f, o in losses]
    with shared_softmax(logits):
        shared = [reduce_loss(f(logits, labels, **o), "none") for f, o in losses]
    assert len(kernel_calls) == 6
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(a.per_sample, b.per_sample)
        np.testing.assert_array_equal(a.grads["logits"], b.grads["logits"])


def test_fused_without_numba_is_an_error_and_auto_falls_back(
    kernel_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_engine_path, "_import_fused", lambda: (None, "ImportError: no numba"))
    logits, labels = batch((4,), np.float32, ignored=False)
    pin_engine_path("fused", monkeypatch)
    with pytest.raises(RuntimeError, match="do not load: ImportError: no numba"):
        cross_entropy(logits, labels)
    with pytest.raises(RuntimeError, match="no numba"):
        engine.warm_up()
    pin_engine_path("auto", monkeypatch)
    assert engine.warm_up() is False
    assert reduce_loss(cross_entropy(logits, labels)).n_valid == 4
    assert kernel_calls == []


def test_unknown_engine_path_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    pin_engine_path("reference", monkeypatch)
    with pytest.raises(ValueError, match="LOSS_SERVICE_ENGINE='fast': expected one of"):
        engine.set_engine_path("fast")
    assert engine.engine_path() == "reference"


def test_the_engine_setting_is_checked_when_the_settings_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.config import Settings

    monkeypatch.setenv(_engine_path.ENGINE_ENV, " Reference ")
    assert Settings().engine == "reference"
    monkeypatch.setenv(_engine_path.ENGINE_ENV, "fast")
    with pytest.raises(ValueError, match="LOSS_SERVICE_ENGINE='fast'"):
        Settings()


def test_using_engine_path_restores_the_previous_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pin_engine_path("fused", monkeypatch)
    with engine.using_engine_path("reference"):
        assert engine.engine_path() == "reference"
    assert engine.engine_path() == "fused"


@pytest.mark.parametrize(("path", "expected"), [("auto", True), ("reference", False)])
def test_warm_up(monkeypatch: pytest.MonkeyPatch, path: str, expected: bool) -> None:
    pin_engine_path(path, monkeypatch)
    assert engine.warm_up() is expected


# --- gradient buffers -------------------------------------------------------------------------

MIB = 1 << 20


def test_pool_hands_a_buffer_out_again_only_once_it_is_free() -> None:
    pool = ArrayPool(min_bytes=MIB, max_bytes=8 * MIB)
    first = pool.empty((MIB // 4,), np.dtype(np.float32))
    address = first.__array_interface__["data"][0]
    second = pool.empty((MIB // 4,), np.dtype(np.float32))
    assert second.__array_interface__["data"][0] != address  # `first` is still held
    view = first.reshape(2, -1)[1:]
    del first
    third = pool.empty((MIB // 8,), np.dtype(np.float64))
    assert not np.shares_memory(third, view)  # a view still refers to it
    del view, second, third
    again = pool.empty((2, MIB // 8), np.dtype(np.float32))  # same bytes, any shape and dtype
    assert again.__array_interface__["data"][0] in {
        b.__array_interface__["data"][0] for b in pool._buffers
    }
    assert pool.nbytes == 3 * MIB
    del again


def test_pool_stays_under_its_cap_and_ignores_small_arrays() -> None:
    pool = ArrayPool(min_bytes=MIB, max_bytes=3 * MIB)
    small = pool.empty((16,), np.dtype(np.float32))
    assert small.base is None and pool.nbytes == 0
    held = [pool.empty((MIB,), np.dtype(np.uint8)) for _ in range(4)]
    assert pool.nbytes == 3 * MIB  # the fourth was not kept
    del held
    big = pool.empty((2 * MIB,), np.dtype(np.uint8))  # drops idle buffers to make room
    assert pool.nbytes == 3 * MIB and big.nbytes == 2 * MIB


def test_a_gradient_still_held_is_never_overwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    pin_engine_path("fused", monkeypatch)
    logits, labels = batch((1 << 17,), np.float32, ignored=False)  # a 3.5 MiB gradient
    first = reduce_loss(cross_entropy(logits, labels), "sum").grads["logits"]
    kept = first.copy()
    second = reduce_loss(cross_entropy(logits * 2, labels), "sum").grads["logits"]
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)
    address = second.__array_interface__["data"][0]
    del second
    third = reduce_loss(cross_entropy(logits, labels), "sum").grads["logits"]
    assert third.__array_interface__["data"][0] == address  # reused once free
    np.testing.assert_array_equal(third, kept)


def test_concurrent_calls_keep_their_own_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The service runs requests on a thread pool: kernel launches take turns, and a gradient
    buffer goes to one caller at a time."""
    pin_engine_path("fused", monkeypatch)
    inputs = [batch((1 << 16,), np.float32, ignored=True) for _ in range(4)]  # 1.75 MiB each
    expected = [reduce_loss(cross_entropy(x, y), "sum").grads["logits"].copy() for x, y in inputs]

    def work(index: int) -> bool:
        x, y = inputs[index % 4]
        grads = [reduce_loss(cross_entropy(x, y), "sum").grads["logits"] for _ in range(3)]
        return all(np.array_equal(g, expected[index % 4]) for g in grads)

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(work, range(16)))


def test_the_catalogue_passes_grad_reduction_to_every_loss_that_takes_it() -> None:
    """The routes fold `mean` into the kernels only for losses flagged in the catalogue."""
    from service.core.registry import BY_NAME

    for spec in BY_NAME.values():
        takes = "grad_reduction" in inspect.signature(spec.function).parameters
        assert spec.takes_grad_reduction == takes, spec.name
