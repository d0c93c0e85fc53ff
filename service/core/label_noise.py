"""Use case: confident learning on a dataset's out-of-sample scores and given labels."""

from __future__ import annotations

import numpy as np

from service.codecs import TensorForm
from service.core.context import Context
from service.core.responses import encode_output
from service.engine import CPU
from service.engine.label_noise import find_label_issues, find_label_issues_from_logits
from service.errors import InvalidInput, LimitExceeded
from service.schemas.label_noise import LabelNoiseRequest, LabelNoiseResponse


def label_noise(body: LabelNoiseRequest, *, ctx: Context) -> LabelNoiseResponse:
    """`POST /v1/label-noise`: likely label errors, the confident joint, the noise matrix."""
    if (body.logits is None) == (body.probs is None):
        raise InvalidInput("logits: send exactly one of logits and probs", field="logits")
    name = "logits" if body.logits is not None else "probs"
    scores = ctx.decode((name,), getattr(body, name), logits=name == "logits")
    labels = ctx.decode(("labels",), body.labels)
    form = body.output_encoding or scores.form
    return label_noise_of(name, scores.array, labels.array, body, form, ctx=ctx)


def label_noise_of(
    name: str,
    scores: np.ndarray,
    labels: np.ndarray,
    body: LabelNoiseRequest,
    form: TensorForm,
    *,
    ctx: Context,
) -> LabelNoiseResponse:
    """The answer for decoded `scores` (`name`: "logits" or "probs") and `labels`, with the
    options of `body` (whose tensors are not read: the offline CLI gives files' arrays)."""
    _check_classes(name, scores.shape, ctx.settings.max_label_noise_classes)
    # The engine runs on the host (NumPy and numba): device arrays come back first.
    x, y = ctx.backend.to_numpy(scores), ctx.backend.to_numpy(labels)
    find = find_label_issues_from_logits if name == "logits" else find_label_issues
    report = find(
        x,
        y,
        filter_by=body.filter_by,
        rank_by=body.rank_by,
        calibrate=body.calibrate,
        max_issues=body.max_issues,
    )
    return LabelNoiseResponse(
        label_issues=encode_output(report.label_issues, form, CPU),
        n_issues=report.n_issues,
        label_quality=encode_output(report.label_quality, form, CPU),
        noise_rate=report.noise_rate,
        confident_joint=encode_output(report.confident_joint, form, CPU),
        class_thresholds=encode_output(report.class_thresholds, form, CPU),
        transition_matrix=encode_output(report.transition_matrix, form, CPU),
        n=int(y.shape[0]),
        n_classes=int(x.shape[-1]),
    )


def _check_classes(name: str, shape: tuple[int, ...], limit: int) -> None:
    """The estimates keep several [C, C] arrays: their classes have a limit of their own."""
    if len(shape) == 2 and shape[1] > limit:
        raise LimitExceeded(
            f"{name}: {shape[1]} classes exceed max_label_noise_classes = {limit}", field=name
        )
