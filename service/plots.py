"""The reliability diagram (Guo et al. 2017, figure 1 style), drawn with matplotlib's Agg canvas.

Top: the accuracy of each bin (binary: the observed frequency of the positive class) as a bar
over the bin's span, the gap to the bin's mean confidence hatched, and the diagonal of perfect
calibration. The gap is hatched, never filled: it lies over the bar where the accuracy is above
the confidence, and a translucent fill there would draw a colour the legend does not have.
Bottom: the histogram of confidences (the bin counts, on whole-number ticks; the density for
quantile bins, whose counts are equal by construction), with the overall accuracy and mean
confidence marked. ECE in the title. The SVG keeps its text as text (`svg.fonttype: none`), so
that it can be selected and searched.

matplotlib is imported on first use, so `import service` stays light, and only the object API is
used (`Figure` + `FigureCanvasAgg`, never pyplot and its global figure manager). matplotlib does
not promise thread safety, and routes run on worker threads, so drawing holds a lock.
"""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING, Literal

from service.engine.calibration import CalibrationMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ImageFormat = Literal["png", "svg"]
MEDIA_TYPES: dict[ImageFormat, str] = {"png": "image/png", "svg": "image/svg+xml"}
WIDTH_IN, HEIGHT_IN, DPI = 6.0, 7.0, 100  # PNG: 600 x 700 pixels; SVG: 432 x 504 pt

_LOCK = threading.Lock()
ACCURACY_COLOR = "#1f77b4"
GAP_COLOR = "#d62728"


def reliability_diagram(metrics: CalibrationMetrics, image_format: ImageFormat) -> bytes:
    """The diagram of `metrics` as PNG or SVG bytes."""
    import matplotlib

    with _LOCK:
        figure = draw(metrics)
        buffer = io.BytesIO()
        if image_format == "svg":
            # Text as <text> elements in the font's name, not as glyph outlines (the default).
            with matplotlib.rc_context({"svg.fonttype": "none"}):
                figure.savefig(buffer, format="svg", metadata={"Date": None})
        else:
            figure.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


def draw(metrics: CalibrationMetrics) -> Figure:
    """The diagram as a matplotlib figure on an Agg canvas (hold `_LOCK` while drawing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    binary = metrics.task == "binary"
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]}, squeeze=True
    )
    filled = [b for b in metrics.bins if b.count]
    lefts = [b.lower for b in filled]
    widths = [b.upper - b.lower for b in filled]
    accuracy = [b.accuracy or 0.0 for b in filled]
    confidence = [b.mean_confidence or 0.0 for b in filled]
    observed_label = "Observed frequency" if binary else "Accuracy"

    top.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=1, label="Perfect calibration")
    top.bar(
        lefts,
        accuracy,
        width=widths,
        align="edge",
        color=ACCURACY_COLOR,
        edgecolor="black",
        linewidth=0.6,
        label=observed_label,
    )
    top.bar(
        lefts,
        [c - a for a, c in zip(accuracy, confidence, strict=True)],
        bottom=accuracy,
        width=widths,
        align="edge",
        fill=False,
        edgecolor=GAP_COLOR,
        hatch="//",
        linewidth=0.6,
        label="Gap to mean prediction" if binary else "Gap to mean confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_aspect("auto")
    top.set_ylabel(observed_label)
    top.grid(True, linewidth=0.4, alpha=0.5)
    top.legend(loc="upper left", fontsize="small", frameon=True)
    top.set_title(_title(metrics), fontsize="medium")
    if metrics.n:
        summary = _summary(metrics)
        top.text(  # under the legend: the upper left stays clear unless T is far below 1
            0.03,
            0.79,
            summary,
            transform=top.transAxes,
            ha="left",
            va="top",
            fontsize="small",
            family="monospace",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
        )

    # Quantile bins hold equal counts by construction: their histogram shows density instead.
    density = metrics.binning == "quantile" and metrics.n > 0
    widths_all = [b.upper - b.lower for b in metrics.bins]
    heights = [
        b.count / (metrics.n * w) if density and w > 0 else float(b.count)
        for b, w in zip(metrics.bins, widths_all, strict=True)
    ]
    bottom.bar(
        [b.lower for b in metrics.bins],
        heights,
        width=widths_all,
        align="edge",
        color="0.55",
        edgecolor="black",
        linewidth=0.6,
        label="Density" if density else "Samples",
    )
    if metrics.n:
        observed = sum(b.accuracy * b.count for b in filled if b.accuracy is not None) / metrics.n
        mean_conf = metrics.mean_confidence or 0.0
        mean_label = "Mean prediction" if binary else "Mean confidence"
        bottom.axvline(observed, color=ACCURACY_COLOR, linewidth=1.5, label=observed_label)
        bottom.axvline(mean_conf, color=GAP_COLOR, linewidth=1.5, linestyle="--", label=mean_label)
        bottom.legend(loc="upper left", fontsize="x-small")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Predicted probability of class 1" if binary else "Confidence")
    bottom.set_ylabel("Density" if density else "Count")
    if not density:
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True))  # no tick at half a sample
    bottom.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    return figure


def _title(metrics: CalibrationMetrics) -> str:
    if not metrics.n:
        return "Reliability diagram: no samples"
    ece = metrics.ece or 0.0
    return (
        f"Reliability diagram: ECE = {100 * ece:.2f}%\n"
        f"{metrics.n_bins} {metrics.binning} bins, N = {metrics.n:,}"
    )


def _summary(metrics: CalibrationMetrics) -> str:
    rows = [("ECE", metrics.ece), ("MCE", metrics.mce), ("RMSCE", metrics.rmsce)]
    rows += [("Brier", metrics.brier), ("NLL", metrics.nll), ("Accuracy", metrics.accuracy)]
    return "\n".join(f"{name:<9} {value:.4f}" for name, value in rows if value is not None)
