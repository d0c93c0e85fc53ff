"""Use cases of evaluation runs over a store: create, add a batch, report, list, close, delete.

Each is one call for an adapter (a route, a test): it validates, computes what needs the
batch's tensors outside any transaction, and hands the store a cheap fold of fixed-size sums to
apply under the run's lock.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import numpy as np

from service.codecs import tensors_digest
from service.core.calibration import check_diagram_bins, report_response
from service.core.context import Context
from service.core.runs import statistics
from service.core.runs.models import (
    BatchReceipt,
    Run,
    RunCreate,
    RunList,
    RunSpec,
    RunSummary,
    StoredBatch,
)
from service.db import BatchOutcome, BatchRecord, RunRecord, RunStore
from service.engine import calibration
from service.errors import Conflict, InvalidInput, NotFound

MAX_PAGE = 100

# Options whose statistics depend on every sample at once: a run cannot merge them.
_NOT_MERGEABLE = {
    "binning": ("quantile", "quantile bin edges depend on all the data; use binning=uniform"),
    "fit_temperature": (True, "the temperature is fitted to all the samples at once"),
    "smooth_ece": (True, "the smooth ECE needs all the samples at once"),
}


def create_run(store: RunStore, body: RunCreate, *, ctx: Context) -> Run:
    spec = RunSpec.model_validate(body.model_dump(exclude={"name", "metadata"}))
    _check_mergeable(spec)
    _check_options(spec, ctx)
    record = store.create_run(
        name=body.name,
        metadata=body.metadata,
        spec=spec.model_dump(mode="json"),
        totals=statistics.initial_totals(spec),
    )
    return run_answer(record, ctx=ctx)


def add_batch(
    store: RunStore,
    run_id: uuid.UUID,
    batch_id: str,
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    ctx: Context,
) -> BatchReceipt:
    """Add one batch under its idempotency key: created, a duplicate (the same tensors under
    the same key: nothing changes, whether or not the run has been closed since), or a Conflict
    (other tensors under a used key; a new batch to a closed run)."""
    record = store.get_run(run_id)
    digest = tensors_digest(logits, labels)
    # A replay is answered before any computation: the first call's effect stands.
    replayed = _stored(store, run_id, batch_id)
    if replayed is not None:
        if replayed.digest != digest:
            raise Conflict(
                f"batch_id: {batch_id!r} was used for other tensors in run {run_id}; send them "
                "under a new batch_id",
                field="batch_id",
            )
        return BatchReceipt(
            run_id=str(run_id),
            batch_id=batch_id,
            duplicate=True,
            n_samples=replayed.n_samples,
            digest=digest,
        )
    _require_open(record)
    spec = RunSpec.model_validate(record.spec)
    batch = statistics.batch_statistics(spec, logits, labels, ctx=ctx)
    # The store checks again under the run's lock: two first sends racing are one CREATED and
    # one DUPLICATE (or a Conflict, for other tensors).
    outcome, _ = store.add_batch(
        run_id,
        batch_id,
        digest=digest,
        n_samples=batch.n_samples,
        fold=partial(statistics.fold, batch=batch),
    )
    return BatchReceipt(
        run_id=str(run_id),
        batch_id=batch_id,
        duplicate=outcome is BatchOutcome.DUPLICATE,
        n_samples=batch.n_samples,
        digest=digest,
    )


def _stored(store: RunStore, run_id: uuid.UUID, batch_id: str) -> BatchRecord | None:
    try:
        return store.get_batch(run_id, batch_id)
    except NotFound:
        return None


def get_batch(store: RunStore, run_id: uuid.UUID, batch_id: str, *, ctx: Context) -> StoredBatch:
    record = store.get_batch(run_id, batch_id)
    return StoredBatch(
        run_id=str(record.run_id),
        batch_id=record.batch_id,
        digest=record.digest,
        n_samples=record.n_samples,
        created_at=record.created_at,
    )


def get_run(store: RunStore, run_id: uuid.UUID, *, ctx: Context) -> Run:
    return run_answer(store.get_run(run_id), ctx=ctx)


def list_runs(store: RunStore, limit: int, cursor: str | None, *, ctx: Context) -> RunList:
    records, next_cursor = store.list_runs(limit=min(limit, MAX_PAGE), cursor=cursor)
    return RunList(runs=[summary(record) for record in records], next_cursor=next_cursor)


def close_run(store: RunStore, run_id: uuid.UUID, *, ctx: Context) -> Run:
    return run_answer(store.close_run(run_id), ctx=ctx)


def delete_run(store: RunStore, run_id: uuid.UUID, *, ctx: Context) -> None:
    store.delete_run(run_id)


def run_metrics(
    store: RunStore, run_id: uuid.UUID, *, ctx: Context
) -> calibration.CalibrationMetrics:
    """The calibration metrics of a run, for its reliability diagram (`draw_diagram` draws
    them; `max_diagram_bins` bounds the bins drawn)."""
    state = statistics.calibration_state(store.get_run(run_id).totals)
    if state is None:
        raise NotFound(
            f"run {run_id} has no calibration statistics: it was created without calibration "
            "options, or no batch has arrived yet"
        )
    check_diagram_bins(state.n_bins, "calibration.n_bins", ctx=ctx)
    return calibration.compute(state)


def run_with_metrics(
    store: RunStore, run_id: uuid.UUID, *, ctx: Context
) -> tuple[Run, calibration.CalibrationMetrics | None]:
    """A run's report and its calibration metrics (for its diagram), from one read of the run:
    both describe the same batches."""
    record = store.get_run(run_id)
    state = statistics.calibration_state(record.totals)
    return run_answer(record, ctx=ctx), None if state is None else calibration.compute(state)


def summary(record: RunRecord) -> RunSummary:
    return RunSummary(**_summary_fields(record))


def run_answer(record: RunRecord, *, ctx: Context) -> Run:
    spec = RunSpec.model_validate(record.spec)
    state = statistics.calibration_state(record.totals)
    report = None
    if state is not None:
        merged = calibration.CalibrationReport(calibration.compute(state), state)
        report = report_response(merged, ctx=ctx)
    return Run(
        **_summary_fields(record),
        spec=spec,
        losses=statistics.loss_totals(spec, record.totals),
        calibration=report,
    )


def _summary_fields(record: RunRecord) -> dict[str, Any]:
    return {
        "id": str(record.id),
        "name": record.name,
        "metadata": record.metadata,
        "status": record.status,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "n_batches": record.n_batches,
        "n_samples": record.n_samples,
    }


def _require_open(record: RunRecord) -> None:
    if record.status != "open":
        raise Conflict(f"run {record.id} is closed: it takes no more batches", field="run_id")


def _check_mergeable(spec: RunSpec) -> None:
    options = spec.calibration
    if options is None:
        return
    for name, (value, why) in _NOT_MERGEABLE.items():
        if getattr(options, name) == value:
            raise InvalidInput(
                f"calibration.{name}: not allowed in a run, whose statistics must merge "
                f"exactly: {why}",
                field=("calibration", name),
            )
    if options.n_bootstrap:
        raise InvalidInput(
            "calibration.n_bootstrap: not allowed in a run, whose statistics must merge exactly: "
            "bootstrap intervals resample all the samples at once",
            field=("calibration", "n_bootstrap"),
        )


def _check_options(spec: RunSpec, ctx: Context) -> None:
    """Every option is one the losses accept: an empty batch goes through them now, so that a
    bad option is refused when the run is created rather than at its first batch. Its class
    count is that of the first per-class option (`weight[C]`, ...), else 2; a batch with
    another count than the options' is refused naming the option."""
    if not spec.losses and spec.calibration is None:
        raise InvalidInput(
            "losses: a run needs at least one loss or calibration options", field="losses"
        )
    n_classes = 2
    for index, item in enumerate(spec.losses):
        options, _ = ctx.decode_tensors(item, ("losses", index))
        shapes = [array.shape for array in options.values() if array.ndim]
        if shapes:
            n_classes = int(shapes[0][0]) or 2
            break
    empty = np.zeros((0, n_classes)), np.zeros(0, dtype=np.int64)
    statistics.batch_statistics(spec, *empty, ctx=ctx)
