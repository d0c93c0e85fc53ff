"""The rest of the catalogue against values recorded from PyTorch 2.13 (and torchvision's
`sigmoid_focal_loss` formula); see scripts/make_torch_fixtures_more.py.

Every recorded case runs: sigmoid focal, KL divergence, Bradley-Terry / DPO, InfoNCE, triplet
margin, MSE, MAE and Huber, each over its options x reductions x float32/float64, plus inputs of
magnitude 1e4 and the ties and seams where a subgradient has to be chosen as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service.engine import (
    LossResult,
    bradley_terry,
    huber,
    info_nce,
    kl_divergence,
    mae,
    mse,
    reduce_loss,
    sigmoid_focal,
    triplet_margin,
)
from tests.conftest import to_numpy
from tests.reference import as_array, load_cases

CASES = load_cases("torch_reference_more.json")

FUNCTIONS: dict[str, Callable[..., LossResult]] = {
    "sigmoid-focal": sigmoid_focal,
    "kl-divergence": kl_divergence,
    "bradley-terry": bradley_terry,
    "info-nce": info_nce,
    "triplet-margin": triplet_margin,
    "mse": mse,
    "mae": mae,
    "huber": huber,
}


def tolerances(dtype: str) -> dict[str, Any]:
    # float32: PyTorch's own float32 rounding differs from ours by a few ulps of O(1) values.
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}


def case_input(case: dict[str, Any], name: str) -> np.ndarray:
    """An input in the case's dtype, or int64 for class indices (JSON integers)."""
    value = case["inputs"][name]
    raw = np.array(value)
    dtype = np.int64 if raw.dtype.kind == "i" else np.dtype(case["dtype"])
    return as_array(value, dtype).reshape(case["shapes"][name])


def run_case(case: dict[str, Any], xp: ModuleType) -> Any:
    options = dict(case["options"])
    reduction = options.pop("reduction")
    inputs = {name: xp.asarray(case_input(case, name)) for name in case["inputs"]}
    result = FUNCTIONS[case["loss"]](**inputs, **options)
    return reduce_loss(result, reduction)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_matches_pytorch(case: dict[str, Any], xp: ModuleType) -> None:
    out = run_case(case, xp)
    expected = case["expected"]
    tol = tolerances(case["dtype"])
    np.testing.assert_allclose(out.loss, float(expected["loss"]), **tol)
    assert set(out.grads) == set(expected["grads"])
    for name, reference in expected["grads"].items():
        grad = to_numpy(out.grads[name])
        assert grad.dtype == np.dtype(case["dtype"]), name
        np.testing.assert_allclose(grad, as_array(reference, np.float64).reshape(grad.shape), **tol)
    if case["options"]["reduction"] == "none":
        per_sample = to_numpy(out.per_sample)
        reference = as_array(expected["per_sample"], np.float64).reshape(per_sample.shape)
        np.testing.assert_allclose(per_sample, reference, **tol)


def test_the_fixture_covers_the_grid() -> None:
    ids = {c["id"] for c in CASES}
    assert len(ids) == len(CASES) > 250
    for loss in FUNCTIONS:
        for dtype in ("float32", "float64"):
            for reduction in ("mean", "sum", "none"):
                assert any(
                    c["loss"] == loss
                    and c["dtype"] == dtype
                    and c["options"]["reduction"] == reduction
                    for c in CASES
                ), (loss, dtype, reduction)
    for fragment in (
        "sigmoid-focal-aNone-",
        "-g0.5-",
        "-wfull-",
        "-wc-",
        "kl-target_probs-",
        "kl-target_logits-t2.5-",
        "-3d-",
        "-refs-",
        "-refchosen-",
        "info-nce-raw-",
        "-ign1-",
        "-ign2-",
        "-swap1-",
        "-p1-",
        "-p1.5-",
        "-eps0-",
        "-edge-tie-",
        "-edge-big-",
        "huber-d0.5-",
    ):
        assert any(fragment in i for i in ids), fragment
