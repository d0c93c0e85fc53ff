"""Cross-entropy properties that hold whatever PyTorch records: gradients against finite
differences, masking equals slicing, index labels equal one-hot labels, shift invariance, extreme
and masked logits, dtypes, and every rejected input."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax
from scipy.special import logsumexp as scipy_logsumexp

from service.engine import cross_entropy, log_softmax, logsumexp, reduce_loss
from service.errors import InvalidInput
from tests.conftest import to_numpy
from tests.engine_helpers import finite_difference_grad

# Every test runs on both implementations (the reference array code and the fused kernels).
pytestmark = pytest.mark.usefixtures("engine_path")

RNG = np.random.default_rng(20261126)


def ce(xp: ModuleType, logits: Any, labels: Any, reduction: str = "mean", **options: Any) -> Any:
    weight = options.pop("weight", None)
    empty = options.pop("empty", "zero")
    result = cross_entropy(
        xp.asarray(logits),
        xp.asarray(labels),
        weight=None if weight is None else xp.asarray(weight),
        **options,
    )
    return reduce_loss(result, reduction, empty=empty)  # type: ignore[arg-type]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.2},
        {"z_loss": 0.01},
        {"weight": np.array([0.5, 2.0, 1.0, 0.0]), "label_smoothing": 0.1, "z_loss": 1e-3},
        {"ignore_index": 1, "label_smoothing": 0.3},
    ],
    ids=["plain", "smoothing", "z_loss", "weight-smoothing-z", "ignore-smoothing"],
)
def test_gradient_matches_finite_differences(
    xp: ModuleType, options: dict[str, Any], reduction: str
) -> None:
    logits = RNG.normal(size=(2, 3, 4)) * 2
    labels = np.array([[0, 1, 3], [2, 1, 0]])

    def loss(x: np.ndarray) -> float:
        return float(ce(np, x, labels, reduction, **dict(options)).loss)

    out = ce(xp, logits, labels, reduction, **dict(options))
    numeric = finite_difference_grad(loss, logits)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), numeric, rtol=1e-6, atol=1e-9)


def test_probability_targets_gradient_matches_finite_differences(xp: ModuleType) -> None:
    logits = RNG.normal(size=(5, 6))
    targets = np.exp(RNG.normal(size=(5, 6)))
    targets /= targets.sum(axis=-1, keepdims=True)
    weight = RNG.uniform(0.1, 2, size=6)
    options: dict[str, Any] = {"weight": weight, "label_smoothing": 0.15, "z_loss": 0.01}

    def loss(x: np.ndarray) -> float:
        return float(ce(np, x, targets, **dict(options)).loss)

    out = ce(xp, logits, targets, **dict(options))
    numeric = finite_difference_grad(loss, logits)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), numeric, rtol=1e-6, atol=1e-9)


def test_z_loss_adds_squared_logsumexp(xp: ModuleType) -> None:
    logits = RNG.normal(size=(4, 7)) * 3
    labels = np.array([0, 6, 3, 3])
    plain = ce(xp, logits, labels, "none")
    with_z = ce(xp, logits, labels, "none", z_loss=0.25)
    expected = to_numpy(plain.per_sample) + 0.25 * scipy_logsumexp(logits, axis=-1) ** 2
    np.testing.assert_allclose(to_numpy(with_z.per_sample), expected, rtol=1e-12)


def test_class_indices_equal_one_hot_probabilities(xp: ModuleType) -> None:
    logits = RNG.normal(size=(6, 5))
    labels = np.array([0, 4, 2, 2, 1, 3])
    one_hot = np.eye(5)[labels]
    weight = RNG.uniform(0.5, 2, size=5)
    by_index = ce(xp, logits, labels, "none", label_smoothing=0.1)
    by_probability = ce(xp, logits, one_hot, "none", label_smoothing=0.1)
    np.testing.assert_allclose(to_numpy(by_index.per_sample), to_numpy(by_probability.per_sample))
    np.testing.assert_allclose(
        to_numpy(by_index.grads["logits"]), to_numpy(by_probability.grads["logits"]), atol=1e-15
    )
    # With weights the per-sample values agree too; only `mean` divides differently (PyTorch).
    weighted_index = ce(xp, logits, labels, "sum", weight=weight)
    weighted_probability = ce(xp, logits, one_hot, "sum", weight=weight)
    np.testing.assert_allclose(weighted_index.loss, weighted_probability.loss, rtol=1e-12)


def test_ignoring_a_label_equals_slicing_it_out(xp: ModuleType) -> None:
    logits = RNG.normal(size=(7, 4))
    labels = np.array([0, 3, -100, 1, -100, 2, 2])
    keep = labels != -100
    weight = np.array([1.0, 0.5, 2.0, 3.0])
    masked = ce(xp, logits, labels, weight=weight, label_smoothing=0.2)
    sliced = ce(xp, logits[keep], labels[keep], weight=weight, label_smoothing=0.2)
    assert masked.n_valid == 5
    np.testing.assert_allclose(masked.loss, sliced.loss, rtol=1e-12)
    grad = to_numpy(masked.grads["logits"])
    np.testing.assert_allclose(grad[keep], to_numpy(sliced.grads["logits"]), rtol=1e-12)
    assert not np.any(grad[~keep])


@pytest.mark.parametrize("ignore_index", [2, 1, -100, 4])
def test_an_ignore_index_among_the_classes_is_ignored(xp: ModuleType, ignore_index: int) -> None:
    """Whether or not ignore_index is a class, or lies between the smallest and the largest
    label, rows with it (and only they) are ignored."""
    logits = RNG.normal(size=(6, 4))
    labels = np.array([0, 3, 2, 2, 0, 3], dtype=np.uint8)
    keep = labels != ignore_index
    masked = ce(xp, logits, labels, ignore_index=ignore_index)
    sliced = ce(xp, logits[keep], labels[keep])
    assert masked.n_valid == int(keep.sum())
    np.testing.assert_allclose(masked.loss, sliced.loss, rtol=1e-12)
    grad = to_numpy(masked.grads["logits"])
    np.testing.assert_allclose(grad[keep], to_numpy(sliced.grads["logits"]), rtol=1e-12)
    assert not np.any(grad[~keep])


def test_finite_losses_whose_sum_overflows_are_not_rejected(xp: ModuleType) -> None:
    """Each loss is finite (1e308); only their sum is not, which is no reason to reject them."""
    logits = xp.asarray(np.array([[0.0, -1e308], [0.0, -1e308]]))
    result = cross_entropy(logits, xp.asarray(np.array([1, 1])))
    np.testing.assert_array_equal(to_numpy(result.per_sample), [1e308, 1e308])


def test_shifting_a_row_changes_nothing(xp: ModuleType) -> None:
    logits = RNG.normal(size=(3, 5))
    labels = np.array([1, 0, 4])
    shifted = logits + np.array([[100.0], [-50.0], [1e3]])
    a = ce(xp, logits, labels, "none", label_smoothing=0.1)
    b = ce(xp, shifted, labels, "none", label_smoothing=0.1)
    np.testing.assert_allclose(to_numpy(a.per_sample), to_numpy(b.per_sample), rtol=1e-10)
    np.testing.assert_allclose(
        to_numpy(a.grads["logits"]), to_numpy(b.grads["logits"]), rtol=1e-9, atol=1e-15
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_magnitude_1e4_stay_finite_and_exact(xp: ModuleType, dtype: Any) -> None:
    logits = np.array([[1e4, -1e4, 0.0], [1e4, 1e4 - 1, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 1, 2])
    out = ce(xp, logits, labels, "none", label_smoothing=0.1, z_loss=1e-4)
    per_sample = to_numpy(out.per_sample)
    assert np.all(np.isfinite(per_sample))
    assert np.all(np.isfinite(to_numpy(out.grads["logits"])))
    # Row 1 without smoothing: -log_softmax at the label = log(1 + e^-1) + 1, exact in float32 too.
    plain = ce(xp, logits, labels, "none")
    expected = -scipy_log_softmax(logits.astype(np.float64), axis=-1)[np.arange(3), labels]
    np.testing.assert_allclose(to_numpy(plain.per_sample), expected, rtol=1e-6)


def test_confident_row_keeps_its_tiny_loss_in_float32(xp: ModuleType) -> None:
    """Regression: (max + log_sum) - x_y rounds a 1e-5 loss to 0 at |x| = 1e4 in float32."""
    logits = np.array([[1e4, 1e4 - 12.0]], dtype=np.float32)
    out = ce(xp, logits, np.array([0]))
    np.testing.assert_allclose(out.loss, np.log1p(np.exp(-12.0)), rtol=1e-5)


def test_neg_inf_logit_on_a_class_without_target_mass_contributes_nothing(xp: ModuleType) -> None:
    logits = np.array([[2.0, -np.inf, 0.5], [-np.inf, 1.0, 3.0]])
    labels = np.array([0, 2])
    out = ce(xp, logits, labels, "none", weight=np.array([1.0, 0.0, 2.0]))
    finite = np.array([[2.0, 0.5], [1.0, 3.0]])
    expected = -scipy_log_softmax(finite, axis=-1)[[0, 1], [0, 1]] * np.array([1.0, 2.0])
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-12)
    grad = to_numpy(out.grads["logits"])
    assert grad[0, 1] == 0 and grad[1, 0] == 0
    # Smoothing on a zero-weight class: still no mass there, still finite.
    smooth = ce(xp, logits[:1], labels[:1], weight=np.array([1.0, 0.0, 2.0]), label_smoothing=0.3)
    assert np.isfinite(smooth.loss)
    assert to_numpy(smooth.grads["logits"])[0, 1] == 0


def test_probability_target_zero_on_a_masked_class_is_finite(xp: ModuleType) -> None:
    logits = np.array([[1.0, -np.inf, 0.0]])
    targets = np.array([[0.25, 0.0, 0.75]])
    out = ce(xp, logits, targets)
    expected = -(0.25 * scipy_log_softmax([1.0, 0.0])[0] + 0.75 * scipy_log_softmax([1.0, 0.0])[1])
    np.testing.assert_allclose(out.loss, expected, rtol=1e-12)
    assert to_numpy(out.grads["logits"])[0, 1] == 0


def _masked_reference(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample -sum_c y_c log p_c and its gradient softmax - y, in float64 with SciPy, each
    row over its finite classes only (a -inf class holds no mass: 0 log 0 = 0, gradient 0)."""
    per_sample = np.zeros(len(logits))
    grad = np.zeros_like(logits)
    for i, (row, target) in enumerate(zip(logits, targets, strict=True)):
        keep = np.isfinite(row)
        log_p = scipy_log_softmax(row[keep])
        per_sample[i] = -np.sum(target[keep] * log_p)
        grad[i, keep] = np.exp(log_p) - target[keep]
    return per_sample, grad


@pytest.mark.parametrize(
    "masked_rows",
    [[0], [1, 3], [0, 1, 2, 3, 4, 5]],
    ids=["first-row", "some-rows", "every-row"],
)
def test_probability_targets_with_masked_classes_in_some_rows(
    xp: ModuleType, masked_rows: list[int]
) -> None:
    """Regression: with probability targets, -inf logits in some rows but not all answered 500
    (the mask of zero weights was built from every row, and applied to the masked rows only)."""
    logits = RNG.normal(size=(6, 5)) * 2
    targets = RNG.dirichlet(np.ones(5), size=6)
    for row in masked_rows:
        masked = RNG.choice(5, size=2, replace=False)
        logits[row, masked] = -np.inf
        targets[row, masked] = 0.0
        targets[row] /= targets[row].sum()
    expected, expected_grad = _masked_reference(logits, targets)
    out = ce(xp, logits, targets, "none")
    np.testing.assert_allclose(to_numpy(out.per_sample), expected, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(out.grads["logits"]), expected_grad, atol=1e-15)
    mean = ce(xp, logits, targets)
    np.testing.assert_allclose(mean.loss, expected.mean(), rtol=1e-12)


@pytest.mark.parametrize(
    ("logits", "labels", "options"),
    [
        ([[1.0, -np.inf]], [1], {}),
        ([[1.0, -np.inf]], [0], {"label_smoothing": 0.1}),
        ([[-np.inf, -np.inf]], [0], {}),
        ([[1.0, -np.inf]], [[0.5, 0.5]], {}),
    ],
    ids=["label-on-masked-class", "smoothing-onto-masked-class", "all-masked-row", "probability"],
)
def test_infinite_loss_is_rejected_not_returned(
    xp: ModuleType, logits: Any, labels: Any, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput, match="not finite") as info:
        ce(xp, np.array(logits), np.array(labels), **options)
    assert info.value.field == ("logits",)


def test_fully_masked_row_that_is_ignored_is_fine(xp: ModuleType) -> None:
    out = ce(xp, np.array([[-np.inf, -np.inf], [1.0, 2.0]]), np.array([-100, 1]))
    assert out.n_valid == 1
    np.testing.assert_allclose(out.loss, -scipy_log_softmax([1.0, 2.0])[1], rtol=1e-12)
    assert np.all(to_numpy(out.grads["logits"])[0] == 0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(xp: ModuleType, reduction: str) -> None:
    out = ce(xp, np.zeros((0, 3)), np.zeros((0,), dtype=np.int64), reduction)
    assert out.loss == 0.0
    assert out.n_valid == 0
    assert to_numpy(out.grads["logits"]).shape == (0, 3)


def test_empty_nan_restores_pytorch(xp: ModuleType) -> None:
    out = ce(xp, np.zeros((2, 3)), np.array([-100, -100]), empty="nan")
    assert np.isnan(out.loss)
    assert not np.any(to_numpy(out.grads["logits"]))


@pytest.mark.parametrize(
    ("dtype", "compute"),
    [
        (np.float16, np.float32),
        (ml_dtypes.bfloat16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.int64, np.float64),
    ],
    ids=["float16", "bfloat16", "float32", "float64", "int64"],
)
def test_compute_dtype_follows_the_input(xp: ModuleType, dtype: Any, compute: Any) -> None:
    if dtype is ml_dtypes.bfloat16 and xp is not np:
        pytest.skip("CuPy has no bfloat16 dtype")
    logits = (RNG.normal(size=(4, 5)) * 3).astype(dtype)
    labels = np.array([0, 1, 2, 3])
    out = ce(xp, logits, labels, "none", label_smoothing=0.1)
    assert to_numpy(out.grads["logits"]).dtype == compute
    reference = ce(np, logits.astype(np.float64), labels, "none", label_smoothing=0.1)
    np.testing.assert_allclose(to_numpy(out.per_sample), reference.per_sample, rtol=2e-6)
    forced = ce(xp, logits, labels, compute_dtype="float64")
    assert to_numpy(forced.grads["logits"]).dtype == np.float64


def test_float32_compute_accumulates_in_float64(xp: ModuleType) -> None:
    logits = np.zeros((2**20, 2), dtype=np.float32)
    out = ce(xp, logits, np.zeros(2**20, dtype=np.int64), "sum")
    # float32 accumulation of 2^20 copies of log 2 drifts by ~1e-4 relative; float64 does not.
    np.testing.assert_allclose(out.loss, 2**20 * float(np.float32(np.log(2.0))), rtol=1e-9)


def test_inputs_are_not_modified(xp: ModuleType) -> None:
    logits = xp.asarray(RNG.normal(size=(3, 4)))
    labels = xp.asarray(np.array([0, -100, 3]))
    weight = xp.asarray(np.array([1.0, 2.0, 3.0, 4.0]))
    copies = [a.copy() for a in (logits, labels, weight)]
    result = cross_entropy(logits, labels, weight=weight, label_smoothing=0.1, z_loss=0.1)
    reduce_loss(result, "mean")
    for before, after in zip(copies, (logits, labels, weight), strict=True):
        assert bool(xp.all(before == after))


def test_float_labels_that_are_whole_numbers_are_class_indices(xp: ModuleType) -> None:
    logits = RNG.normal(size=(3, 4))
    as_float = ce(xp, logits, np.array([2.0, 0.0, -100.0]))
    as_int = ce(xp, logits, np.array([2, 0, -100]))
    assert as_float.loss == as_int.loss


@pytest.mark.parametrize(
    ("labels", "options", "field", "message"),
    [
        ([0, 5], {}, "labels", r"label 5 at index \(1,\) is outside \[0, 3\)"),
        ([0, -1], {}, "labels", "label -1 at"),
        ([0, -100], {"ignore_index": 2}, "labels", "label -100 at"),
        ([0.5, 1.0], {}, "labels", r"must be integers, got 0.5 at index \(0,\)"),
        ([True, False], {}, "labels", "booleans"),
        ([0, 1, 2], {}, "labels", "neither"),
        ([[0.5, 0.5, 0.5], [1, 0, 0]], {}, "labels", "sum to 1"),
        ([[1.5, -0.5, 0.0], [1, 0, 0]], {}, "labels", r"\[0, 1\]"),
        ([0, 1], {"weight": np.array([1.0, -1.0, 1.0])}, "weight", "finite and >= 0"),
        ([0, 1], {"weight": np.array([1.0, 1.0])}, "weight", r"expected shape \[3\]"),
        ([0, 1], {"label_smoothing": 1.5}, "label_smoothing", "<= 1.0"),
        ([0, 1], {"label_smoothing": float("nan")}, "label_smoothing", "finite"),
        ([0, 1], {"z_loss": -1.0}, "z_loss", ">= 0.0"),
    ],
)
def test_bad_input_names_the_field(
    xp: ModuleType, labels: Any, options: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        ce(xp, RNG.normal(size=(2, 3)), np.array(labels), **options)
    assert info.value.field == (field,)
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("logits", [np.float64(1.0), np.zeros((2, 0))], ids=["scalar", "no-class"])
def test_logits_need_a_class_axis(xp: ModuleType, logits: Any) -> None:
    with pytest.raises(InvalidInput, match="logits: ") as info:
        ce(xp, np.asarray(logits), np.zeros(np.asarray(logits).shape[:-1], dtype=np.int64))
    assert info.value.field == ("logits",)


def test_float64_logits_that_overflow_float32_are_rejected(xp: ModuleType) -> None:
    with pytest.raises(InvalidInput, match="overflows float32"):
        ce(xp, np.array([[1e300, 0.0]]), np.array([0]), compute_dtype="float32")


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_logsumexp_and_log_softmax_match_scipy(xp: ModuleType, axis: int) -> None:
    x = RNG.normal(size=(3, 4, 5)) * 50
    x[0, 0, 0] = -np.inf
    np.testing.assert_allclose(
        to_numpy(logsumexp(xp.asarray(x), axis=axis)), scipy_logsumexp(x, axis=axis), rtol=1e-13
    )
    np.testing.assert_allclose(
        to_numpy(log_softmax(xp.asarray(x), axis=axis)),
        scipy_log_softmax(x, axis=axis),
        rtol=1e-12,
    )


def test_logsumexp_of_all_neg_inf_is_neg_inf(xp: ModuleType) -> None:
    assert to_numpy(logsumexp(xp.asarray(np.full((1, 3), -np.inf))))[0] == -np.inf
