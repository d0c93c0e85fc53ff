"""16-bit logits (float16, bfloat16) in the fused kernels, read as they are (`_fused`'s
`NATIVE_INPUT_DTYPES`) instead of widened to float32 first.

Widening is exact, so the kernel on 16-bit rows must give bit for bit what it gives on the same
rows widened to float32; and, like any float32 rows, the reference's numbers within float32
tolerances. Every one of the 65536 bit patterns of each format must widen to its float32 value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from service.engine import (
    LossResult,
    binary_cross_entropy,
    cross_entropy,
    focal,
    poly1,
    reduce_loss,
    sigmoid_focal,
)
from service.engine._kernels import binary, cpu, few_classes
from tests.engine.fused_cases import C, assert_same
from tests.engine.test_fused import FOLDING, FOLDING_IDS, on_path

RNG = np.random.default_rng(16)
HALF = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
HALF_IDS = ["float16", "bfloat16"]


def half_rows(dtype: np.dtype, shape: tuple[int, ...] = (6, 4)) -> np.ndarray:
    """Logits of `dtype` [*shape, C] with its extremes: its largest finite value, subnormals,
    -0 and a masked (-inf) class no label names."""
    logits = (RNG.normal(size=(*shape, C)) * 3).astype(dtype)
    flat = logits.reshape(-1, C)
    info = ml_dtypes.finfo(dtype)  # type: ignore[no-untyped-call]
    flat[0, :3] = [info.max, info.smallest_subnormal, -info.smallest_subnormal]
    flat[1, :2] = [-0.0, info.smallest_normal]
    flat[2:, 5] = -np.inf
    return logits


def labels_for(shape: tuple[int, ...] = (6, 4)) -> np.ndarray:
    labels = RNG.integers(0, 5, size=shape)  # never class 5, the masked one
    labels.reshape(-1)[::5] = -100
    return labels


@pytest.fixture
def kernel_inputs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The dtype names of the rows each kernel call receives."""
    seen: list[str] = []
    for name in ("softmax_rows", "binary_rows"):
        real = getattr(cpu, name)

        def recording(x: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.append(x.dtype.name)
            return _real(x, *args, **kwargs)

        monkeypatch.setattr(cpu, name, recording)
    yield seen


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
# logit adjustment adds a float32 prior to the logits before its cross-entropy: not 16-bit rows
@pytest.mark.parametrize(("function", "options"), FOLDING[:4], ids=FOLDING_IDS[:4])
def test_16_bit_rows_give_the_bits_of_their_float32_widening(
    function: Callable[..., LossResult],
    options: dict[str, Any],
    dtype: np.dtype,
    reduction: str,
    kernel_inputs: list[str],
) -> None:
    logits, labels = half_rows(dtype), labels_for()
    if "label_smoothing" in options:  # smoothing spreads mass over the masked class unless
        options = {**options, "weight": options["weight"] * (np.arange(C) != 5)}  # weight 0
    run = {"grad_reduction": reduction, **options}
    native = reduce_loss(on_path("fused", function, logits, labels, **run), reduction)  # type: ignore[arg-type]
    widened = reduce_loss(
        on_path("fused", function, logits.astype(np.float32), labels, **run),
        reduction,  # type: ignore[arg-type]
    )
    assert kernel_inputs == [dtype.name, "float32"]  # no float32 copy before the kernel
    assert native.loss == widened.loss
    assert native.grads["logits"].dtype == np.float32
    np.testing.assert_array_equal(native.grads["logits"], widened.grads["logits"])
    if reduction == "none":
        np.testing.assert_array_equal(native.per_sample, widened.per_sample)
    reference = on_path("reference", function, logits, labels, **options)
    assert_same(native, reduce_loss(reference, reduction), np.float32)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("options", [{}, {"pos_weight": "last-axis"}, {"weight": "full"}])
def test_16_bit_binary_cross_entropy(
    dtype: np.dtype, options: dict[str, str], kernel_inputs: list[str]
) -> None:
    logits = half_rows(dtype, (3, 2))
    targets = (RNG.uniform(size=logits.shape) < 0.5).astype(dtype)
    targets[np.isneginf(logits)] = 0
    shapes = {"last-axis": (C,), "full": logits.shape}
    factors = {k: RNG.uniform(0, 2, size=shapes[v]).astype(np.float32) for k, v in options.items()}
    native = on_path("fused", binary_cross_entropy, logits, targets, **factors)
    widened = on_path(
        "fused", binary_cross_entropy, logits.astype(np.float32), targets.astype(np.float32),
        **factors,
    )  # fmt: skip
    assert kernel_inputs == [dtype.name, "float32"]
    np.testing.assert_array_equal(native.per_sample, widened.per_sample)
    np.testing.assert_array_equal(native.grads["logits"], widened.grads["logits"])
    reference = on_path("reference", binary_cross_entropy, logits, targets, **factors)
    assert_same(reduce_loss(native, "none"), reduce_loss(reference, "none"), np.float32)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_16_bit_sigmoid_focal(dtype: np.dtype, kernel_inputs: list[str]) -> None:
    logits = half_rows(dtype, (3, 2))
    logits.reshape(-1)[0] = 100  # not the largest bfloat16: the reference's ce * r overflows
    targets = (RNG.uniform(size=logits.shape) < 0.5).astype(dtype)
    targets[np.isneginf(logits)] = 0
    options = {"alpha": 0.25, "gamma": 2.0}
    native = on_path("fused", sigmoid_focal, logits, targets, **options)
    wide = (logits.astype(np.float32), targets.astype(np.float32))
    widened = on_path("fused", sigmoid_focal, *wide, **options)
    assert kernel_inputs == [dtype.name, "float32"]
    np.testing.assert_array_equal(native.per_sample, widened.per_sample)
    np.testing.assert_array_equal(native.grads["logits"], widened.grads["logits"])
    reference = on_path("reference", sigmoid_focal, logits, targets, **options)
    assert_same(reduce_loss(native, "none"), reduce_loss(reference, "none"), np.float32)


def test_16_bit_targets_of_another_dtype_widen_both(kernel_inputs: list[str]) -> None:
    """Mixed dtypes take the float32 path: one compiled kernel per native dtype, no more."""
    logits = half_rows(np.dtype(ml_dtypes.bfloat16), (4,))
    targets = np.zeros(logits.shape, np.float32)
    on_path("fused", binary_cross_entropy, logits, targets)
    assert kernel_inputs == ["float32"]


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_a_float64_compute_dtype_widens_16_bit_rows(
    dtype: np.dtype, kernel_inputs: list[str]
) -> None:
    logits, labels = half_rows(dtype), labels_for()
    result = on_path("fused", cross_entropy, logits, labels, compute_dtype="float64")
    assert kernel_inputs == ["float64"] and result.grads["logits"].dtype == np.float64


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_every_16_bit_value_widens_exactly(dtype: np.dtype) -> None:
    """All 65536 bit patterns, each a one-class row: with a z-loss the kernel reports the row's
    log-sum-exp, which for one finite logit is the logit itself, widened."""
    values = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    with np.errstate(invalid="ignore"):  # NaN patterns
        exact = values.astype(np.float32)
    keep = ~np.isnan(exact) & ~np.isposinf(exact)  # NaN and +inf never reach the kernel
    rows = values[keep].reshape(-1, 1)
    n = rows.shape[0]
    ones = np.ones(n, np.float32)
    _, lse, _ = cpu.softmax_rows(
        rows, np.zeros(n, np.int64), np.zeros(n, bool), kind=cpu.CROSS_ENTROPY,
        at_label=ones, total=ones, z_loss=1.0,
    )  # fmt: skip
    widened = exact[keep].astype(np.float64)
    finite = np.isfinite(widened)
    np.testing.assert_array_equal(lse[finite], widened[finite])
    assert np.all(np.isneginf(lse[~finite]))


def test_16_bit_inputs_are_not_modified() -> None:
    logits, labels = half_rows(np.dtype(ml_dtypes.bfloat16)), labels_for()
    saved = logits.copy()
    logits.flags.writeable = False
    for function in (cross_entropy, focal, poly1):
        on_path("fused", function, logits, labels, grad_reduction="mean")
    np.testing.assert_array_equal(logits.view(np.uint16), saved.view(np.uint16))


def test_one_compiled_kernel_per_native_dtype() -> None:
    """Every argument has one type whatever the options (an absent one is an empty read-only
    array) and the input's flags: a process compiles each kernel once per native dtype."""
    for name in sorted(cpu.NATIVE_INPUT_DTYPES):
        dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
        logits = half_rows(dtype, (4,)) if dtype.itemsize == 2 else RNG.normal(size=(4, C))
        logits = logits.astype(dtype)
        labels = labels_for((4,))
        on_path("fused", cross_entropy, logits, labels)
        options = {"weight": np.ones(C), "label_smoothing": 0.1, "z_loss": 1e-3}
        on_path("fused", cross_entropy, logits, labels, **options)
        on_path("fused", focal, logits, labels, alpha=np.ones(C, dtype=np.float32))
        logits.flags.writeable = False
        on_path("fused", poly1, logits, labels)
        targets = np.zeros(logits.shape, dtype)
        on_path("fused", binary_cross_entropy, logits, targets, weight=np.ones(C))
    for kernel in (few_classes.few_class_kernel(C), binary.binary_rows_serial):
        assert len(kernel.signatures) == len(cpu.NATIVE_INPUT_DTYPES)
