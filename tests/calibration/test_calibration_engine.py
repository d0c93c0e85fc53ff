"""The calibration engine: reference values, edge semantics, merge, temperature, bootstrap.

Reference values come from `tests/fixtures/calibration_reference.json`, written by
`scripts/make_calibration_fixtures.py` with torchmetrics, scikit-learn and Kumar et al.'s
`uncertainty-calibration`; the suite needs none of them. Temperature scaling is checked against
`scipy.optimize.minimize_scalar`; everything else against plain NumPy written out here.

Long because each statistic's reference case sits next to its edge cases; the smooth ECE and the API
have modules of their own.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from service.engine.calibration import (
    MAX_CLASSWISE_CELLS,
    NLL_CAP,
    CalibrationState,
    calibration_report,
    fit_temperature,
    merge,
    merge_report,
)
from service.errors import InvalidInput

FIXTURES = Path(__file__).parents[1] / "fixtures" / "calibration_reference.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURES.read_text(encoding="utf-8"))["cases"]
EXACT = 1e-9  # float64 references computed the same way up to summation order


def case_inputs(case: dict[str, Any], xp: ModuleType) -> dict[str, Any]:
    scores = xp.asarray(np.array(case["scores"], dtype=np.float64))
    return {case["input"]: scores, "labels": xp.asarray(np.array(case["labels"]))}


def softmax(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.exp(log_softmax(z, axis=-1)))


def draw_multiclass(
    seed: int, n: int, c: int, temperature: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / temperature): a miscalibrated model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 4.0, size=(n, 1))
    cumulative = np.cumsum(softmax(logits / temperature), axis=1)
    labels = np.minimum((rng.uniform(size=(n, 1)) > cumulative).sum(axis=1), c - 1)
    return logits, labels


# --- agreement with torchmetrics, scikit-learn and Kumar et al. ---------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_reference_values(case: dict[str, Any], xp: ModuleType) -> None:
    expected = case["expected"]
    report = calibration_report(**case_inputs(case, xp), n_bins=case["n_bins"], top_k=case["top_k"])
    m = report.metrics
    ours = {"ece": m.ece, "mce": m.mce, "rmsce": m.rmsce}
    for name, value in ours.items():
        if f"{name}_float64" in expected:
            # torchmetrics' multiclass function bins float32 confidences; the same torchmetrics
            # code on the float64 values is exact, the public function agrees to float32 rounding.
            assert value == pytest.approx(expected[f"{name}_float64"], rel=EXACT), name
            assert value == pytest.approx(expected[name], rel=1e-6), name
        else:  # torchmetrics' binary function computes in float64 throughout
            assert value == pytest.approx(expected[name], rel=EXACT), name
    assert m.classwise_ece == pytest.approx(expected["classwise_ece"], rel=EXACT)
    assert m.ece_debiased == pytest.approx(expected["ece_debiased"], rel=EXACT)
    assert m.brier == pytest.approx(expected["brier"], rel=EXACT)
    assert m.nll == pytest.approx(expected["nll"], rel=EXACT)
    assert m.accuracy == expected["accuracy"]
    for k, value in m.top_k_accuracy:
        assert value == pytest.approx(expected["top_k_accuracy"][str(k)], rel=EXACT), k
    assert [k for k, _ in m.top_k_accuracy] == case["top_k"]


def test_binned_metrics_written_out() -> None:
    """ECE, MCE, RMSCE and the debiased L2 error on a small sample, from their definitions."""
    p = np.array([0.05, 0.15, 0.35, 0.45, 0.55, 0.62, 0.68, 0.9, 0.95, 0.99])
    y = np.array([0, 1, 0, 1, 1, 0, 1, 1, 1, 1])
    m = calibration_report(probs=p, labels=y, n_bins=4).metrics
    bins = [
        (p[(p >= lo) & (p < lo + 0.25)], y[(p >= lo) & (p < lo + 0.25)]) for lo in (0, 0.25, 0.5)
    ]
    bins.append((p[p >= 0.75], y[p >= 0.75]))
    gaps = [(len(c) / 10, abs(t.mean() - c.mean()), t.mean(), len(c)) for c, t in bins]
    assert m.ece == pytest.approx(sum(w * g for w, g, _, _ in gaps), rel=1e-12)
    assert m.mce == pytest.approx(max(g for _, g, _, _ in gaps), rel=1e-12)
    assert m.rmsce == pytest.approx(math.sqrt(sum(w * g * g for w, g, _, _ in gaps)), rel=1e-12)
    debiased = sum(w * (g * g - a * (1 - a) / (n - 1)) for w, g, a, n in gaps)
    assert m.ece_debiased == pytest.approx(math.sqrt(max(debiased, 0)), rel=1e-12)
    assert [b.count for b in m.bins] == [len(c) for c, _ in bins]


def test_debiased_error_skips_bins_of_one_sample_and_clamps_at_zero() -> None:
    """A perfectly calibrated sample: the bias correction exceeds the plug-in error -> 0."""
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.95])
    y = np.array([0, 1, 0, 1, 1])
    m = calibration_report(probs=p, labels=y, n_bins=10).metrics
    assert m.ece_debiased == 0.0
    assert m.rmsce == pytest.approx(math.sqrt(0.2 * 0.05**2))


# --- bins: [lo, hi), the last one closed --------------------------------------------------------


def test_confidences_exactly_on_edges_zero_and_one(xp: ModuleType) -> None:
    below_06 = np.nextafter(0.6, 0.0)
    p = np.array([0.0, 0.2, 0.4, below_06, 0.6, 0.8, 1.0, 1.0])
    y = np.array([0, 1, 0, 1, 1, 1, 1, 0])
    m = calibration_report(probs=xp.asarray(p), labels=xp.asarray(y), n_bins=5).metrics
    # 0 opens bin 0; i/5 opens bin i; just below 0.6 stays in bin 2; 1.0 closes the last bin.
    assert [b.count for b in m.bins] == [1, 1, 2, 1, 3]
    assert len(m.bins) == 5  # no phantom sixth bin for confidence 1.0 (torchmetrics has one)
    assert [b.lower for b in m.bins] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert m.bins[-1].upper == 1.0
    assert m.bins[-1].mean_confidence == pytest.approx((0.8 + 2.0) / 3)
    assert m.bins[-1].accuracy == pytest.approx(2 / 3)


def test_every_edge_of_many_bin_counts_starts_its_bin() -> None:
    for n_bins in (3, 7, 10, 15, 33, 100):
        edges = np.arange(n_bins + 1) / n_bins
        labels = np.zeros(n_bins + 1, dtype=np.int64)
        m = calibration_report(probs=edges, labels=labels, n_bins=n_bins).metrics
        counts = [b.count for b in m.bins]
        assert counts == [1] * (n_bins - 1) + [2], n_bins


def test_saturated_float32_softmax_lands_in_the_last_bin() -> None:
    logits = np.array([[30.0, 0.0, 0.0], [0.0, 0.1, 0.2]], dtype=np.float32)
    report = calibration_report(logits=logits, labels=np.array([0, 2]), n_bins=10)
    assert report.metrics.bins[-1].count == 1
    assert report.metrics.bins[-1].mean_confidence == 1.0


def test_quantile_bins_hold_equal_mass_and_cover_zero_to_one(xp: ModuleType) -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=600)
    y = (rng.uniform(size=600) < p).astype(np.int64)
    report = calibration_report(probs=xp.asarray(p), labels=xp.asarray(y), binning="quantile")
    counts = [b.count for b in report.metrics.bins]
    assert counts == [40] * 15
    assert report.metrics.bins[0].lower == 0.0 and report.metrics.bins[-1].upper == 1.0
    assert not report.state.mergeable
    # The ECE is the same formula on these edges.
    edges = report.state.edges
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 14)
    ece = sum(abs((y - p)[index == b].sum()) for b in range(15)) / 600
    assert report.metrics.ece == pytest.approx(ece, rel=1e-12)


def test_quantile_states_do_not_merge() -> None:
    p = np.array([0.1, 0.7, 0.9])
    state = calibration_report(probs=p, labels=np.array([0, 1, 1]), binning="quantile").state
    with pytest.raises(InvalidInput, match=r"^states\[0\]\.binning: quantile") as error:
        merge([state, state])
    assert error.value.field == ("states", 0, "binning")


# --- merge: shards add up to the union ---------------------------------------------------------


def assert_same_metrics(a: Any, b: Any, rel: float = 1e-9) -> None:
    for name in ("ece", "mce", "rmsce", "ece_debiased", "classwise_ece", "brier", "nll"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=rel, abs=1e-15), name
    assert a.accuracy == b.accuracy and a.top_k_accuracy == b.top_k_accuracy
    assert a.mean_confidence == pytest.approx(b.mean_confidence, rel=rel)
    for x, y in zip(a.bins, b.bins, strict=True):
        assert (x.lower, x.upper, x.count) == (y.lower, y.upper, y.count)
        if x.count:
            assert x.mean_confidence == pytest.approx(y.mean_confidence, rel=rel)
            assert x.accuracy == pytest.approx(y.accuracy, rel=rel)


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_merged_shards_equal_the_union(task: str, xp: ModuleType) -> None:
    logits, labels = draw_multiclass(seed=11, n=900, c=6)
    if task == "binary":
        logits, labels = logits[:, 0] - logits[:, 1], (labels % 2 == 0).astype(np.int64)
    options: dict[str, Any] = {"n_bins": 12, "top_k": [1, 3] if task == "multiclass" else [1]}
    union = calibration_report(logits=xp.asarray(logits), labels=xp.asarray(labels), **options)
    cuts = [0, 1, 1, 250, 700, 900]  # includes an empty shard and a shard of one sample
    states = [
        calibration_report(
            logits=xp.asarray(logits[a:b]), labels=xp.asarray(labels[a:b]), **options
        ).state
        for a, b in itertools.pairwise(cuts)
    ]
    # Through the wire form, as /v1/calibration/merge receives them.
    states = [CalibrationState.from_dict(json.loads(json.dumps(s.to_dict()))) for s in states]
    merged = merge_report(states)
    assert merged.state.n == 900
    assert_same_metrics(merged.metrics, union.metrics)
    np.testing.assert_array_equal(merged.state.bins.count, union.state.bins.count)
    assert merged.state.top_k_hits == union.state.top_k_hits


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_bins": 10}, "n_bins"),
        ({"top_k": [1, 2]}, "top_k"),
        ({"task": "binary"}, "task"),
    ],
)
def test_incompatible_states_do_not_merge(change: dict[str, Any], field: str) -> None:
    logits, labels = draw_multiclass(seed=2, n=50, c=2)
    first = calibration_report(logits=logits, labels=labels, top_k=[1]).state
    options: dict[str, Any] = {"n_bins": 15, "top_k": [1], **change}
    task = options.pop("task", "multiclass")
    scores = logits[:, 1] - logits[:, 0] if task == "binary" else logits
    other = calibration_report(logits=scores, labels=labels, **options).state
    with pytest.raises(InvalidInput, match=rf"^states\[1\]\.{field}: ") as error:
        merge([first, other])
    assert error.value.field == ("states", 1, field)


def test_state_wire_form_round_trips_and_is_checked() -> None:
    logits, labels = draw_multiclass(seed=5, n=40, c=3)
    state = calibration_report(logits=logits, labels=labels, top_k=[2]).state
    wire = state.to_dict()
    assert wire["version"] == 1 and wire["mergeable"] is True
    assert CalibrationState.from_dict(wire).to_dict() == wire
    broken: list[tuple[dict[str, Any], str]] = [
        ({"version": 2}, "state.version"),
        ({"n": 41}, "state.bins.count"),
        ({"bins": {**wire["bins"], "count": [-1, *wire["bins"]["count"][1:]]}}, "state.bins.count"),
        ({"edges": [0.0] * 16}, "state.edges"),
        ({"sum_brier": -1.0}, "state.sum_brier"),
        ({"top_k_hits": [1, 2]}, "state.top_k_hits"),
        ({"n_correct": 99}, "state.n_correct"),
    ]
    for change, field in broken:
        with pytest.raises(InvalidInput, match=rf"^{field}: "):
            CalibrationState.from_dict({**wire, **change})


def test_classwise_bins_are_dropped_for_many_classes() -> None:
    c = MAX_CLASSWISE_CELLS // 15 + 1
    logits = np.zeros((2, c))
    report = calibration_report(logits=logits, labels=np.array([0, 1]))
    assert report.state.classwise is None and report.metrics.classwise_ece is None
    assert report.metrics.ece == pytest.approx(abs(1 - 2 / c) / 2, rel=1e-12)


def test_classwise_ece_written_out(xp: ModuleType) -> None:
    logits, labels = draw_multiclass(seed=9, n=300, c=4)
    m = calibration_report(logits=xp.asarray(logits), labels=xp.asarray(labels), n_bins=8).metrics
    p = softmax(logits)
    per_class = []
    for c in range(4):
        index = np.minimum((p[:, c] * 8).astype(int), 7)
        gap = [abs((p[:, c] - (labels == c))[index == b].sum()) for b in range(8)]
        per_class.append(sum(gap) / 300)
    assert m.classwise_ece == pytest.approx(np.mean(per_class), rel=1e-12)


# --- empty and degenerate inputs ---------------------------------------------------------------


@pytest.mark.parametrize("scores", [np.zeros((0, 4)), np.zeros(0)], ids=["multiclass", "binary"])
def test_empty_input_gives_nulls_and_zero_counts(scores: np.ndarray, xp: ModuleType) -> None:
    report = calibration_report(
        logits=xp.asarray(scores),
        labels=xp.asarray(np.zeros(0, dtype=np.int64)),
        top_k=[1],
        fit_temperature=True,
        n_bootstrap=10,
        seed=0,
        smooth_ece=True,
    )
    m = report.metrics
    assert m.n == 0
    for name in ("ece", "mce", "rmsce", "ece_debiased", "classwise_ece", "brier", "nll"):
        assert getattr(m, name) is None, name
    assert m.accuracy is None and m.mean_confidence is None and m.top_k_accuracy == ((1, None),)
    assert all(b.count == 0 and b.accuracy is None for b in m.bins)
    assert report.temperature is not None and report.temperature.value == 1.0
    assert report.bootstrap is not None and report.bootstrap.ece is None
    assert report.smooth_ece is None
    json.dumps(report.state.to_dict(), allow_nan=False)


def test_single_class_scores() -> None:
    m = calibration_report(logits=np.zeros((5, 1)), labels=np.zeros(5, dtype=np.int64)).metrics
    assert (m.ece, m.brier, m.nll, m.accuracy, m.mean_confidence) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert m.bins[-1].count == 5


def test_labels_of_a_single_class(xp: ModuleType) -> None:
    p = np.array([0.9, 0.8, 0.3])
    m = calibration_report(
        probs=xp.asarray(p), labels=xp.asarray(np.ones(3, dtype=np.int64))
    ).metrics
    assert m.accuracy == pytest.approx(2 / 3)
    assert m.brier == pytest.approx(np.mean((p - 1) ** 2))
    assert m.ece == pytest.approx(np.mean(1 - p))


def test_zero_probability_on_the_label_costs_the_nll_cap() -> None:
    m = calibration_report(probs=np.array([0.0, 1.0]), labels=np.array([1, 1])).metrics
    assert m.nll == pytest.approx(NLL_CAP / 2)
    masked = np.array([[0.0, -np.inf], [1.0, 0.0]])
    m = calibration_report(logits=masked, labels=np.array([1, 0])).metrics
    assert m.nll == pytest.approx((NLL_CAP + np.log1p(np.exp(-1.0))) / 2)
    assert math.isfinite(m.brier or math.nan)


def test_logits_and_probabilities_agree() -> None:
    logits, labels = draw_multiclass(seed=4, n=200, c=5)
    a = calibration_report(logits=logits, labels=labels, top_k=[2]).metrics
    b = calibration_report(probs=softmax(logits), labels=labels, top_k=[2]).metrics
    assert_same_metrics(a, b, rel=1e-12)


def test_binary_scores_equal_their_two_class_form() -> None:
    """[N] binary scores: the bins hold p against the label, the rest is the 2-class report."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=300) * 2
    y = (rng.uniform(size=300) < 0.5).astype(np.int64)
    binary = calibration_report(logits=x, labels=y).metrics
    two = calibration_report(logits=np.stack([np.zeros(300), x], axis=1), labels=y).metrics
    assert binary.task == "binary" and binary.n_classes == 2
    for name in ("nll", "accuracy", "classwise_ece"):
        assert getattr(binary, name) == pytest.approx(getattr(two, name), rel=1e-12), name
    assert two.brier is not None
    assert binary.brier == pytest.approx(two.brier / 2, rel=1e-12)  # (p - y)^2: scikit-learn's
    p = 1 / (1 + np.exp(-x))
    assert binary.mean_confidence == pytest.approx(p.mean(), rel=1e-12)
    index = np.minimum((p * 15).astype(int), 14)
    ece = sum(abs((p - y)[index == b].sum()) for b in range(15)) / 300
    assert binary.ece == pytest.approx(ece, rel=1e-12)


def test_top_k_ties_follow_argmax_order() -> None:
    logits = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    labels = np.array([0, 1, 2])
    m = calibration_report(logits=logits, labels=labels, top_k=[1, 2, 3, 5]).metrics
    assert m.accuracy == pytest.approx(1 / 3)
    assert dict(m.top_k_accuracy) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0, 5: 1.0})


# --- input checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"logits": np.zeros((2, 3)), "probs": np.full((2, 3), 1 / 3)}, "logits"),
        ({}, "logits"),
        ({"probs": np.array([[0.5, 0.6], [0.5, 0.5]])}, "probs"),
        ({"probs": np.array([[1.5, -0.5], [0.5, 0.5]])}, "probs"),
        ({"probs": np.array([0.5, 1.5])}, "probs"),
        ({"logits": np.zeros((2, 2, 2))}, "logits"),
        ({"logits": np.array([[0.0, 1.0], [-np.inf, -np.inf]])}, "logits"),
        ({"logits": np.zeros((2, 2)), "labels": np.array([0, 2])}, "labels"),
        ({"logits": np.zeros(2), "labels": np.array([0, 2])}, "labels"),
        ({"logits": np.zeros((2, 2)), "labels": np.array([0.5, 1.0])}, "labels"),
        ({"logits": np.zeros((2, 2)), "labels": np.array([0, 1, 1])}, "labels"),
        ({"logits": np.zeros((2, 2)), "labels": np.array([True, False])}, "labels"),
        ({"logits": np.zeros((2, 0))}, "logits"),
    ],
)
def test_invalid_inputs_name_their_field(inputs: dict[str, Any], field: str) -> None:
    inputs = {"labels": np.array([0, 1]), **inputs}
    with pytest.raises(InvalidInput, match=rf"^{field}: ") as error:
        calibration_report(**inputs)
    assert error.value.field == (field,)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"n_bins": 0}, "n_bins"),
        ({"binning": "equal"}, "binning"),
        ({"top_k": [1, 0]}, "top_k[1]"),
        ({"n_bootstrap": -1}, "n_bootstrap"),
        ({"n_bootstrap": 11, "max_bootstrap": 10}, "n_bootstrap"),
        ({"confidence_level": 1.0}, "confidence_level"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_options_name_their_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^{re.escape(field)}: "):
        calibration_report(logits=np.zeros((2, 2)), labels=np.array([0, 1]), **options)


def test_inputs_are_not_modified() -> None:
    logits, labels = draw_multiclass(seed=1, n=50, c=3)
    before = logits.copy(), labels.copy()
    calibration_report(logits=logits, labels=labels, fit_temperature=True, n_bootstrap=5, seed=1)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(labels, before[1])


# --- temperature scaling -----------------------------------------------------------------------


def nll_at_log_temperature(logits: np.ndarray, labels: np.ndarray, s: float) -> float:
    z = logits * math.exp(-s)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def test_temperature_recovers_the_generating_temperature(xp: ModuleType) -> None:
    logits, labels = draw_multiclass(seed=21, n=20000, c=5, temperature=2.5)
    fit = fit_temperature(xp.asarray(logits), xp.asarray(labels))
    assert fit.converged
    assert fit.value == pytest.approx(2.5, rel=0.05)  # sampling noise of 20000 labels


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_temperature_matches_scipy(task: str, xp: ModuleType) -> None:
    if task == "binary":  # labels ~ Bernoulli(sigmoid(x / 0.6)), as [0, x] two-class logits
        rng = np.random.default_rng(22)
        x = rng.normal(size=2000) * 2
        labels = (rng.uniform(size=2000) < 1 / (1 + np.exp(-x / 0.6))).astype(np.int64)
        logits = np.stack([np.zeros(2000), x], axis=1)
    else:
        logits, labels = draw_multiclass(seed=22, n=2000, c=4, temperature=0.6)
    best = minimize_scalar(
        lambda s: nll_at_log_temperature(logits, labels, s),
        bounds=(-5, 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    scores = logits[:, 1] if task == "binary" else logits
    report = calibration_report(
        logits=xp.asarray(scores), labels=xp.asarray(labels), fit_temperature=True
    )
    t = report.temperature
    assert t is not None and t.converged
    assert t.value == pytest.approx(math.exp(best.x), rel=1e-6)
    assert t.nll_after == pytest.approx(best.fun, rel=1e-9)
    assert t.nll_before == pytest.approx(nll_at_log_temperature(logits, labels, 0.0), rel=1e-9)
    assert t.nll_after is not None and t.nll_before is not None and t.nll_after < t.nll_before
    assert t.ece_after is not None and t.ece_before is not None


def test_temperature_from_probabilities_scales_their_logarithms() -> None:
    logits, labels = draw_multiclass(seed=23, n=500, c=3)
    from_logits = calibration_report(logits=logits, labels=labels, fit_temperature=True)
    from_probs = calibration_report(probs=softmax(logits), labels=labels, fit_temperature=True)
    assert from_logits.temperature is not None and from_probs.temperature is not None
    assert from_probs.temperature.value == pytest.approx(from_logits.temperature.value, rel=1e-8)


def test_temperature_on_separable_data_stops_at_the_bound() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [5.0, 1.0]])
    fit = fit_temperature(logits, np.array([0, 1, 0]))
    assert not fit.converged and fit.value == pytest.approx(1e-4)


def test_temperature_ignores_rows_whose_label_is_masked() -> None:
    logits, labels = draw_multiclass(seed=24, n=300, c=3)
    masked = logits.copy()
    masked[0, labels[0]] = -np.inf
    alone = fit_temperature(logits[1:], labels[1:])
    assert fit_temperature(masked, labels).value == pytest.approx(alone.value, rel=1e-12)


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_is_reproducible_and_equals_a_loop(xp: ModuleType) -> None:
    logits, labels = draw_multiclass(seed=31, n=200, c=4)
    options: dict[str, Any] = {"n_bins": 10, "n_bootstrap": 50, "confidence_level": 0.9}
    args = {"logits": xp.asarray(logits), "labels": xp.asarray(labels)}
    a = calibration_report(**args, seed=7, **options).bootstrap
    b = calibration_report(**args, seed=7, **options).bootstrap
    c = calibration_report(**args, seed=8, **options).bootstrap
    assert a == b and a != c
    assert a is not None and a.seed == 7 and a.n_bootstrap == 50
    # The same resamples, one at a time, with the metrics written out.
    p = softmax(logits)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == labels).astype(float)
    nll = -np.log(p[np.arange(200), labels])
    index = np.minimum((conf * 10).astype(int), 9)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, 200, size=(50, 200))
    ece, mce, acc, nlls = [], [], [], []
    for row in draws:
        gaps = [abs((hit - conf)[row][index[row] == k].sum()) for k in range(10)]
        counts = [np.count_nonzero(index[row] == k) for k in range(10)]
        ece.append(sum(gaps) / 200)
        mce.append(max(g / n for g, n in zip(gaps, counts, strict=True) if n))
        acc.append(hit[row].mean())
        nlls.append(nll[row].mean())
    for name, values in (("ece", ece), ("mce", mce), ("accuracy", acc), ("nll", nlls)):
        interval = getattr(a, name)
        lower, upper = np.quantile(values, [0.05, 0.95])
        assert (interval.lower, interval.upper) == pytest.approx((lower, upper), rel=1e-12), name


def test_bootstrap_without_a_seed_reports_the_one_drawn() -> None:
    logits, labels = draw_multiclass(seed=32, n=30, c=3)
    first = calibration_report(logits=logits, labels=labels, n_bootstrap=20).bootstrap
    assert first is not None
    again = calibration_report(logits=logits, labels=labels, n_bootstrap=20, seed=first.seed)
    assert again.bootstrap == first


def test_bootstrap_interval_brackets_the_estimate() -> None:
    logits, labels = draw_multiclass(seed=33, n=2000, c=5)
    report = calibration_report(logits=logits, labels=labels, n_bootstrap=200, seed=0)
    assert report.bootstrap is not None and report.bootstrap.brier is not None
    assert report.bootstrap.brier.lower < (report.metrics.brier or 0) < report.bootstrap.brier.upper


# --- the package's surface ---------------------------------------------------------------------


def test_all_is_complete() -> None:
    import service.engine.calibration as package

    public = {name for name in dir(package) if not name.startswith("_")}
    modules = {name for name in public if isinstance(getattr(package, name), ModuleType)}
    assert set(package.__all__) == public - modules


@pytest.mark.system
def test_imports_no_web_framework_plotting_or_cupy() -> None:
    code = (
        "import sys, service.engine.calibration; print(sorted(m for m in "
        "('fastapi', 'pydantic', 'cupy', 'starlette', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_probabilities_sum_to_one_within_their_resolution(dtype: Any) -> None:
    p = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]], dtype=dtype)
    assert abs(float(p.astype(np.float64).sum(axis=1)[0]) - 1) > 1e-6
    m = calibration_report(probs=p, labels=np.array([2, 0])).metrics
    assert m.mean_confidence == pytest.approx(float(p.astype(np.float64).max(axis=1).mean()))


def test_quantile_state_round_trips_with_its_per_class_edges() -> None:
    logits, labels = draw_multiclass(seed=6, n=90, c=3)
    state = calibration_report(logits=logits, labels=labels, binning="quantile", n_bins=4).state
    wire = state.to_dict()
    assert wire["mergeable"] is False and len(wire["classwise"]["edges"]) == 3
    assert CalibrationState.from_dict(json.loads(json.dumps(wire))).to_dict() == wire
