"""The label-noise engine's inputs: checks, what it never writes to, logits, layouts.

What a report contains is checked against cleanlab in `test_label_noise_cleanlab.py`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from scipy.special import softmax

from service.engine import find_label_issues, find_label_issues_from_logits
from service.engine.label_noise._inputs import logit_probabilities
from service.errors import InvalidInput
from tests.engine.label_noise_data import draw


def report_fields(report: Any) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


def assert_same_report(a: Any, b: Any) -> None:
    for name, value in report_fields(a).items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)


PROBS, LABELS = draw(300, 4, seed=20)


@pytest.mark.parametrize(
    ("probs", "labels", "field", "message"),
    [
        (PROBS[0], LABELS[:1], "probs", "expected shape [N, C]"),
        (PROBS[None], LABELS, "probs", "expected shape [N, C]"),
        (PROBS[:0], LABELS[:0], "probs", "no rows"),
        (np.ones((3, 1)), np.zeros(3, dtype=np.int64), "probs", "at least 2 classes"),
        (PROBS, LABELS[:-1], "labels", "expected shape [300]"),
        (PROBS, LABELS[:, None], "labels", "expected shape [300]"),
        (PROBS, LABELS + 0.5, "labels", "must be integers, got"),
        (PROBS, LABELS.astype(bool), "labels", "got booleans"),
        (PROBS, np.where(np.arange(300) == 7, -1, LABELS), "labels", "label -1 at index (7,)"),
        (PROBS, np.where(np.arange(300) == 9, 4, LABELS), "labels", "label 4 at index (9,)"),
    ],
)
def test_shapes_and_labels_are_checked(
    probs: np.ndarray, labels: np.ndarray, field: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as error:
        find_label_issues(probs, labels)
    assert error.value.field == (field,)


def with_value(row: int, column: int, value: float) -> np.ndarray:
    probs = PROBS.copy()
    probs[row, column] = value
    return probs


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (with_value(5, 2, np.nan), "values must lie in [0, 1], got nan at index (5, 2)"),
        (with_value(6, 1, np.inf), "values must lie in [0, 1], got inf at index (6, 1)"),
        (with_value(7, 3, -0.25), "values must lie in [0, 1], got -0.25 at index (7, 3)"),
        (with_value(8, 0, 1.5), "values must lie in [0, 1], got 1.5 at index (8, 0)"),
        (PROBS * 0.99, "the row at index (0,) sums to 0.99"),
        (PROBS + np.float32(1e-5) * (np.arange(300) == 11)[:, None], "row at index (11,) sums"),
    ],
)
def test_probabilities_are_checked(probs: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as error:
        find_label_issues(probs, LABELS)
    assert error.value.field == ("probs",)


def test_rows_sum_to_one_within_a_millionth_or_the_resolution_of_16_bit_inputs() -> None:
    probs = PROBS.astype(np.float64)
    probs[:, 0] += 9e-7  # within 1e-6
    find_label_issues(probs, LABELS)
    coarse = PROBS.astype(ml_dtypes.bfloat16)  # rows off 1 by up to the bfloat16 step
    assert np.abs(coarse.astype(np.float64).sum(axis=1) - 1).max() > 1e-3
    find_label_issues(coarse, LABELS)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"filter_by": "prune"}, "filter_by"),
        ({"rank_by": "margin"}, "rank_by"),
        ({"max_issues": -1}, "max_issues"),
        ({"max_issues": 2.5}, "max_issues"),
        ({"max_issues": True}, "max_issues"),
    ],
)
def test_options_are_checked(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}: expected") as error:
        find_label_issues(PROBS, LABELS, **options)
    assert error.value.field == (field,)


def test_max_issues_accepts_numpy_integers() -> None:
    report = find_label_issues(PROBS, LABELS, max_issues=np.int64(2))  # type: ignore[arg-type]  # on purpose: a NumPy integer
    assert report.label_issues.size == min(2, report.n_issues)


def test_inputs_are_not_written_to() -> None:
    probs, labels = draw(2000, 6, seed=21)
    logits = np.log(probs) + np.float32(3.0)
    copies = [array.copy() for array in (probs, labels, logits)]
    for filter_by in ("prune_by_noise_rate", "both"):
        find_label_issues(probs, labels, filter_by=filter_by)
        find_label_issues_from_logits(logits, labels, filter_by=filter_by)
    for array, copy in zip((probs, labels, logits), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_read_only_and_strided_inputs_give_the_contiguous_answer() -> None:
    probs, labels = draw(2000, 6, seed=22)
    expected = find_label_issues(probs, labels, rank_by="normalized_margin")
    fortran = np.asfortranarray(probs)
    fortran.flags.writeable = False
    wide = np.zeros((2000, 12), dtype=np.float32)
    wide[:, ::2] = probs
    for given in (fortran, wide[:, ::2]):
        assert_same_report(find_label_issues(given, labels, rank_by="normalized_margin"), expected)


@pytest.mark.parametrize("labels_dtype", [np.int8, np.uint16, np.int32, np.float64])
def test_labels_of_any_integer_kind(labels_dtype: type) -> None:
    expected = find_label_issues(PROBS, LABELS)
    assert_same_report(find_label_issues(PROBS, LABELS.astype(labels_dtype)), expected)


# --- logits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_are_the_report_of_their_softmax(dtype: type) -> None:
    rng = np.random.default_rng(23)
    logits: np.ndarray = (rng.standard_normal((3000, 8)) * 3 + 100).astype(dtype)  # large offset
    labels = rng.integers(0, 8, 3000)
    probs, _ = logit_probabilities(logits, labels)
    assert probs.dtype == dtype
    np.testing.assert_allclose(
        probs, softmax(logits.astype(np.float64), axis=1), rtol=2e-6, atol=1e-7
    )
    assert_same_report(
        find_label_issues_from_logits(logits, labels), find_label_issues(probs, labels)
    )


def test_minus_infinity_logits_are_classes_without_probability() -> None:
    logits = np.array([[0.0, -np.inf, 2.0], [1.0, 1.0, -np.inf], [3.0, 0.0, 0.0], [0.0, 5.0, 1.0]])
    labels = np.array([0, 1, 2, 1])
    probs, _ = logit_probabilities(logits, labels)
    assert probs[0, 1] == 0 and probs[1, 2] == 0
    assert_same_report(
        find_label_issues_from_logits(logits, labels), find_label_issues(probs, labels)
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "finite or -inf, got nan at index (1, 2)"), (np.inf, "finite or -inf, got inf")],
)
def test_nan_and_plus_infinity_logits_are_errors(value: float, message: str) -> None:
    logits = np.zeros((3, 4))
    logits[1, 2] = value
    with pytest.raises(InvalidInput, match=re.escape(message)) as error:
        find_label_issues_from_logits(logits, np.zeros(3, dtype=np.int64))
    assert error.value.field == ("logits",)


def test_a_row_of_minus_infinity_logits_is_an_error() -> None:
    logits = np.zeros((3, 4))
    logits[2] = -np.inf
    with pytest.raises(InvalidInput, match=r"row at index \(2,\) is -inf") as error:
        find_label_issues_from_logits(logits, np.zeros(3, dtype=np.int64))
    assert error.value.field == ("logits",)


def test_import_loads_no_numba_and_warm_up_compiles_both_dtypes() -> None:
    kernels = ["scan_rows", "class_sums", "entropy_sums", "prune_by_noise_rate", "prune_by_class"]
    code = (
        "import sys; import service.engine.label_noise as noise; "
        "assert 'numba' not in sys.modules; noise.warm_up(); "
        "from service.engine.label_noise._report import compiled_kernels; k = compiled_kernels(); "
        f"print(sorted(str(getattr(k, name).signatures[i][0].dtype) for name in {kernels!r} "
        "for i in range(len(getattr(k, name).signatures))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(["float32", "float64"] * 5))
