"""Smooth ECE against `relplot`, the reference implementation of Blasiok & Nakkiran (2023).

relplot is a test-only dependency (it pulls in pandas and seaborn for its plots).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from service.engine.calibration import calibration_report, smooth_ece, smooth_ece_at

relplot_metrics = pytest.importorskip("relplot.metrics", reason="relplot is a test dependency")

RELPLOT_HALVINGS = 10  # relplot's bandwidth search stops at a bracket of 2^-10


def sample(seed: int, n: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """Confidences and outcomes with P(y = 1 | f) = f^power: miscalibrated unless power = 1."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(size=n)
    return f, (rng.uniform(size=n) < f**power).astype(np.float64)


@pytest.mark.parametrize("sigma", [0.003, 0.02, 0.05, 0.2, 0.7])
@pytest.mark.parametrize(("seed", "n", "power"), [(0, 400, 1.3), (1, 3000, 2.0), (2, 1000, 1.0)])
def test_fixed_bandwidth_equals_relplot(
    seed: int, n: int, power: float, sigma: float, xp: ModuleType
) -> None:
    f, y = sample(seed, n, power)
    ours = smooth_ece_at(xp.asarray(f), xp.asarray(y), sigma)
    assert ours == pytest.approx(relplot_metrics.smECE_sigma(f, y, sigma), rel=1e-9)


@pytest.mark.parametrize(("seed", "n", "power"), [(0, 400, 1.3), (1, 3000, 2.0), (3, 5000, 1.1)])
def test_bandwidth_is_the_fixed_point_relplot_brackets(seed: int, n: int, power: float) -> None:
    f, y = sample(seed, n, power)
    ours = smooth_ece(f, y)
    assert ours is not None
    value, width = relplot_metrics.smECE(f, y, return_width=True)
    # relplot returns the upper end of a bracket of width 2^-10 around the fixed point.
    assert width - 2.0**-RELPLOT_HALVINGS <= ours.bandwidth <= width
    assert ours.value == pytest.approx(ours.bandwidth, abs=1e-6)  # the fixed point itself
    assert ours.value == pytest.approx(value, abs=2.0**-RELPLOT_HALVINGS)
    assert ours.value == pytest.approx(smooth_ece_at(f, y, ours.bandwidth), rel=1e-12)


def test_report_uses_top_label_confidence_and_correctness() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(500, 4)) * 2
    labels = rng.integers(0, 4, size=500)
    report = calibration_report(logits=logits, labels=labels, smooth_ece=True)
    assert report.smooth_ece is not None
    f, correct = relplot_metrics.multiclass_logits_to_confidences(logits, labels)
    expected = smooth_ece_at(f, correct, report.smooth_ece.bandwidth)
    assert report.smooth_ece.value == pytest.approx(expected, rel=1e-9)
    theirs = relplot_metrics.smECE_sigma(f, correct, report.smooth_ece.bandwidth)
    assert report.smooth_ece.value == pytest.approx(theirs, rel=1e-9)


def test_calibrated_sample_has_a_small_smooth_ece() -> None:
    f, y = sample(5, 20000, 1.0)
    result = smooth_ece(f, y)
    assert result is not None and result.value < 0.02
