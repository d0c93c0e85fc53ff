"""A batch's sums, their running total, and the report computed from it (pure functions).

Totals are JSON, as the store keeps them::

    {"losses": [{"total": float, "divisor": float, "n_valid": int}, ...],
     "n_classes": int | null,        # the class axis of the first batch's logits (binary: 0)
     "calibration": state | null}    # the calibration state's wire form

Sums of float64 add in float64 (a run's report equals the report on the concatenation of its
batches to float64 rounding); counts are Python integers, exact at any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import engine
from service.core.context import Context
from service.core.evaluate import within
from service.core.losses import call_loss
from service.core.registry import BY_NAME
from service.core.runs.models import RunLossTotal, RunSpec
from service.engine import calibration
from service.errors import InvalidInput

# Rows with this label are left out of the calibration statistics (the losses' default
# ignore_index: a padded position has no prediction to calibrate).
IGNORED_LABEL = -100


@dataclass(frozen=True)
class LossSums:
    total: float  # sum of the per-sample losses, in float64
    divisor: float  # what `mean` divides by
    n_valid: int


@dataclass(frozen=True)
class BatchStatistics:
    n_samples: int
    n_classes: int  # the class axis of the logits; 0 for binary [N] scores
    losses: tuple[LossSums, ...]
    calibration: calibration.CalibrationState | None


def initial_totals(spec: RunSpec) -> dict[str, Any]:
    return {
        "losses": [{"total": 0.0, "divisor": 0.0, "n_valid": 0} for _ in spec.losses],
        "n_classes": None,
        "calibration": None,
    }


def batch_statistics(
    spec: RunSpec, logits: np.ndarray, labels: np.ndarray, *, ctx: Context
) -> BatchStatistics:
    """The sums of one batch of decoded tensors: the losses as `/v1/evaluate` computes them, the
    calibration state as `/v1/calibration` does (without the -100 rows)."""
    # As /v1/evaluate: cast once, share the softmax, one engine call per loss.
    x = engine.to_compute_dtype(ctx.backend.asarray(logits), spec.compute_dtype)
    y = ctx.backend.asarray(labels)
    sums = []
    with engine.shared_softmax(x):
        for index, item in enumerate(spec.losses):
            path = ("losses", index)
            options, _ = ctx.decode_tensors(item, path)
            try:
                result = call_loss(
                    BY_NAME[item.name],
                    {"logits": x, "labels": y, **options},
                    item,
                    compute_dtype=spec.compute_dtype,
                    reduction=item.reduction,
                )
            except InvalidInput as error:
                raise within(error, path) from None
            total = result.total
            if total is None:
                xp = engine.array_namespace(result.per_sample)
                total = float(xp.sum(result.per_sample, dtype=xp.float64))
            sums.append(LossSums(total, float(result.divisor), int(result.n_valid)))
    state = None
    if spec.calibration is not None:
        wanted = spec.calibration
        if y.ndim != 1:
            raise InvalidInput(
                f"labels: calibration needs class indices [N], got shape {list(y.shape)}",
                field="labels",
            )
        kept = y != IGNORED_LABEL
        state = calibration.calibration_state(
            logits=x[kept],
            labels=y[kept],
            n_bins=wanted.n_bins,
            binning=wanted.binning,
            top_k=wanted.top_k,
        )
    shape = logits.shape
    return BatchStatistics(
        n_samples=math.prod(shape[:-1]) if len(shape) > 1 else math.prod(shape),
        n_classes=shape[-1] if len(shape) > 1 else 0,
        losses=tuple(sums),
        calibration=state,
    )


def fold(totals: dict[str, Any], batch: BatchStatistics) -> dict[str, Any]:
    """`totals` with `batch` added. A batch whose logits have another class axis than the run's
    earlier batches is an InvalidInput naming `logits`."""
    if totals["n_classes"] is not None and totals["n_classes"] != batch.n_classes:
        raise InvalidInput(
            f"logits: {_classes(batch.n_classes)}, but this run's batches have "
            f"{_classes(totals['n_classes'])}",
            field="logits",
        )
    losses = [
        {
            "total": before["total"] + added.total,
            "divisor": before["divisor"] + added.divisor,
            "n_valid": before["n_valid"] + added.n_valid,
        }
        for before, added in zip(totals["losses"], batch.losses, strict=True)
    ]
    state = totals["calibration"]
    if batch.calibration is not None:
        merged = batch.calibration
        if state is not None:
            earlier = calibration.CalibrationState.from_dict(state, ("calibration",))
            merged = calibration.merge([earlier, batch.calibration], ("calibration",))
        state = merged.to_dict()
    return {"losses": losses, "n_classes": batch.n_classes, "calibration": state}


def _classes(n_classes: int) -> str:
    return "binary scores [N]" if n_classes == 0 else f"{n_classes} classes"


def loss_totals(spec: RunSpec, totals: dict[str, Any]) -> list[RunLossTotal]:
    """Each loss reduced over every batch, as its entry's `reduction` and `empty` ask."""
    answers = []
    for item, sums in zip(spec.losses, totals["losses"], strict=True):
        loss = engine.reduce_total(sums["total"], sums["divisor"], item.reduction, empty=item.empty)
        answers.append(
            RunLossTotal(
                name=item.name,
                loss=None if math.isnan(loss) else loss,
                n_valid=sums["n_valid"],
                weight_sum=sums["divisor"],
            )
        )
    return answers


def calibration_state(totals: dict[str, Any]) -> calibration.CalibrationState | None:
    state = totals["calibration"]
    return None if state is None else calibration.CalibrationState.from_dict(state)
