"""Use cases: a calibration report, the report of merged shard states, the reliability diagram.

`/v1/calibration`, `/v1/evaluate`, `/v1/calibration/merge` and evaluation runs answer with the
same `CalibrationResponse`, built by `report_response`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from service.core.context import Context
from service.engine import Array, calibration
from service.errors import LimitExceeded
from service.plots import ImageFormat, reliability_diagram
from service.schemas.calibration import (
    CalibrationInputs,
    CalibrationMergeRequest,
    CalibrationOptions,
    CalibrationRequest,
    CalibrationResponse,
    ReliabilityDiagramRequest,
)


def calibrate(body: CalibrationRequest, *, ctx: Context) -> CalibrationResponse:
    """`POST /v1/calibration`: the report on the body's scores and labels."""
    return calibration_response(decode_scores(body, ctx=ctx), body, ctx=ctx)


def merge_states(body: CalibrationMergeRequest, *, ctx: Context) -> CalibrationResponse:
    """`POST /v1/calibration/merge`: the report of the union of the shards the states describe."""
    states = [
        calibration.CalibrationState.from_dict(state.model_dump(), ("states", i))
        for i, state in enumerate(body.states)
    ]
    return report_response(calibration.merge_report(states), ctx=ctx)


def diagram_metrics(
    body: ReliabilityDiagramRequest, *, ctx: Context
) -> calibration.CalibrationMetrics:
    """What the reliability diagram of the body's scores and labels shows (`draw_diagram` draws
    it). A figure costs time per bin (1000 bins: ~10 s of matplotlib): at most
    `max_diagram_bins`."""
    check_diagram_bins(body.n_bins, "n_bins", ctx=ctx)
    report = calibration.calibration_report(
        **decode_scores(body, ctx=ctx), n_bins=body.n_bins, binning=body.binning
    )
    return report.metrics


def check_diagram_bins(n_bins: int, field: str, *, ctx: Context) -> None:
    """A figure costs time per bin: at most `max_diagram_bins` are drawn."""
    if n_bins > ctx.settings.max_diagram_bins:
        raise LimitExceeded(
            f"{field}: {n_bins} bins exceed max_diagram_bins = "
            f"{ctx.settings.max_diagram_bins} for a diagram",
            field=field,
        )


def draw_diagram(
    metrics: calibration.CalibrationMetrics, image_format: ImageFormat, *, ctx: Context
) -> bytes:
    """The reliability diagram of `metrics`, as PNG or SVG bytes."""
    return reliability_diagram(metrics, image_format)


def decode_scores(body: CalibrationInputs, *, ctx: Context) -> dict[str, Any]:
    """`logits` or `probs`, and `labels`, on the backend; `probs` counts against max_classes."""
    arrays, _ = ctx.decode_tensors(body)
    if "probs" in arrays:
        ctx.check_classes(("probs",), arrays["probs"])
    return arrays


def calibration_response(
    inputs: dict[str, Array], options: CalibrationOptions, *, ctx: Context
) -> CalibrationResponse:
    """The report on decoded `logits` or `probs` and `labels`, with every option asked for."""
    return report_response(
        calibration.calibration_report(
            **inputs,
            n_bins=options.n_bins,
            binning=options.binning,
            top_k=options.top_k,
            fit_temperature=options.fit_temperature,
            n_bootstrap=options.n_bootstrap,
            confidence_level=options.confidence_level,
            seed=options.seed,
            smooth_ece=options.smooth_ece,
            max_bootstrap=ctx.settings.max_bootstrap,
        ),
        ctx=ctx,
    )


def report_response(report: calibration.CalibrationReport, *, ctx: Context) -> CalibrationResponse:
    m = report.metrics
    return CalibrationResponse.model_validate(
        {
            "task": m.task,
            "n": m.n,
            "n_classes": m.n_classes,
            "n_bins": m.n_bins,
            "binning": m.binning,
            "ece": m.ece,
            "mce": m.mce,
            "rmsce": m.rmsce,
            "ece_debiased": m.ece_debiased,
            "classwise_ece": m.classwise_ece,
            "brier": m.brier,
            "nll": m.nll,
            "accuracy": m.accuracy,
            "mean_confidence": m.mean_confidence,
            "top_k_accuracy": [{"k": k, "accuracy": value} for k, value in m.top_k_accuracy],
            "bins": [asdict(b) for b in m.bins],
            "temperature": None if report.temperature is None else asdict(report.temperature),
            "bootstrap": None if report.bootstrap is None else asdict(report.bootstrap),
            "smooth_ece": None if report.smooth_ece is None else asdict(report.smooth_ece),
            "state": report.state.to_dict(),
            "backend": ctx.backend.name,
        }
    )
