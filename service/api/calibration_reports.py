"""A calibration report as the API answers it, for /v1/calibration and /v1/evaluate alike."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from service.api.schemas.calibration import CalibrationOptions, CalibrationResponse
from service.engine import Array, calibration

if TYPE_CHECKING:
    from service.api.compute import ComputeContext


def report(
    inputs: dict[str, Array], options: CalibrationOptions, compute: ComputeContext
) -> CalibrationResponse:
    """The report on decoded `logits` or `probs` and `labels`, with every option asked for."""
    return response(
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
            max_bootstrap=compute.settings.max_bootstrap,
        ),
        compute,
    )


def response(report: calibration.CalibrationReport, compute: ComputeContext) -> CalibrationResponse:
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
            "backend": compute.backend.name,
        }
    )
