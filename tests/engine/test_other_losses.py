"""Properties shared by sigmoid focal, KL divergence, Bradley-Terry, InfoNCE, triplet margin,
MSE, MAE and Huber: gradients of every differentiable input against finite differences, inputs
of magnitude 1e4 stay finite, float32 computes in float32, empty batches, rejected options that
name their field, and inputs that are never written to. Each loss's own conventions are tested
in tests/test_engine_<family>.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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
from service.errors import InvalidInput
from tests.conftest import to_numpy
from tests.engine_helpers import finite_difference_grad

RNG = np.random.default_rng(20261201)
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Spec:
    fn: Callable[..., LossResult]
    make: Callable[[float], Inputs]  # inputs of a given scale (1 for ordinary values, 1e4 big)
    differentiable: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def normal(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


def binary(scale: float) -> Inputs:
    labels = RNG.uniform(size=(3, 4))
    labels[0] = [0, 1, 0, 1]
    return {"logits": normal(3, 4) * 2 * scale, "labels": labels, "weight": RNG.uniform(size=4)}


def distillation(target: str) -> Callable[[float], Inputs]:
    def make(scale: float) -> Inputs:
        logits, other = normal(2, 3, 4) * 2 * scale, normal(2, 3, 4) * 2 * scale
        if target == "target_probs":
            e = np.exp(other - other.max(axis=-1, keepdims=True))
            return {"logits": logits, "target_probs": e / e.sum(axis=-1, keepdims=True)}
        return {"logits": logits, "target_logits": other}

    return make


def scores(scale: float) -> Inputs:
    names = ("chosen", "rejected", "ref_chosen", "ref_rejected")
    return {name: normal(5) * 2 * scale for name in names}


def contrastive(scale: float) -> Inputs:
    labels = np.array([0, 5, -100, 2])
    return {"query": normal(4, 3) * scale, "keys": normal(6, 3) * scale, "labels": labels}


def triplets(scale: float) -> Inputs:
    anchor = normal(5, 3) * scale
    positive = anchor + normal(5, 3) * 0.5 * scale
    return {"anchor": anchor, "positive": positive, "negative": anchor + normal(5, 3) * scale}


def regression(scale: float) -> Inputs:
    return {
        "predictions": normal(3, 4) * 2 * scale,
        "targets": normal(3, 4) * 2 * scale,
        "weight": RNG.uniform(0.5, 2, size=4),
    }


SPECS: dict[str, Spec] = {
    "sigmoid-focal": Spec(sigmoid_focal, binary, ("logits",)),
    "sigmoid-focal-gamma-half": Spec(
        sigmoid_focal, binary, ("logits",), {"gamma": 0.5, "alpha": None}
    ),
    "kl-target-logits": Spec(
        kl_divergence, distillation("target_logits"), ("logits",), {"temperature": 2.0}
    ),
    "kl-target-probs": Spec(
        kl_divergence, distillation("target_probs"), ("logits",), {"temperature": 0.5}
    ),
    "bradley-terry": Spec(
        bradley_terry, scores, ("chosen", "rejected"), {"beta": 0.3, "margin": 0.2}
    ),
    "info-nce": Spec(info_nce, contrastive, ("query", "keys"), {"temperature": 0.1}),
    "info-nce-raw": Spec(
        info_nce, contrastive, ("query", "keys"), {"temperature": 2.0, "normalize": False}
    ),
    "triplet": Spec(triplet_margin, triplets, ("anchor", "positive", "negative")),
    "triplet-p3-swap": Spec(
        triplet_margin, triplets, ("anchor", "positive", "negative"), {"p": 3.0, "swap": True}
    ),
    "triplet-p1": Spec(
        triplet_margin, triplets, ("anchor", "positive", "negative"), {"p": 1.0, "margin": 2.0}
    ),
    "mse": Spec(mse, regression, ("predictions",)),
    "mae": Spec(mae, regression, ("predictions",)),
    "huber": Spec(huber, regression, ("predictions",), {"delta": 1.5}),
}


def cast(inputs: Inputs, dtype: Any) -> Inputs:
    """The float inputs in `dtype`; class indices stay integers."""
    return {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in inputs.items()}


def run(xp: ModuleType, spec: Spec, inputs: Inputs, **overrides: Any) -> LossResult:
    arrays = {name: xp.asarray(value) for name, value in inputs.items()}
    return spec.fn(**arrays, **{**spec.options, **overrides})


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", list(SPECS))
def test_gradients_match_finite_differences(xp: ModuleType, name: str, reduction: str) -> None:
    spec = SPECS[name]
    inputs = spec.make(1.0)
    out = reduce_loss(run(xp, spec, inputs), reduction)  # type: ignore[arg-type]
    assert set(out.grads) == set(spec.differentiable)
    for input_name in spec.differentiable:

        def loss(value: np.ndarray, input_name: str = input_name) -> float:
            moved = {**inputs, input_name: value}
            return reduce_loss(run(np, spec, moved), reduction).loss  # type: ignore[arg-type]

        numeric = finite_difference_grad(loss, inputs[input_name])
        grad = to_numpy(out.grads[input_name])
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=input_name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SPECS))
def test_inputs_of_magnitude_1e4_stay_finite(xp: ModuleType, name: str, dtype: Any) -> None:
    spec = SPECS[name]
    out = run(xp, spec, cast(spec.make(1e4), dtype))
    assert np.all(np.isfinite(to_numpy(out.per_sample)))
    for grad in out.grads.values():
        assert np.all(np.isfinite(to_numpy(grad)))


@pytest.mark.parametrize("name", list(SPECS))
def test_float32_computes_in_float32_and_agrees_with_float64(xp: ModuleType, name: str) -> None:
    spec = SPECS[name]
    inputs = spec.make(1.0)
    single = cast(inputs, np.float32)
    out32 = run(xp, spec, single)
    out64 = run(xp, spec, cast(single, np.float64))
    assert to_numpy(out32.per_sample).dtype == np.float32
    np.testing.assert_allclose(
        to_numpy(out32.per_sample), to_numpy(out64.per_sample), rtol=1e-5, atol=1e-6
    )
    for input_name, grad in out32.grads.items():
        assert to_numpy(grad).dtype == np.float32
        np.testing.assert_allclose(
            to_numpy(grad), to_numpy(out64.grads[input_name]), rtol=1e-4, atol=1e-5
        )
    forced = run(xp, spec, single, compute_dtype="float64")
    assert to_numpy(forced.per_sample).dtype == np.float64


@pytest.mark.parametrize("name", list(SPECS))
def test_inputs_are_not_modified(xp: ModuleType, name: str) -> None:
    spec = SPECS[name]
    inputs = spec.make(1.0)
    arrays = {k: xp.asarray(v) for k, v in inputs.items()}
    reduce_loss(spec.fn(**arrays, **spec.options), "mean")
    for k, v in inputs.items():
        np.testing.assert_array_equal(to_numpy(arrays[k]), v, err_msg=k)


@pytest.mark.parametrize("name", list(SPECS))
def test_an_empty_batch_has_loss_zero(xp: ModuleType, name: str) -> None:
    spec = SPECS[name]
    inputs = spec.make(1.0)
    # the first axis of the per-sample inputs is the batch; keys [M, D] and weights stay
    empty = {k: v if k in ("weight", "keys") else v[:0] for k, v in inputs.items()}
    out = reduce_loss(run(xp, spec, empty))
    assert out.loss == 0 and out.n_valid == 0
    for input_name, grad in out.grads.items():
        assert to_numpy(grad).size == (0 if input_name != "keys" else inputs["keys"].size)
        assert not np.any(to_numpy(grad))


BAD_OPTIONS = [
    ("sigmoid-focal", {"alpha": 1.5}, "alpha", r"<= 1"),
    ("sigmoid-focal", {"alpha": -1.0}, "alpha", r">= 0"),
    ("sigmoid-focal", {"gamma": -0.5}, "gamma", r">= 0"),
    ("kl-target-logits", {"temperature": 0.0}, "temperature", r"> 0"),
    ("kl-target-logits", {"temperature": float("nan")}, "temperature", "finite"),
    ("kl-target-probs", {"temperature": float("inf")}, "temperature", "finite"),
    ("bradley-terry", {"beta": 0.0}, "beta", r"> 0"),
    ("bradley-terry", {"beta": float("inf")}, "beta", "finite"),
    ("bradley-terry", {"margin": float("nan")}, "margin", "finite"),
    ("info-nce", {"temperature": -1.0}, "temperature", r"> 0"),
    ("triplet", {"margin": 0.0}, "margin", r"> 0"),
    ("triplet", {"p": 0.5}, "p", r">= 1"),
    ("triplet", {"p": float("inf")}, "p", "finite"),
    ("triplet", {"eps": -1e-6}, "eps", r">= 0"),
    ("huber", {"delta": 0.0}, "delta", r"> 0"),
]


@pytest.mark.parametrize(
    ("name", "options", "field_name", "message"),
    BAD_OPTIONS,
    ids=[
        f"{name}-{next(iter(options))}={next(iter(options.values()))}"
        for name, options, *_ in BAD_OPTIONS
    ],
)
def test_bad_options_are_rejected_naming_the_field(
    xp: ModuleType, name: str, options: dict[str, Any], field_name: str, message: str
) -> None:
    spec = SPECS[name]
    with pytest.raises(InvalidInput, match=message) as info:
        run(xp, spec, spec.make(1.0), **options)
    assert info.value.field == (field_name,)
    assert str(info.value).startswith(f"{field_name}: ")


BAD_INPUTS = [
    ("sigmoid-focal", "labels", np.full((3, 4), 1.5), "labels", r"\[0, 1\]"),
    ("sigmoid-focal", "labels", np.zeros((4, 3)), "labels", "shape"),
    ("sigmoid-focal", "weight", -np.ones(4), "weight", "finite and >= 0"),
    ("kl-target-logits", "target_logits", np.zeros((2, 4)), "target_logits", "shape"),
    ("kl-target-probs", "target_probs", np.full((2, 3, 4), 0.3), "target_probs", "sum to 1"),
    ("kl-target-probs", "target_probs", np.full((2, 3, 4), -0.25), "target_probs", r"\[0, 1\]"),
    ("bradley-terry", "rejected", np.zeros(4), "rejected", "shape"),
    ("bradley-terry", "ref_chosen", np.zeros(6), "ref_chosen", "shape"),
    ("bradley-terry", "chosen", np.zeros((5, 1)), "chosen", r"shape \[N\]"),
    ("bradley-terry", "chosen", np.array([0, 1, 2, 3, -np.inf]), "chosen", "finite"),
    ("info-nce", "keys", np.zeros((6, 2)), "keys", r"\[M, 3\]"),
    ("info-nce", "query", np.zeros((4, 0)), "query", "D >= 1"),
    ("info-nce", "keys", np.zeros((0, 3)), "keys", "M >= 1"),
    ("info-nce", "labels", np.array([0, 6, 1, 1]), "labels", r"outside \[0, 6\)"),
    ("info-nce", "labels", np.array([0, 1, 1]), "labels", r"shape \[4\]"),
    ("info-nce", "query", np.zeros((4, 3)), "query", "norm 0"),
    ("info-nce", "query", np.full((4, 3), -np.inf), "query", "finite"),
    ("triplet", "anchor", np.zeros(3), "anchor", r"\[N, D\]"),
    ("triplet", "negative", np.zeros((5, 2)), "negative", "shape"),
    ("mse", "targets", np.zeros((4, 3)), "targets", "shape"),
    ("mse", "weight", np.ones((2, 4)), "weight", "broadcast"),
    ("mae", "predictions", np.full((3, 4), -np.inf), "predictions", "not finite"),
    ("mse", "predictions", np.full((3, 4), 1e300), "predictions", "not finite"),
    ("huber", "targets", np.full((3, 4), -np.inf), "predictions", "not finite"),
]


@pytest.mark.parametrize(
    ("name", "input_name", "value", "field_name", "message"),
    BAD_INPUTS,
    ids=[f"{name}-{input_name}-{message}" for name, input_name, _, _, message in BAD_INPUTS],
)
def test_bad_inputs_are_rejected_naming_the_field(
    xp: ModuleType, name: str, input_name: str, value: Any, field_name: str, message: str
) -> None:
    spec = SPECS[name]
    inputs = spec.make(1.0)
    inputs[input_name] = np.asarray(value)
    with pytest.raises(InvalidInput, match=message) as info:
        run(xp, spec, inputs)
    assert info.value.field == (field_name,)
