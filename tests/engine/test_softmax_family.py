"""Focal, poly-1, symmetric, generalized, logit-adjusted and forward-corrected cross-entropy:
gradients against finite differences, values against closed forms written here from SciPy's
log_softmax, the settings that reduce each to cross-entropy, masking equals slicing, extreme and
masked logits, and rejected options."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax

from service.engine import (
    LossResult,
    cross_entropy,
    focal,
    forward_corrected_cross_entropy,
    generalized_cross_entropy,
    logit_adjusted_cross_entropy,
    poly1,
    reduce_loss,
    symmetric_cross_entropy,
)
from service.errors import InvalidInput
from tests.conftest import to_numpy
from tests.engine_helpers import finite_difference_grad

# Every test runs on both implementations (the reference array code and the fused kernels).
pytestmark = pytest.mark.usefixtures("engine_path")

RNG = np.random.default_rng(20261127)
C = 4
NOISY = np.full((C, C), 0.1 / (C - 1)) + np.eye(C) * (0.9 - 0.1 / (C - 1))
ARRAY_OPTIONS = ("alpha", "class_prior", "class_counts", "transition_matrix")

LOSSES: dict[str, tuple[Callable[..., LossResult], dict[str, Any]]] = {
    "focal": (focal, {"gamma": 2.0}),
    "focal-alpha": (focal, {"gamma": 1.5, "alpha": np.array([0.25, 1.0, 0.5, 2.0])}),
    "focal-gamma-half": (focal, {"gamma": 0.5}),
    "poly1": (poly1, {"epsilon": 2.0}),
    "sce": (symmetric_cross_entropy, {"alpha": 0.3, "beta": 0.7, "log_zero": -4.0}),
    "gce": (generalized_cross_entropy, {"q": 0.7}),
    "logit-adjusted": (logit_adjusted_cross_entropy, {"class_counts": np.array([5, 1, 30, 2])}),
    "forward": (forward_corrected_cross_entropy, {"transition_matrix": NOISY}),
}


def run(
    xp: ModuleType, fn: Callable[..., LossResult], logits: Any, labels: Any, **options: Any
) -> LossResult:
    arrays = {k: xp.asarray(v) for k, v in options.items() if k in ARRAY_OPTIONS}
    return fn(xp.asarray(logits), xp.asarray(labels), **{**options, **arrays})


def log_p_y(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    log_p: np.ndarray = scipy_log_softmax(logits, axis=-1)
    return np.take_along_axis(log_p, labels[..., None], -1)[..., 0]


def closed_form(name: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each loss from its paper's formula, on SciPy's log-softmax."""
    options = LOSSES[name][1]
    lp = log_p_y(logits, labels)
    p = np.exp(lp)
    if name.startswith("focal"):
        alpha = options.get("alpha", np.ones(C))[labels]
        return np.asarray(-alpha * (1 - p) ** options["gamma"] * lp)
    if name == "poly1":
        return np.asarray(-lp + options["epsilon"] * (1 - p))
    if name == "sce":
        return np.asarray(options["alpha"] * -lp + options["beta"] * -options["log_zero"] * (1 - p))
    if name == "gce":
        return np.asarray((1 - p ** options["q"]) / options["q"])
    if name == "logit-adjusted":
        prior = options["class_counts"] / options["class_counts"].sum()
        return -log_p_y(logits + np.log(prior), labels)
    noisy_p: np.ndarray = np.exp(scipy_log_softmax(logits, axis=-1)) @ options["transition_matrix"]
    return np.asarray(-np.log(np.take_along_axis(noisy_p, labels[..., None], -1)[..., 0]))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_gradient_matches_finite_differences(xp: ModuleType, name: str, reduction: str) -> None:
    fn, options = LOSSES[name]
    logits = RNG.normal(size=(2, 3, C)) * 2
    labels = np.array([[0, 1, 3], [2, -100, 0]])

    def loss(x: np.ndarray) -> float:
        return reduce_loss(run(np, fn, x, labels, **options), reduction).loss  # type: ignore[arg-type]

    out = reduce_loss(run(xp, fn, logits, labels, **options), reduction)  # type: ignore[arg-type]
    numeric = finite_difference_grad(loss, logits)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", list(LOSSES))
def test_values_match_the_closed_form(xp: ModuleType, name: str) -> None:
    fn, options = LOSSES[name]
    logits = RNG.normal(size=(3, 5, C)) * 3
    labels = RNG.integers(0, C, size=(3, 5))
    out = run(xp, fn, logits, labels, **options)
    expected = closed_form(name, logits, labels)
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-12)
    assert out.n_valid == 15
    assert out.divisor == 15  # `mean` divides by n_valid for every one, focal alpha included


def ce_reference(
    xp: ModuleType, logits: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    out = cross_entropy(xp.asarray(logits), xp.asarray(labels))
    return to_numpy(out.per_sample), to_numpy(out.grads["logits"])


@pytest.mark.parametrize(
    ("fn", "options", "rtol"),
    [
        (focal, {"gamma": 0.0}, 1e-15),
        (poly1, {"epsilon": 0.0}, 1e-15),
        (symmetric_cross_entropy, {"alpha": 1.0, "beta": 0.0}, 1e-15),
        (generalized_cross_entropy, {"q": 1e-7}, 1e-5),  # relative gap q |log p| / 2
        (forward_corrected_cross_entropy, {"transition_matrix": np.eye(C)}, 1e-15),
        (logit_adjusted_cross_entropy, {"class_prior": np.full(C, 1 / C)}, 1e-12),
        (logit_adjusted_cross_entropy, {"class_counts": np.array([1, 9, 3, 2]), "tau": 0.0}, 0),
    ],
    ids=[
        "focal-gamma-0",
        "poly1-eps-0",
        "sce-alpha-1-beta-0",
        "gce-q-to-0",
        "forward-identity",
        "uniform-prior",
        "tau-0",
    ],
)
def test_reduces_to_cross_entropy(
    xp: ModuleType, fn: Callable[..., LossResult], options: dict[str, Any], rtol: float
) -> None:
    logits = RNG.normal(size=(6, C)) * 3
    labels = np.array([0, 3, -100, 1, 2, 2])
    per_sample, grad = ce_reference(xp, logits, labels)
    out = run(xp, fn, logits, labels, **options)
    np.testing.assert_allclose(to_numpy(out.per_sample), per_sample, rtol=rtol, atol=1e-15)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), grad, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_ignoring_a_label_equals_slicing_it_out(xp: ModuleType, name: str) -> None:
    fn, options = LOSSES[name]
    logits = RNG.normal(size=(7, C))
    labels = np.array([0, 3, -1, 1, -1, 2, 2])
    keep = labels != -1
    masked = reduce_loss(run(xp, fn, logits, labels, ignore_index=-1, **options))
    sliced = reduce_loss(run(xp, fn, logits[keep], labels[keep], **options))
    assert masked.n_valid == 5 and masked.weight_sum == 5
    np.testing.assert_allclose(masked.loss, sliced.loss, rtol=1e-12)
    grad = to_numpy(masked.grads["logits"])
    np.testing.assert_allclose(grad[keep], to_numpy(sliced.grads["logits"]), rtol=1e-12)
    assert not np.any(grad[~keep])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LOSSES))
def test_logits_of_magnitude_1e4_stay_finite(xp: ModuleType, name: str, dtype: Any) -> None:
    fn, options = LOSSES[name]
    logits = np.array(
        [[1e4, -1e4, 0.0, 1.0], [1e4, 1e4 - 1, -1e4, 0.0], [-1e4, -1e4, -1e4, -1e4]], dtype=dtype
    )
    labels = np.array([1, 1, 2])
    out = run(xp, fn, logits, labels, **options)
    assert np.all(np.isfinite(to_numpy(out.per_sample)))
    assert np.all(np.isfinite(to_numpy(out.grads["logits"])))
    if name == "forward":  # p_y underflows in row 0; log of (softmax @ T) must not
        expected = closed_form(name, logits.astype(np.float64)[1:], labels[1:])
        np.testing.assert_allclose(to_numpy(out.per_sample)[1:], expected, rtol=1e-6)
    else:
        expected = closed_form(name, logits.astype(np.float64), labels)
        np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-6)


def test_forward_correction_keeps_an_underflowing_label_finite(xp: ModuleType) -> None:
    logits = np.array([[1e4, -1e4, 0.0, 1.0]])
    out = forward_corrected_cross_entropy(
        xp.asarray(logits), xp.asarray(np.array([1])), transition_matrix=xp.asarray(NOISY)
    )
    # (softmax @ T)_1 = T[0, 1] to within e^-1e4: the loss is -log(0.1 / 3)
    np.testing.assert_allclose(to_numpy(out.per_sample), [-np.log(0.1 / 3)], rtol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_neg_inf_logit_off_the_label_contributes_nothing(xp: ModuleType, name: str) -> None:
    fn, options = LOSSES[name]
    logits = np.array([[2.0, -np.inf, 0.5, -1.0], [-np.inf, 1.0, 3.0, -np.inf]])
    labels = np.array([0, 2])
    out = run(xp, fn, logits, labels, **options)
    grad = to_numpy(out.grads["logits"])
    assert np.all(np.isfinite(grad)) and np.all(np.isfinite(to_numpy(out.per_sample)))
    assert grad[0, 1] == 0 and grad[1, 0] == 0 and grad[1, 3] == 0
    with np.errstate(divide="ignore"):  # the closed forms take log 0 = -inf at masked classes
        expected = closed_form(name, logits, labels)
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("fn", "options"),
    [
        (focal, {}),
        (poly1, {}),
        (symmetric_cross_entropy, {}),
        (logit_adjusted_cross_entropy, {"class_prior": np.ones(2)}),
        (forward_corrected_cross_entropy, {"transition_matrix": np.eye(2)}),
    ],
    ids=["focal", "poly1", "sce", "logit-adjusted", "forward"],
)
def test_label_on_a_masked_class_is_rejected(
    xp: ModuleType, fn: Callable[..., LossResult], options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput, match="not finite") as info:
        run(xp, fn, np.array([[1.0, -np.inf]]), np.array([1]), **options)
    assert info.value.field == ("logits",)


def test_bounded_losses_price_a_masked_label_at_their_bound(xp: ModuleType) -> None:
    logits, labels = np.array([[1.0, -np.inf]]), np.array([1])
    gce = run(xp, generalized_cross_entropy, logits, labels, q=0.5)
    np.testing.assert_allclose(to_numpy(gce.per_sample), [2.0])
    rce = run(xp, symmetric_cross_entropy, logits, labels, alpha=0.0, beta=1.0, log_zero=-4.0)
    np.testing.assert_allclose(to_numpy(rce.per_sample), [4.0])
    assert not np.any(to_numpy(gce.grads["logits"])) and not np.any(to_numpy(rce.grads["logits"]))


def test_focal_alpha_zero_silences_a_masked_label(xp: ModuleType) -> None:
    out = run(xp, focal, np.array([[1.0, -np.inf]]), np.array([1]), alpha=np.array([1.0, 0.0]))
    assert to_numpy(out.per_sample).tolist() == [0.0]
    assert not np.any(to_numpy(out.grads["logits"]))


def test_zero_prior_masks_its_class(xp: ModuleType) -> None:
    logits = RNG.normal(size=(3, 3))
    labels = np.array([0, 2, 0])
    out = run(xp, logit_adjusted_cross_entropy, logits, labels, class_counts=np.array([2, 0, 6]))
    adjusted = logits[:, [0, 2]] + np.log([0.25, 0.75])
    np.testing.assert_allclose(
        to_numpy(out.per_sample), -log_p_y(adjusted, np.array([0, 1, 0])), rtol=1e-12
    )
    assert not np.any(to_numpy(out.grads["logits"])[:, 1])


@pytest.mark.parametrize(
    ("fn", "options", "field"),
    [
        (focal, {"gamma": -0.5}, "gamma"),
        (focal, {"gamma": float("nan")}, "gamma"),
        (focal, {"alpha": np.array([1.0, -1.0, 1.0, 1.0])}, "alpha"),
        (focal, {"alpha": np.ones(3)}, "alpha"),
        (poly1, {"epsilon": -1.5}, "epsilon"),
        (symmetric_cross_entropy, {"alpha": -0.1}, "alpha"),
        (symmetric_cross_entropy, {"beta": -1.0}, "beta"),
        (symmetric_cross_entropy, {"log_zero": 1.0}, "log_zero"),
        (symmetric_cross_entropy, {"log_zero": -np.inf}, "log_zero"),
        (generalized_cross_entropy, {"q": 0.0}, "q"),
        (generalized_cross_entropy, {"q": 1.5}, "q"),
        (logit_adjusted_cross_entropy, {}, "class_prior"),
        (
            logit_adjusted_cross_entropy,
            {"class_prior": np.ones(C), "class_counts": np.ones(C)},
            "class_prior",
        ),
        (
            logit_adjusted_cross_entropy,
            {"class_prior": np.array([0.5, np.inf, 0.1, 0.1])},
            "class_prior",
        ),
        (logit_adjusted_cross_entropy, {"class_prior": np.ones(C + 1)}, "class_prior"),
        (logit_adjusted_cross_entropy, {"class_counts": np.zeros(C)}, "class_counts"),
        (logit_adjusted_cross_entropy, {"class_counts": np.array([1, -1, 2, 3])}, "class_counts"),
        (logit_adjusted_cross_entropy, {"class_prior": np.ones(C), "tau": -1.0}, "tau"),
        (
            forward_corrected_cross_entropy,
            {"transition_matrix": np.eye(C)[:3]},
            "transition_matrix",
        ),
        (
            forward_corrected_cross_entropy,
            {"transition_matrix": np.eye(C) * 1.1},
            "transition_matrix",
        ),
        (
            forward_corrected_cross_entropy,
            {"transition_matrix": np.eye(C) - 0.5 * np.eye(C)[::-1]},
            "transition_matrix",
        ),
        (
            forward_corrected_cross_entropy,
            {"transition_matrix": np.full((C, C), np.nan)},
            "transition_matrix",
        ),
    ],
)
def test_bad_options_are_rejected_naming_the_field(
    xp: ModuleType, fn: Callable[..., LossResult], options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}:") as info:
        run(xp, fn, RNG.normal(size=(2, C)), np.array([0, 1]), **options)
    assert info.value.field == (field,)


@pytest.mark.parametrize("name", list(LOSSES))
def test_labels_must_be_class_indices(xp: ModuleType, name: str) -> None:
    fn, options = LOSSES[name]
    with pytest.raises(InvalidInput, match=r"^labels:"):
        run(xp, fn, np.zeros((2, C)), np.full((2, C), 0.25), **options)
    with pytest.raises(InvalidInput, match=r"^labels:"):
        run(xp, fn, np.zeros((2, C)), np.array([0, C]), **options)


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_inputs_compute_in_float32(xp: ModuleType, name: str) -> None:
    fn, options = LOSSES[name]
    logits = (RNG.normal(size=(4, C)) * 3).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    out = run(xp, fn, logits, labels, **options)
    assert to_numpy(out.grads["logits"]).dtype == np.float32
    assert to_numpy(out.per_sample).dtype == np.float32
    expected = closed_form(name, logits.astype(np.float64), labels)
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=2e-6)
    forced = run(xp, fn, logits, labels, compute_dtype="float64", **options)
    assert to_numpy(forced.grads["logits"]).dtype == np.float64


@pytest.mark.parametrize("name", list(LOSSES))
def test_inputs_are_not_modified(xp: ModuleType, name: str) -> None:
    fn, options = LOSSES[name]
    logits = xp.asarray(RNG.normal(size=(3, C)))
    labels = xp.asarray(np.array([0, -100, 3]))
    arrays = {k: xp.asarray(v) for k, v in options.items() if k in ARRAY_OPTIONS}
    copies = [a.copy() for a in (logits, labels, *arrays.values())]
    reduce_loss(fn(logits, labels, **{**options, **arrays}), "mean")
    for before, after in zip(copies, (logits, labels, *arrays.values()), strict=True):
        np.testing.assert_array_equal(to_numpy(before), to_numpy(after))
