"""The reliability diagram as drawn: what its legend says, its ticks, and its SVG's text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from service.engine.calibration import CalibrationMetrics, calibration_report
from service.plots import draw, reliability_diagram

SVG = "{http://www.w3.org/2000/svg}"


def metrics(confidence: list[float], correct: list[bool], **options: Any) -> CalibrationMetrics:
    """Binary scores whose labels make each sample right or wrong as asked."""
    probs = np.array(confidence)
    labels = np.where(np.array(correct), probs > 0.5, probs <= 0.5).astype(np.int64)
    return calibration_report(probs=probs, labels=labels, **options).metrics


# Over-confident bins (0.9: half right) and under-confident ones (0.6: all right): the gap lies
# above the bar in some bins and over it in others. Four samples: counts of 0, 1 and 2.
MIXED = metrics([0.9, 0.9, 0.6, 0.65], [True, False, True, True], n_bins=10)


def colours(axes: Axes) -> set[tuple[float, ...]]:
    """Every colour the data artists of `axes` draw with: fills, edges, hatches, lines."""
    found: set[tuple[float, ...]] = set()
    for patch in axes.patches:
        if patch.get_fill():
            found.add(to_rgba(patch.get_facecolor()))
        if patch.get_linewidth() > 0:
            found.add(to_rgba(patch.get_edgecolor()))
        if patch.get_hatch():
            found.add(to_rgba(patch.get_hatchcolor()))
    found |= {to_rgba(line.get_color()) for line in axes.lines}
    return found


def legend_colours(axes: Axes) -> set[tuple[float, ...]]:
    legend = axes.get_legend()
    assert legend is not None
    found: set[tuple[float, ...]] = set()
    for handle in legend.legend_handles:
        if isinstance(handle, Line2D):
            found.add(to_rgba(handle.get_color()))
        else:
            assert isinstance(handle, Patch)
            if handle.get_fill():
                found.add(to_rgba(handle.get_facecolor()))
            found.add(to_rgba(handle.get_edgecolor()))
            if handle.get_hatch():
                found.add(to_rgba(handle.get_hatchcolor()))
    return found


def test_the_legend_lists_every_colour_drawn() -> None:
    figure = draw(MIXED)
    for axes in figure.axes:
        assert colours(axes) <= legend_colours(axes)
        # A translucent fill over another artist would blend into a colour of neither.
        for patch in axes.patches:
            assert not patch.get_fill() or patch.get_alpha() in (None, 1.0), patch


def test_the_gap_of_an_under_confident_bin_is_drawn_over_its_bar() -> None:
    """The case the hatching is for: accuracy 1 above a confidence of 0.6."""
    bin_6 = MIXED.bins[6]
    assert bin_6.accuracy == 1.0 and bin_6.mean_confidence is not None
    top = draw(MIXED).axes[0]
    hatched = [p for p in top.patches if p.get_hatch()]
    assert all(isinstance(p, Rectangle) for p in hatched), hatched
    gaps = [p for p in hatched if isinstance(p, Rectangle) and abs(p.get_x() - 0.6) < 1e-9]
    [gap] = gaps
    assert gap.get_y() == pytest.approx(1.0)
    assert gap.get_height() == pytest.approx(bin_6.mean_confidence - 1.0)
    assert not gap.get_fill()


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_the_count_axis_has_whole_number_ticks(n: int) -> None:
    bottom = draw(metrics([0.7] * n, [True] * n, n_bins=5)).axes[1]
    lower, upper = bottom.get_ylim()
    ticks = [t for t in bottom.get_yticks() if lower <= t <= upper]
    assert len(ticks) >= 2
    assert all(float(t).is_integer() for t in ticks), ticks


def test_quantile_bins_keep_a_density_axis() -> None:
    bottom = draw(metrics([0.55, 0.6, 0.7, 0.9], [True] * 4, binning="quantile")).axes[1]
    assert bottom.get_ylabel() == "Density"


def test_the_svg_keeps_its_text_as_text() -> None:
    svg = reliability_diagram(MIXED, "svg")
    texts = [
        "".join(element.itertext()).strip() for element in ET.fromstring(svg).iter(f"{SVG}text")
    ]
    # The bin edges on the confidence axis, the axes' names, the legend, the title.
    for label in ("0.0", "0.2", "0.4", "0.6", "0.8", "1.0"):
        assert label in texts
    assert "Predicted probability of class 1" in texts
    assert "Observed frequency" in texts
    assert "Gap to mean prediction" in texts
    assert any(text.startswith("Reliability diagram: ECE =") for text in texts)
    assert b"<path" in svg  # the bars are still shapes
