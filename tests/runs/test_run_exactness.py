"""The invariant that defines a run: after any set of batches, in any order, its report equals
`/v1/evaluate` (losses) and `/v1/calibration` (report, state included) on the concatenation of
those batches: counts exactly, sums to float64 rounding. Property-tested over random datasets,
splits and orders, through the same core use cases the routes call."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from service.config import Settings
from service.core import Context
from service.core.calibration import calibrate
from service.core.evaluate import EvaluateRequest, evaluate
from service.core.runs import usecases
from service.core.runs.models import RunCreate
from service.db import RunStore
from service.engine import CPU
from service.schemas.calibration import CalibrationRequest
from tests.helpers import encoded

CTX = Context(CPU, Settings(device="cpu"))

LOSS_ENTRIES: list[dict[str, Any]] = [
    {"name": "cross-entropy"},
    {"name": "cross-entropy", "reduction": "sum", "label_smoothing": 0.1},
    {"name": "cross-entropy", "weight": "per-class", "empty": "nan"},
    {"name": "focal", "gamma": 2.0, "reduction": "none"},
    {"name": "poly1", "epsilon": 0.5},
    {"name": "generalized-cross-entropy"},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunStore]:
    path: Path = tmp_path_factory.mktemp("runs") / "runs.db"
    store = RunStore(f"sqlite:///{path}")
    store.upgrade()
    yield store
    store.dispose()


def _entries(indices: list[int], n_classes: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    entries = []
    for index in indices:
        entry = dict(LOSS_ENTRIES[index])
        if entry.get("weight") == "per-class":
            entry["weight"] = rng.uniform(0.1, 2.0, n_classes).tolist()
        entries.append(entry)
    return entries


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, Any]:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, 40))
    n_classes = draw(st.sampled_from([2, 3, 7]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    scale = draw(st.sampled_from([0.5, 3.0, 30.0]))
    logits = (rng.standard_normal((n, n_classes)) * scale).astype(dtype)
    labels = rng.integers(0, n_classes, n)
    labels[rng.random(n) < draw(st.sampled_from([0.0, 0.2, 1.0]))] = -100
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    pieces = [(a, b) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    order = draw(st.permutations(range(len(pieces))))
    losses = draw(st.lists(st.integers(0, len(LOSS_ENTRIES) - 1), min_size=1, max_size=4))
    calibration = draw(
        st.none()
        | st.fixed_dictionaries(
            {"n_bins": st.sampled_from([1, 5, 15]), "top_k": st.sampled_from([[], [1, 2]])}
        )
    )
    return {
        "logits": logits,
        "labels": labels,
        "pieces": [pieces[i] for i in order],
        "losses": _entries(losses, n_classes, rng),
        "calibration": calibration,
    }


def _close(actual: Any, expected: Any, path: str = "") -> None:
    """Equal, with floats to float64 rounding (relative 1e-12, or 1e-12 near zero)."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), path
        for key in expected:
            _close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _close(a, e, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert isinstance(actual, float), path
        assert math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-12), (
            path,
            actual,
            expected,
        )
    else:  # counts, names, flags: exactly
        assert actual == expected, path


@pytest.mark.slow
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=datasets())
def test_a_run_reports_what_evaluate_and_calibration_report_on_the_whole(
    store: RunStore, data: dict[str, Any]
) -> None:
    logits, labels = data["logits"], data["labels"]
    note(f"logits {logits.dtype} {logits.tolist()}, labels {labels.tolist()}")
    note(f"pieces {data['pieces']}, losses {data['losses']}, calibration {data['calibration']}")
    create = RunCreate.model_validate(
        {"losses": data["losses"], "calibration": data["calibration"]}
    )
    run = usecases.create_run(store, create, ctx=CTX)
    run_id = uuid.UUID(run.id)
    for a, b in data["pieces"]:
        usecases.add_batch(store, run_id, f"rows-{a}-{b}", logits[a:b], labels[a:b], ctx=CTX)
    report = usecases.get_run(store, run_id, ctx=CTX)
    assert report.n_samples == len(labels)
    assert report.n_batches == len(set(data["pieces"]))

    whole = evaluate(
        EvaluateRequest.model_validate(
            {"logits": encoded(logits), "labels": encoded(labels), "losses": data["losses"]}
        ),
        ctx=CTX,
    )
    for total, expected in zip(report.losses, whole.losses, strict=True):
        assert total.name == expected.name
        assert total.n_valid == expected.n_valid
        _close(total.weight_sum, float(expected.weight_sum), "weight_sum")
        if expected.loss is None:
            assert total.loss is None
        else:
            _close(total.loss, float(expected.loss), f"{expected.name}.loss")

    if data["calibration"] is None:
        assert report.calibration is None
        return
    kept = labels != -100
    if not data["pieces"]:
        assert report.calibration is None
        return
    expected_report = calibrate(
        CalibrationRequest.model_validate(
            {
                "logits": encoded(logits[kept]),
                "labels": encoded(labels[kept]),
                **data["calibration"],
            }
        ),
        ctx=CTX,
    )
    assert report.calibration is not None
    _close(report.calibration.model_dump(), expected_report.model_dump())
