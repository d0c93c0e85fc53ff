"""`shared_softmax()`: several losses on one logits array pay for one softmax, same numbers."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from service import engine
from service.engine import _softmax
from tests.conftest import to_numpy
from tests.engine_helpers import pin_engine_path

RNG = np.random.default_rng(11)
LOGITS = RNG.normal(size=(6, 5)) * 3
LABELS = np.array([0, 4, -100, 2, 1, 3])
T = np.full((5, 5), 0.05) + np.eye(5) * 0.75


@pytest.fixture(autouse=True)
def reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sharing is the reference code's: the fused kernels (cross-entropy, focal, poly-1) have
    no softmax to share. Pinning the reference makes these losses use the shared one."""
    pin_engine_path("reference", monkeypatch)


LOSSES: list[tuple[Any, dict[str, Any]]] = [
    (engine.cross_entropy, {"label_smoothing": 0.2, "weight": np.arange(1.0, 6.0)}),
    (engine.focal, {"gamma": 1.5}),
    (engine.poly1, {"epsilon": 2.0}),
    (engine.generalized_cross_entropy, {"q": 0.5}),
    (engine.symmetric_cross_entropy, {}),
    (engine.forward_corrected_cross_entropy, {"transition_matrix": T}),
    (engine.logit_adjusted_cross_entropy, {"class_counts": np.arange(1.0, 6.0)}),
]


def run_all(xp: ModuleType, logits: Any) -> list[Any]:
    out = []
    for function, options in LOSSES:
        arrays = {k: xp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        out.append(engine.reduce_loss(function(logits, xp.asarray(LABELS), **arrays), "none"))
    return out


def test_same_numbers_inside_and_outside(xp: ModuleType) -> None:
    logits = xp.asarray(LOGITS)
    alone = run_all(xp, logits)
    with engine.shared_softmax(logits):
        shared = run_all(xp, logits)
    for a, b in zip(alone, shared, strict=True):
        np.testing.assert_array_equal(to_numpy(a.per_sample), to_numpy(b.per_sample))
        np.testing.assert_array_equal(to_numpy(a.grads["logits"]), to_numpy(b.grads["logits"]))


def test_one_softmax_for_the_registered_logits_and_private_gradients(
    xp: ModuleType, monkeypatch: Any
) -> None:
    logits = xp.asarray(LOGITS)
    calls = []
    real_exp = xp.exp

    def counting_exp(a: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(a.shape)
        return real_exp(a, *args, **kwargs)

    with engine.shared_softmax(logits):
        monkeypatch.setattr(xp, "exp", counting_exp)
        first = engine.reduce_loss(engine.cross_entropy(logits, xp.asarray(LABELS)), "sum")
        second = engine.reduce_loss(engine.poly1(logits, xp.asarray(LABELS)), "sum")
        third = engine.reduce_loss(engine.focal(logits, xp.asarray(LABELS)), "sum")
        monkeypatch.undo()
        # The [M, C] exponential ran once; the others only touch [M] vectors.
        assert calls.count(LOGITS.shape) == 1
        # Each loss owns its gradient buffer: writing into one leaves the others alone.
        before = to_numpy(second.grads["logits"]).copy()
        first.grads["logits"][...] = 0
        np.testing.assert_array_equal(to_numpy(second.grads["logits"]), before)
        assert np.any(to_numpy(third.grads["logits"]))
    assert _softmax._SHARED.get() is None


def test_other_arrays_are_not_shared(xp: ModuleType) -> None:
    logits = xp.asarray(LOGITS)
    with engine.shared_softmax(logits):
        other = engine.reduce_loss(engine.cross_entropy(logits * 2, xp.asarray(LABELS)), "sum")
    alone = engine.reduce_loss(engine.cross_entropy(logits * 2, xp.asarray(LABELS)), "sum")
    assert other.loss == alone.loss
