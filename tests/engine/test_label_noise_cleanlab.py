"""Confident learning against cleanlab 2.x itself, called on the same arrays.

Every expected value comes from cleanlab (`filter.find_label_issues`,
`rank.get_label_quality_scores`, `count.compute_confident_joint`, `count.get_confident_thresholds`,
`count.estimate_latent`, `count.estimate_joint`), run single-process (`n_jobs=1`). The issues
must be the same rows in the same order, counts and scores bit for bit, matrices to 1e-12.
Datasets are drawn with known noise (symmetric, to the next class, class-imbalanced), 2 to 1000
classes, N from a few rows to 100,000; then the edge cases of cleanlab's own suite for these
functions (tests/test_filter_count.py and tests/test_rank.py there), and ties, which decide
orders.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cleanlab import count, rank
from cleanlab import filter as cleanlab_filter

from service.engine import (
    FILTERS,
    RANKINGS,
    FilterBy,
    LabelNoiseReport,
    RankBy,
    find_label_issues,
)
from tests.engine.label_noise_data import draw, quantised

CASES: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "binary": lambda: draw(400, 2, seed=1),
    "small": lambda: draw(60, 3, seed=2, flips="next", noise=0.3),
    "symmetric-10": lambda: draw(5000, 10, seed=3),
    "next-class-10": lambda: draw(5000, 10, seed=4, flips="next", noise=0.3),
    "imbalanced-20": lambda: draw(8000, 20, seed=5, imbalance=1.5),
    "float64-7": lambda: draw(3000, 7, seed=6, dtype=np.float64),
    "quantised": lambda: quantised(7, np.float32),
    "quantised-float64": lambda: quantised(8, np.float64),
    "fewer-rows-than-classes": lambda: draw(200, 300, seed=9),
    "classes-1000": lambda: draw(3000, 1000, seed=10, imbalance=0.5),
    "rows-100000": lambda: draw(100_000, 5, seed=11, noise=0.1),
}
HEAVY = {"classes-1000", "rows-100000"}  # every filter, each with one ranking


@functools.cache
def case(name: str) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = CASES[name]()
    probs.flags.writeable = False  # shared between tests: nothing may write into it
    return probs, labels


def quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """cleanlab warns about classes with at most one row, which it does not prune."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "May not flag all label issues", UserWarning)
        return call(*args, **kwargs)


def cleanlab_issues(
    probs: np.ndarray, labels: np.ndarray, filter_by: FilterBy, rank_by: RankBy, calibrate: bool
) -> np.ndarray:
    """cleanlab's ranked issues from the joint `calibrate` asks for (its default: calibrated).
    `confident_learning` re-estimates the joint itself, and warns if given one."""
    joint = count.compute_confident_joint(labels, probs, calibrate=calibrate)
    given = {} if filter_by == "confident_learning" else {"confident_joint": joint}
    issues: np.ndarray = quiet(
        cleanlab_filter.find_label_issues,
        labels,
        probs,
        filter_by=filter_by,
        return_indices_ranked_by=rank_by,
        n_jobs=1,
        **given,
    )
    return issues


def issue_params() -> list[Any]:
    params = []
    for name in CASES:
        if name in HEAVY:
            grid = [
                (f, RANKINGS[i % 3], cal)
                for i, (f, cal) in enumerate(itertools.product(FILTERS, (True, False)))
            ]
        else:
            grid = list(itertools.product(FILTERS, RANKINGS, (True, False)))
        params += [
            pytest.param(name, *combo, id=f"{name}-{'-'.join(map(str, combo))}") for combo in grid
        ]
    return params


@pytest.mark.parametrize(("name", "filter_by", "rank_by", "calibrate"), issue_params())
def test_label_issues_are_cleanlabs_in_its_order(
    name: str, filter_by: FilterBy, rank_by: RankBy, calibrate: bool
) -> None:
    probs, labels = case(name)
    expected = cleanlab_issues(probs, labels, filter_by, rank_by, calibrate)
    report = find_label_issues(
        probs,
        labels,
        filter_by=filter_by,
        rank_by=rank_by,
        calibrate=calibrate,
    )
    np.testing.assert_array_equal(report.label_issues, expected)
    assert report.n_issues == expected.size
    assert report.label_issues.dtype == np.int64


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("rank_by", RANKINGS)
def test_label_quality_is_cleanlabs_bit_for_bit(name: str, rank_by: RankBy) -> None:
    probs, labels = case(name)
    expected = rank.get_label_quality_scores(labels, probs, method=rank_by)
    report = find_label_issues(probs, labels, rank_by=rank_by)
    np.testing.assert_array_equal(report.label_quality, expected.astype(np.float64))
    assert np.all((report.label_quality >= 0) & (report.label_quality <= 1))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("calibrate", [True, False])
def test_joint_thresholds_transition_and_noise_rate_are_cleanlabs(
    name: str, calibrate: bool
) -> None:
    probs, labels = case(name)
    joint = count.compute_confident_joint(labels, probs, calibrate=calibrate)
    _, noise_matrix, _ = count.estimate_latent(joint, labels)
    report = find_label_issues(probs, labels, calibrate=calibrate)
    np.testing.assert_array_equal(report.confident_joint, joint)
    assert report.confident_joint.dtype == np.int64
    thresholds = count.get_confident_thresholds(labels, probs)
    np.testing.assert_array_equal(report.class_thresholds, thresholds.astype(np.float64))
    # rows: clean class, columns: given label; cleanlab's noise matrix is P(given | true) by
    # column. A class no row was counted in is the identity row here, a zero column there.
    uncounted = joint.sum(axis=0) == 0
    expected = noise_matrix.T.copy()
    expected[uncounted] = np.eye(len(joint))[uncounted]
    np.testing.assert_allclose(report.transition_matrix, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(report.transition_matrix.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    estimated = 1.0 - count.estimate_joint(None, probs, confident_joint=joint).trace()
    assert report.noise_rate == estimated


@pytest.mark.parametrize("name", ["symmetric-10", "quantised"])
def test_noise_rate_estimates_cleanlabs_number_of_issues(name: str) -> None:
    """cleanlab's own count recalibrates the calibrated joint: within a row or two of ours."""
    probs, labels = case(name)
    issues = count.num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
    report = find_label_issues(probs, labels)
    assert abs(report.noise_rate * labels.size - issues) <= 2
    assert 0 < report.noise_rate < 0.5


def test_noise_rate_is_near_the_noise_drawn() -> None:
    probs, labels = draw(20_000, 10, seed=12, noise=0.2)
    assert find_label_issues(probs, labels).noise_rate == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("max_issues", [0, 1, 17, 10**9])
def test_max_issues_keeps_the_likeliest(max_issues: int) -> None:
    probs, labels = case("symmetric-10")
    full = find_label_issues(probs, labels)
    cut = find_label_issues(probs, labels, max_issues=max_issues)
    np.testing.assert_array_equal(cut.label_issues, full.label_issues[:max_issues])
    assert cut.n_issues == full.n_issues > 17


def assert_matches_cleanlab(
    probs: np.ndarray, labels: np.ndarray, filters: tuple[FilterBy, ...] = FILTERS
) -> LabelNoiseReport:
    """Every filter, ranking and calibration on one small input; the default report back."""
    for filter_by, rank_by, calibrate in itertools.product(filters, RANKINGS, (True, False)):
        expected = cleanlab_issues(probs, labels, filter_by, rank_by, calibrate)
        report = find_label_issues(
            probs,
            labels,
            filter_by=filter_by,
            rank_by=rank_by,
            calibrate=calibrate,
        )
        np.testing.assert_array_equal(report.label_issues, expected)
        scores = rank.get_label_quality_scores(labels, probs, method=rank_by)
        np.testing.assert_array_equal(report.label_quality, scores.astype(np.float64))
        joint = count.compute_confident_joint(labels, probs, calibrate=calibrate)
        np.testing.assert_array_equal(report.confident_joint, joint)
    return find_label_issues(probs, labels)


# --- cleanlab's own edge cases (tests/test_filter_count.py in its repository) ---------------


def test_issue_158_rows_without_a_confident_class() -> None:
    probs = np.array(
        [
            [0.27916167, 0.14589103, 0.29264585, 0.28230144],
            [0.13429196, 0.12536383, 0.47943979, 0.26090442],
            [0.41348584, 0.13463275, 0.25845595, 0.19342546],
            [0.27753469, 0.12295569, 0.33125886, 0.26825075],
            [0.11649856, 0.11219034, 0.51857122, 0.25273988],
            [0.38010026, 0.25572261, 0.13305410, 0.23112304],
            [0.31583755, 0.13630690, 0.29246806, 0.25538750],
            [0.30240076, 0.16925207, 0.26499082, 0.26335636],
            [0.44524505, 0.27410085, 0.08305069, 0.19760341],
            [0.22903975, 0.07783631, 0.38035414, 0.31276980],
            [0.25071560, 0.12072900, 0.32551729, 0.30303812],
            [0.43809229, 0.14401381, 0.20839300, 0.20950090],
            [0.20749181, 0.11883556, 0.38402152, 0.28965111],
            [0.43840254, 0.13538447, 0.24518806, 0.18102493],
            [0.28504779, 0.10309750, 0.34258602, 0.26926868],
            [0.38425408, 0.29168969, 0.15181255, 0.17224368],
            [0.19339907, 0.10804265, 0.37570368, 0.32285460],
            [0.21509781, 0.07190167, 0.38914722, 0.32385330],
            [0.27040334, 0.13037840, 0.32842320, 0.27079507],
            [0.40590210, 0.16713560, 0.24889193, 0.17807036],
        ]
    )
    labels = np.array([3, 3, 1, 3, 0, 2, 2, 2, 0, 2, 2, 1, 0, 0, 0, 0, 2, 1, 3, 3])
    report = assert_matches_cleanlab(probs, labels)
    assert np.all(np.isfinite(report.transition_matrix))


MISSING_CLASS_PROBS = np.array(
    [[0.9, 0.0, 0.1, 0.0], [0.8, 0.0, 0.2, 0.0], [0.1, 0.0, 0.9, 0.0], [0.95, 0.0, 0.05, 0.0]]
)


@pytest.mark.parametrize(
    "probs",
    [
        MISSING_CLASS_PROBS,
        np.array(  # probability on the classes without rows
            [
                [0.9, 0.1, 0.0, 0.0],
                [0.8, 0.1, 0.1, 0.0],
                [0.1, 0.0, 0.9, 0.0],
                [0.9, 0.025, 0.025, 0.05],
            ]
        ),
    ],
)
def test_classes_without_rows(probs: np.ndarray) -> None:
    labels = np.array([0, 0, 2, 2])
    report = assert_matches_cleanlab(probs, labels)
    np.testing.assert_array_equal(report.label_issues, [3])
    np.testing.assert_array_equal(report.class_thresholds[[1, 3]], [2.0, 2.0])


def test_a_class_without_rows_has_the_identity_row_where_cleanlab_has_a_zero_column() -> None:
    labels = np.array([0, 0, 2, 2])
    joint = count.compute_confident_joint(labels, MISSING_CLASS_PROBS)
    _, noise_matrix, _ = count.estimate_latent(joint, labels)
    np.testing.assert_array_equal(noise_matrix[:, [1, 3]], 0.0)
    transition = find_label_issues(MISSING_CLASS_PROBS, labels).transition_matrix
    np.testing.assert_array_equal(transition[[1, 3]], np.eye(4)[[1, 3]])
    np.testing.assert_allclose(transition[[0, 2]], noise_matrix.T[[0, 2]], rtol=0, atol=1e-12)


def test_removing_a_class_moves_its_count() -> None:
    probs = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.8, 0.1, 0.1],
            [0.1, 0.0, 0.9],
            [0.9, 0.0, 0.1],
            [0.1, 0.3, 0.6],
            [0.1, 0.0, 0.9],
            [0.1, 0.0, 0.9],
            [0.1, 0.0, 0.9],
        ]
    )
    with_one = assert_matches_cleanlab(probs, np.array([0, 0, 0, 0, 1, 2, 2, 2]))
    without_one = assert_matches_cleanlab(probs, np.array([0, 0, 0, 0, 2, 2, 2, 2]))
    np.testing.assert_array_equal(with_one.confident_joint, [[3, 0, 1], [0, 1, 0], [0, 0, 3]])
    np.testing.assert_array_equal(without_one.confident_joint, [[3, 0, 1], [0, 0, 0], [0, 0, 4]])
    np.testing.assert_array_equal(with_one.label_issues, without_one.label_issues)


def test_classes_of_three_rows() -> None:
    probs, _ = draw(9, 3, seed=13)
    assert_matches_cleanlab(probs, np.repeat(np.arange(3), 3))


def test_predicted_neq_given() -> None:
    probs = np.array(
        [[0.9, 0.1, 0], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.4, 0.5, 0.1]]
    )
    labels = np.array([0, 0, 1, 1, 2])
    assert_matches_cleanlab(probs, labels)
    report = find_label_issues(probs, labels, filter_by="predicted_neq_given")
    np.testing.assert_array_equal(np.sort(report.label_issues), [2, 3, 4])


def test_binary_with_calibration_changing_the_count() -> None:
    labels = np.array([0, 1, 1, 1, 1, 0, 0, 1, 0])
    p0 = [0.7110397298505661, 0.6367131487519773, 0.7571834730987641, 0.6394163729473307]
    p0 += [0.5853684039196656, 0.6675968116482668, 0.7240647829106976, 0.740474240697777]
    p0 += [0.7148252196621883]
    probs = np.stack([np.array(p0), 1 - np.array(p0)], axis=1)
    assert_matches_cleanlab(probs, labels)


@pytest.mark.parametrize("name", ["symmetric-10", "imbalanced-20"])
@pytest.mark.parametrize("filter_by", FILTERS)
def test_rows_whose_label_is_the_prediction_are_never_issues(
    name: str, filter_by: FilterBy
) -> None:
    probs, labels = case(name)
    report = find_label_issues(probs, labels, filter_by=filter_by)
    assert report.n_issues > 0
    assert not np.any(probs[report.label_issues].argmax(axis=1) == labels[report.label_issues])


# --- inputs that make orders and ties matter ------------------------------------------------


def test_the_quantised_cases_tie_at_the_cuts() -> None:
    """What makes the quantised cases worth running: the m-th and (m + 1)-th largest margin of a
    pruned cell are equal, so the tie-break of cleanlab's sort decides which rows are issues."""
    probs, labels = case("quantised")
    joint = count.compute_confident_joint(labels, probs)
    prune = cleanlab_filter._keep_at_least_n_per_class(joint.T, 1)
    tied = 0
    for k, j in itertools.permutations(range(probs.shape[1]), 2):
        m = prune[j, k]
        margins = np.sort(probs[labels == k, j] - probs[labels == k, k])[::-1]
        tied += 0 < m < margins.size and margins[m - 1] == margins[m]
    assert tied > 0


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: (np.eye(4)[draw(3000, 4, seed=14)[0].argmax(axis=1)], None), id="one-hot"
        ),
        pytest.param(lambda: (np.full((100, 4), 0.25), None), id="uniform"),
        pytest.param(
            lambda: (np.repeat(draw(300, 6, seed=15)[0], 4, axis=0), None), id="duplicates"
        ),
        pytest.param(lambda: (draw(2000, 3, seed=16)[0], "all-wrong"), id="all-labels-wrong"),
    ],
)
def test_degenerate_probabilities_and_labels(make: Callable[[], Any]) -> None:
    probs, kind = make()
    n, c = probs.shape
    if kind == "all-wrong":
        labels = (probs.argmax(axis=1) + 1) % c
    else:
        labels = np.random.default_rng(18).integers(0, c, n)
    assert_matches_cleanlab(probs, labels)


def test_labels_of_one_class() -> None:
    """cleanlab accepts labels of class 0 only, except in `find_predicted_neq_given`: there the
    issues are its mask (argmax != label, less `_reduce_issues`) ranked by `order_label_issues`."""
    probs, _ = draw(500, 5, seed=17)
    labels = np.zeros(500, dtype=np.int64)
    assert_matches_cleanlab(probs, labels, filters=FILTERS[:-1])
    mask = (probs.argmax(axis=1) != labels) & ~count._reduce_issues(probs, labels)
    for rank_by in RANKINGS:
        expected = rank.order_label_issues(mask, labels, probs, rank_by=rank_by)
        report = find_label_issues(probs, labels, filter_by="predicted_neq_given", rank_by=rank_by)
        np.testing.assert_array_equal(report.label_issues, expected)
        assert report.n_issues > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_probabilities_compute_as_float32(dtype: str) -> None:
    import ml_dtypes  # noqa: F401  (the bfloat16 dtype)

    probs, labels = draw(2000, 6, seed=19, dtype=np.float64)
    given = probs.astype(dtype)
    widened = given.astype(np.float32)
    report = find_label_issues(given, labels)
    np.testing.assert_array_equal(
        report.label_issues, cleanlab_issues(widened, labels, FILTERS[0], RANKINGS[0], True)
    )
    np.testing.assert_array_equal(
        report.confident_joint, count.compute_confident_joint(labels, widened)
    )
