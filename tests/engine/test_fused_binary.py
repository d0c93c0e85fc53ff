"""The fused binary cross-entropy (`_kernels.cpu.binary_rows`) against the reference array code.

Both paths must give the same losses, gradients and errors: over weight and pos_weight shapes x
reductions x shapes x float32/float64, with logits of 1e4, 100 and -inf, targets of exactly 0 and
1, empty batches, rows longer than one work item of the kernel, and every rejected input.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numba
import numpy as np
import pytest

from service.engine import LossResult, binary_cross_entropy, reduce_loss, sigmoid_focal
from service.engine._kernels import cpu
from service.engine._kernels.binary import unit_power
from service.errors import InvalidInput
from tests.engine.fused_cases import assert_same
from tests.engine.test_fused import on_path

RNG = np.random.default_rng(20261126)

SHAPES = [(6, 5), (3, 2, 5), (7,)]


def logits_and_labels(shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary and extreme logits, soft and hard targets; -inf only where the target is 0."""
    logits = RNG.normal(size=shape) * 4
    labels = RNG.uniform(size=shape)
    flat_x, flat_y = logits.reshape(-1), labels.reshape(-1)
    flat_x[:6] = [1e4, -1e4, 100.0, -100.0, 0.0, -np.inf]
    flat_y[:6] = [0.0, 1.0, 1.0, 0.0, 0.5, 0.0]
    flat_y[6::4] = 1.0
    flat_y[7::5] = 0.0
    return logits.astype(dtype), labels.astype(dtype)


def factor(form: str | None, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
    """A weight or pos_weight broadcasting to `shape` in one of the forms the kernel takes."""
    if form is None:
        return None
    forms = {
        "scalar": (),
        "last-axis": shape[-1:],
        "per-row": (*shape[:-1], 1),
        "full": shape,
        "first-axis": (shape[0], *(1,) * (len(shape) - 1)),
    }
    values = RNG.uniform(0.0, 3.0, size=forms[form])
    if values.size > 2:
        values.reshape(-1)[1] = 0.0  # a zero weight, also on a -inf logit
    return values.astype(dtype)


GRID = list(
    itertools.product(
        [None, "scalar", "last-axis", "per-row", "full", "first-axis"],  # weight
        [None, "last-axis", "full"],  # pos_weight
        ["mean", "sum", "none"],
        SHAPES,
        [np.float32, np.float64],
    )
)
GRID_IDS = [f"w-{w}-p-{p}-{r}-{len(shape)}d-{np.dtype(d).name}" for w, p, r, shape, d in GRID]


def both_paths(
    *args: Any, reduction: str, function: Any = binary_cross_entropy, **options: Any
) -> tuple[Any, Any]:
    reference = on_path("reference", function, *args, **options)
    fused = on_path("fused", function, *args, grad_reduction=reduction, **options)
    assert isinstance(reference, LossResult), reference
    assert isinstance(fused, LossResult), fused
    return reduce_loss(reference, reduction), reduce_loss(fused, reduction)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("weight", "pos_weight", "reduction", "shape", "dtype"), GRID, ids=GRID_IDS
)
def test_binary_cross_entropy_paths_agree(
    weight: str | None, pos_weight: str | None, reduction: str, shape: Any, dtype: Any
) -> None:
    logits, labels = logits_and_labels(shape, dtype)
    options = {
        "weight": factor(weight, shape, dtype),
        "pos_weight": factor(pos_weight, shape, dtype),
    }
    reference, fused = both_paths(logits, labels, reduction=reduction, **options)
    assert_same(fused, reference, dtype)
    assert fused.grads["logits"][np.isneginf(logits)].tolist() == [0.0] * int(
        np.isneginf(logits).sum()
    )


@pytest.mark.parametrize("weight", ["full", "last-axis", None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    [(2, 9000), (10000,), (2000, 5), (3, 700, 6)],
    ids=["long-rows", "one-long-row", "short-rows-grouped", "grouped-3d"],
)
def test_rows_longer_than_a_work_item_and_grouped_short_rows(
    shape: Any, dtype: Any, weight: str | None
) -> None:
    """Long rows are cut into work items; short ones go to the kernel in groups of
    `BINARY_CHUNK // C` rows, and the rows that do not fill one in a second launch."""
    n_cols = shape[-1]
    assert n_cols > cpu.BINARY_CHUNK or math.prod(shape[:-1]) % (cpu.BINARY_CHUNK // n_cols)
    logits, labels = logits_and_labels(shape, dtype)
    options = {
        "weight": factor(weight, shape, dtype),
        "pos_weight": factor("last-axis", shape, dtype),
    }
    reference, fused = both_paths(logits, labels, reduction="mean", **options)
    assert_same(fused, reference, dtype)


@pytest.mark.parametrize("function", [binary_cross_entropy, sigmoid_focal])
@pytest.mark.parametrize("shape", [(0,), (0, 5), (4, 0), (0, 3, 5)])
def test_empty_batches(shape: Any, function: Any) -> None:
    logits, labels = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    weight = np.ones(shape[-1], np.float32)  # a [C] weight, broadcast over no rows
    reference, fused = both_paths(
        logits, labels, reduction="mean", function=function, weight=weight
    )
    assert_same(fused, reference, np.float32)
    assert fused.loss == 0.0 and fused.grads["logits"].shape == shape


def test_a_scalar_logit() -> None:
    reference, fused = both_paths(np.float64(-2.5), np.float64(1.0), reduction="mean")
    assert_same(fused, reference, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernel_writes_the_mean_gradient_itself(dtype: Any) -> None:
    """`grad_reduction="mean"`: the kernel's gradient is bit for bit what `reduce_loss` makes of
    the gradient of the sum, and `reduce_loss` leaves it alone."""
    logits, labels = logits_and_labels((5, 4), dtype)
    pos_weight = factor("last-axis", (5, 4), dtype)
    options = {"pos_weight": pos_weight}
    mean = on_path("fused", binary_cross_entropy, logits, labels, grad_reduction="mean", **options)
    total = on_path("fused", binary_cross_entropy, logits, labels, **options)
    assert mean.grad_scale == 1 / 20 and total.grad_scale == 1
    folded = mean.grads["logits"].copy()
    expected = reduce_loss(total, "mean").grads["logits"]
    np.testing.assert_array_equal(folded, expected)
    np.testing.assert_array_equal(reduce_loss(mean, "mean").grads["logits"], folded)
    np.testing.assert_array_equal(mean.per_sample, total.per_sample)


def test_inputs_are_not_modified() -> None:
    logits, labels = logits_and_labels((4, 5), np.float32)
    weight = RNG.uniform(size=(4, 5)).astype(np.float32)
    pos_weight = RNG.uniform(size=5).astype(np.float32)
    arrays = [logits, labels, weight, pos_weight]
    saved = [array.copy() for array in arrays]
    for array in arrays:
        array.flags.writeable = False
    options = {"weight": weight, "pos_weight": pos_weight, "grad_reduction": "mean"}
    on_path("fused", binary_cross_entropy, logits, labels, **options)
    for before, after in zip(saved, arrays, strict=True):
        np.testing.assert_array_equal(before, after)


def test_float16_targets_and_float64_weights() -> None:
    logits, labels = logits_and_labels((6, 5), np.float32)
    weight = factor("last-axis", (6, 5), np.float64)
    reference, fused = both_paths(logits, labels.astype(np.float16), reduction="sum", weight=weight)
    assert_same(fused, reference, np.float32)


def _neg_inf_positive() -> tuple[Any, Any, dict[str, Any]]:
    return np.array([[0.0, -np.inf], [1.0, 2.0]]), np.array([[0.0, 0.5], [1.0, 1.0]]), {}


ERRORS: list[tuple[Any, Any, dict[str, Any]]] = [
    _neg_inf_positive(),
    # a zero weight does not excuse an infinite loss (0 * inf), as in the reference
    (np.array([0.0, -np.inf]), np.array([0.0, 1.0]), {"weight": np.array([1.0, 0.0])}),
    (np.array([0.0, np.inf]), np.array([0.0, 0.0]), {}),
    (np.array([0.0, np.nan]), np.array([0.0, 0.0]), {}),
    (np.array([0.0, np.nan], np.float32), np.array([0.0, 0.0], np.float32), {}),
    (np.zeros(3), np.array([0.0, 1.5, 1.0]), {}),
    (np.zeros(3), np.array([0.0, -0.5, 1.0]), {}),
    (np.zeros(3), np.array([0.0, np.nan, 1.0]), {}),
    (np.zeros(3, np.float32), np.array([0.0, 1 + 1e-12, 1.0]), {}),  # rounds to 1 in float32
    (np.zeros(3, np.float32), np.array([0.0, -1e-60, 1.0]), {}),  # rounds to -0 in float32
    (np.zeros(3), np.array([0.0, 1.0, 1.0]), {"weight": np.array([1.0, -1.0, 1.0])}),
    (np.zeros(3), np.array([0.0, 1.0, 1.0]), {"pos_weight": np.array([1.0, np.inf, 1.0])}),
    (np.zeros(3), np.array([0.0, 1.0, 1.0]), {"weight": np.ones(2)}),
    (np.zeros(3), np.array([0.0, 2.0, 1.0]), {"weight": np.ones(2)}),  # labels reported first
    (np.zeros(3), np.array([0.0, 2.0, 1.0]), {"pos_weight": -np.ones(3)}),  # labels first
    (np.zeros(3), np.zeros(2), {}),
]


@pytest.mark.parametrize(("logits", "labels", "options"), ERRORS)
def test_errors_are_identical(logits: Any, labels: Any, options: dict[str, Any]) -> None:
    raised = [
        on_path(path, binary_cross_entropy, logits, labels, **options)
        for path in ("reference", "fused")
    ]
    reference, fused = raised
    assert isinstance(reference, InvalidInput), reference
    assert isinstance(fused, InvalidInput), fused
    assert (fused.detail, fused.field) == (reference.detail, reference.field)


def test_the_kernel_runs_on_the_fused_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = cpu.binary_rows

    def counting(x: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(x.shape)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(cpu, "binary_rows", counting)
    logits, labels = logits_and_labels((3, 2, 5), np.float32)
    on_path("reference", binary_cross_entropy, logits, labels)
    assert calls == []
    on_path("fused", binary_cross_entropy, logits, labels)
    assert calls == [(6, 5)]


@pytest.mark.parametrize("target", [0.0, 1.0, 0.3])
def test_float32_loss_and_gradient_against_float64(target: float) -> None:
    """The float32 kernel's own sigmoid and log1p (polynomials, no library calls) keep the loss
    within 1e-6 relative and the gradient within float32's resolution of sigmoid."""
    x = np.concatenate([np.linspace(-100, 100, 400_001), [-1e4, 1e4, -87.5, 87.5]])
    x = x.astype(np.float32)
    y = np.full_like(x, target)
    per_element, grad, status, total = cpu.binary_rows(x[None], y[None], None, None)
    assert status == 0
    assert total == pytest.approx(np.sum(per_element, dtype=np.float64), rel=1e-12)
    x64 = x.astype(np.float64)
    loss = target * np.logaddexp(0, -x64) + (1 - target) * np.logaddexp(0, x64)
    np.testing.assert_allclose(per_element[0], loss, rtol=1e-6, atol=1e-37)
    sigmoid = 0.5 * (1 + np.tanh(0.5 * x64))
    # sigmoid in [0.5, 1) has float32 spacing 6e-8: two of them
    np.testing.assert_allclose(grad[0], sigmoid - target, rtol=1e-6, atol=1.2e-7)


# --- the sigmoid focal loss (the same kernel's other kind) ----------------------------------

FOCAL_GRID = list(
    itertools.product(
        [None, 0.25, 0.0, 1.0],  # alpha
        [0.0, 0.5, 1.5, 2.0],  # gamma
        [None, "last-axis", "full"],  # weight
        ["mean", "none"],
        [np.float32, np.float64],
    )
)
FOCAL_IDS = [f"a{a}-g{g}-w-{w}-{r}-{np.dtype(d).name}" for a, g, w, r, d in FOCAL_GRID]


@pytest.mark.parametrize(
    ("alpha", "gamma", "weight", "reduction", "dtype"), FOCAL_GRID, ids=FOCAL_IDS
)
def test_sigmoid_focal_paths_agree(
    alpha: float | None, gamma: float, weight: str | None, reduction: str, dtype: Any
) -> None:
    shape = (5, 6)
    logits, labels = logits_and_labels(shape, dtype)
    if alpha == 0.0:  # alpha_t = 0 silences a label 1 at -inf: put one there
        labels.reshape(-1)[5] = 1.0
    options = {"alpha": alpha, "gamma": gamma, "weight": factor(weight, shape, dtype)}
    reference, fused = both_paths(
        logits, labels, reduction=reduction, function=sigmoid_focal, **options
    )
    assert_same(fused, reference, dtype)


def test_sigmoid_focal_in_groups_of_short_rows() -> None:
    shape = (3000, 3)
    logits, labels = logits_and_labels(shape, np.float32)
    options = {"alpha": 0.25, "gamma": 2.0, "weight": factor("full", shape, np.float32)}
    reference, fused = both_paths(
        logits, labels, reduction="mean", function=sigmoid_focal, **options
    )
    assert_same(fused, reference, np.float32)


def test_sigmoid_focal_gamma_zero_is_the_fused_binary_cross_entropy_bit_for_bit() -> None:
    logits, labels = logits_and_labels((4, 5), np.float64)
    focal = on_path("fused", sigmoid_focal, logits, labels, alpha=None, gamma=0.0)
    bce = on_path("fused", binary_cross_entropy, logits, labels)
    np.testing.assert_array_equal(focal.per_sample, bce.per_sample)
    np.testing.assert_array_equal(focal.grads["logits"], bce.grads["logits"])


@numba.njit
def _unit_powers(m: np.ndarray, gamma: np.float32, out: np.ndarray) -> None:
    for i in range(m.shape[0]):
        out[i] = unit_power(m[i], gamma)


@pytest.mark.parametrize("gamma", [0.01, 0.5, 1.5, 3.0, 5.0])
def test_float32_modulators_against_float64_pow(gamma: float) -> None:
    """The float32 kernels' m ** gamma for gamma != 2 (`unit_power`: exp(gamma log m) from
    polynomials) against float64 `np.power` over m from 1e-38 to 1: within (|gamma ln m| + 2)
    2^-24 relative where the power is above 1e-30, 0 at m = 0, 1 at m = 1."""
    rng = np.random.default_rng(20261203)
    m = np.concatenate(
        [
            np.float32(10.0) ** rng.uniform(-38.0, 0.0, 100_000).astype(np.float32),
            rng.random(100_000).astype(np.float32),
            np.array([0.0, 1.0, 1e-45, np.nextafter(np.float32(1.0), np.float32(0.0))]),
        ]
    ).astype(np.float32)
    g = np.float32(gamma)
    ours = np.empty_like(m)
    _unit_powers(m, g, ours)
    exact = np.power(m.astype(np.float64), np.float64(g))
    above = exact > 1e-30
    bound = (np.abs(np.float64(g) * np.log(m[above].astype(np.float64))) + 2.0) * 2.0**-24
    assert np.all(np.abs(ours[above] - exact[above]) <= bound * exact[above])
    assert np.all(np.abs(ours[~above] - exact[~above]) <= 1e-30)
    assert ours[-4] == 0.0 and ours[-3] == 1.0


FOCAL_ERRORS: list[tuple[Any, Any, dict[str, Any]]] = [
    (np.array([0.0, -np.inf]), np.array([0.0, 1.0]), {"alpha": 0.25}),
    (np.array([0.0, -np.inf], np.float32), np.array([0.0, 0.5], np.float32), {"alpha": None}),
    (np.array([0.0, np.nan], np.float32), np.array([0.0, 0.0], np.float32), {}),
    (np.zeros(3), np.array([0.0, 1.5, 1.0]), {}),
    (np.zeros(3), np.array([0.0, 2.0, 1.0]), {"weight": -np.ones(3)}),  # labels first
    (np.zeros(3), np.array([0.0, 1.0, 1.0]), {"weight": -np.ones(3)}),
    (np.zeros(3), np.array([0.0, 1.0, 1.0]), {"alpha": 1.5}),
    (np.zeros(3), np.array([0.0, 1.0, 1.0]), {"gamma": -1.0}),
]


@pytest.mark.parametrize(("logits", "labels", "options"), FOCAL_ERRORS)
def test_sigmoid_focal_errors_are_identical(
    logits: Any, labels: Any, options: dict[str, Any]
) -> None:
    reference, fused = (
        on_path(path, sigmoid_focal, logits, labels, **options) for path in ("reference", "fused")
    )
    assert isinstance(reference, InvalidInput), reference
    assert isinstance(fused, InvalidInput), fused
    assert (fused.detail, fused.field) == (reference.detail, reference.field)
