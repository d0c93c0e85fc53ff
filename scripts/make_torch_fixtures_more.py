"""Record PyTorch reference values for the rest of the loss catalogue as JSON fixtures.

The output, ``tests/fixtures/torch_reference_more.json``, holds losses, per-sample losses and
gradients for ``sigmoid-focal``, ``kl-divergence``, ``bradley-terry``, ``info-nce``,
``triplet-margin``, ``mse``, ``mae`` and ``huber``, computed with PyTorch on small, seeded inputs.
The tests compare the service against it without needing torch installed.

Reproduce (from the repository root)::

    python -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0 torchvision numpy && .venv-ref/bin/python scripts/make_torch_fixtures_more.py

The script imports only torch, numpy and the standard library (never the ``service`` package),
plus the helpers of its sibling ``scripts/make_torch_fixtures.py`` (seeding, JSON formatting,
file layout). Every case draws its inputs from a ``numpy.random.Generator`` seeded from a CRC32 of
the case's data key, so reruns produce a byte-identical file.

What each loss is in PyTorch terms:

* ``sigmoid-focal``: torchvision's ``sigmoid_focal_loss``. The PyPI torchvision wheel does not
  load beside torch 2.13 here, so ``sigmoid_focal_loss`` below restates its formula in torch
  ops, line for line (``alpha=None`` is torchvision's ``alpha < 0``). The service's ``weight``
  (not in torchvision) multiplies the elementwise loss before the reduction.
* ``kl-divergence``: ``T**2 * F.kl_div(F.log_softmax(x / T, -1), p)`` with
  ``p = F.softmax(target_logits / T, -1)`` or ``target_probs``; ``mean`` is ``batchmean`` for
  2-D logits and ``sum / (number of rows)`` for 3-D ones (PyTorch's ``batchmean`` divides by the
  first axis only), ``none`` is the per-row sum over classes.
* ``bradley-terry``: ``-F.logsigmoid(beta * ((c - r) - (rc - rr)) - margin)``.
* ``info-nce``: ``F.cross_entropy(q @ k.T / T, labels, ignore_index=...)`` on
  ``F.normalize``-d rows when ``normalize``.
* ``triplet-margin``: ``F.triplet_margin_loss``.
* ``mse``, ``mae``, ``huber``: ``F.mse_loss``, ``F.l1_loss``, ``F.huber_loss`` with
  ``reduction="none"``, times the service's ``weight``, then ``mean`` / ``sum``.

Layout of a case (see the fixture file's ``cases``):

* ``inputs``: every tensor argument by the service's name (``logits``, ``labels``, ``weight``,
  ``chosen``, ``query``, ...), as nested lists; integers are class indices, floats are in the
  case's ``dtype``. ``shapes`` gives each input's shape (JSON cannot tell ``[0, C]`` from ``[]``).
* ``options``: the service's keyword options, ``reduction`` included.
* ``expected.loss`` is what torch returns for the reduction; for ``"none"`` it is the sum of the
  per-sample tensor, which is stored as ``expected.per_sample``.
* ``expected.grads``: for each differentiable input, d(loss)/d(input) of that reduced value (for
  ``"none"``: of ``per_sample.sum()``), from autograd.
* Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"``.

Long because it lists every recorded case, one per line, beside the PyTorch call that answers it.
"""  # noqa: E501 (the one-line reproduce command above)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from make_torch_fixtures import (
    DTYPES,
    NP_DTYPES,
    REDUCTIONS,
    backpropagate,
    main,
    randn,
    rng_for,
    softmax_rows,
    to_json,
    uniform,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "fixtures" / "torch_reference_more.json"
GENERATOR = "scripts/make_torch_fixtures_more.py"

C = 5
SHAPES = {"2d": (4, C), "3d": (2, 3, C)}


# --------------------------------------------------------------------------------------------
# helpers


def reduce(per_element: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_element.mean()
    if reduction == "sum":
        return per_element.sum()
    return per_element


def finish(
    case_id: str,
    loss_name: str,
    dtype: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    loss: torch.Tensor,
    leaves: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Backpropagate and assemble a case; ``leaves`` are the inputs that get gradients."""
    expected = backpropagate(loss, options["reduction"])
    grads = {}
    for name, leaf in leaves.items():
        assert leaf.grad is not None
        grads[name] = to_json(leaf.grad)
    expected["grads"] = grads
    return {
        "id": case_id,
        "loss": loss_name,
        "dtype": dtype,
        "shapes": {k: list(np.shape(v)) for k, v in inputs.items()},
        "inputs": {k: to_json(np.asarray(v)) for k, v in inputs.items()},
        "options": options,
        "expected": expected,
    }


def leaf(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).requires_grad_()


def const(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(array))


# --------------------------------------------------------------------------------------------
# sigmoid focal


def sigmoid_focal_loss(
    inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss with reduction="none", restated in torch ops."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def run_sigmoid_focal(
    case_id: str,
    dtype: str,
    logits_np: Any,
    labels_np: Any,
    weight_np: Any | None,
    alpha: float | None,
    gamma: float,
    reduction: str,
) -> dict[str, Any]:
    logits = leaf(logits_np)
    loss = sigmoid_focal_loss(logits, const(labels_np), -1.0 if alpha is None else alpha, gamma)
    inputs: dict[str, Any] = {"logits": logits_np, "labels": labels_np}
    if weight_np is not None:
        loss = loss * const(weight_np)
        inputs["weight"] = weight_np
    options = {"reduction": reduction, "alpha": alpha, "gamma": gamma}
    loss = reduce(loss, reduction)
    return finish(case_id, "sigmoid-focal", dtype, inputs, options, loss, {"logits": logits})


def binary_labels(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Any:
    """Soft labels in [0, 1] with roughly half replaced by exact 0 or 1."""
    y = uniform(rng, shape, dtype, 0.0, 1.0)
    hard = rng.random(shape) < 0.5
    y[hard] = np.round(y[hard])
    return y


def sigmoid_focal_cases() -> list[dict[str, Any]]:
    """(alpha, gamma) settings x weight (none / full / [C]) x shape x reduction x dtype."""
    cases = []
    settings = [
        (0.25, 2.0, "w0", "2d"),
        (0.25, 2.0, "w0", "3d"),
        (None, 2.0, "w0", "2d"),
        (0.75, 0.5, "w0", "2d"),
        (0.25, 0.0, "w0", "3d"),
        (0.5, 1.0, "wfull", "2d"),
        (0.25, 2.0, "wc", "3d"),
    ]
    for alpha, gamma, wkind, shape in settings:
        for dtype in DTYPES:
            rng = rng_for(f"sigmoid-focal-{wkind}-{shape}-{dtype}")
            full = SHAPES[shape]
            logits = randn(rng, full, dtype)
            labels = binary_labels(rng, full, dtype)
            weight = None
            if wkind == "wfull":
                weight = uniform(rng, full, dtype, 0.0, 2.0)
            elif wkind == "wc":
                weight = uniform(rng, (C,), dtype, 0.2, 2.0)
            for red in REDUCTIONS:
                cid = f"sigmoid-focal-a{alpha}-g{gamma:g}-{wkind}-{red}-{shape}-{dtype}"
                cases.append(
                    run_sigmoid_focal(cid, dtype, logits, labels, weight, alpha, gamma, red)
                )
    big = np.array([[1e4, -1e4, 1e4, -1e4, 0.0], [-1e4, 1e4, 5e3, -5e3, 40.0]])
    big_labels = np.array([[1.0, 0.0, 0.0, 1.0, 0.5], [0.25, 1.0, 0.0, 0.0, 1.0]])
    for alpha in (0.25, None):
        for red in REDUCTIONS:
            cid = f"sigmoid-focal-edge-big-a{alpha}-{red}"
            cases.append(run_sigmoid_focal(cid, "float64", big, big_labels, None, alpha, 2.0, red))
    return cases


# --------------------------------------------------------------------------------------------
# KL divergence (distillation)


def run_kl(
    case_id: str,
    dtype: str,
    logits_np: Any,
    target_name: str,
    target_np: Any,
    temperature: float,
    reduction: str,
) -> dict[str, Any]:
    logits = leaf(logits_np)
    target = const(target_np)
    log_q = F.log_softmax(logits / temperature, dim=-1)
    p = F.softmax(target / temperature, dim=-1) if target_name == "target_logits" else target
    t2 = temperature**2
    if reduction == "none":
        loss = F.kl_div(log_q, p, reduction="none").sum(-1) * t2
    elif reduction == "sum":
        loss = F.kl_div(log_q, p, reduction="sum") * t2
    elif logits.dim() == 2:
        loss = F.kl_div(log_q, p, reduction="batchmean") * t2
    else:  # PyTorch's batchmean divides by the first axis; the service by every row
        rows = int(np.prod(logits.shape[:-1]))
        loss = F.kl_div(log_q, p, reduction="sum") * t2 / rows
    inputs = {"logits": logits_np, target_name: target_np}
    options = {"reduction": reduction, "temperature": temperature}
    return finish(case_id, "kl-divergence", dtype, inputs, options, loss, {"logits": logits})


def kl_cases() -> list[dict[str, Any]]:
    """target kind (logits / probs) x temperature x shape x reduction x dtype, then edges."""
    cases = []
    for target_name in ("target_logits", "target_probs"):
        for temperature in (1.0, 2.5):
            for shape in ("2d", "3d"):
                for dtype in DTYPES:
                    rng = rng_for(f"kl-{target_name}-{shape}-{dtype}")
                    full = SHAPES[shape]
                    logits = randn(rng, full, dtype)
                    target = randn(rng, full, dtype)
                    if target_name == "target_probs":
                        target = softmax_rows(target).astype(NP_DTYPES[dtype])
                    for red in REDUCTIONS:
                        cid = f"kl-{target_name}-t{temperature:g}-{red}-{shape}-{dtype}"
                        cases.append(
                            run_kl(cid, dtype, logits, target_name, target, temperature, red)
                        )
    # probability rows with exact zeros (0 log 0 = 0), one of them one-hot
    rng = rng_for("kl-edge-zeros")
    logits = randn(rng, (4, C), "float64")
    probs = softmax_rows(randn(rng, (4, C), "float64"))
    probs[0] = [0.0, 0.0, 1.0, 0.0, 0.0]
    probs[1, [1, 3]] = 0.0
    probs[1] /= probs[1].sum()
    for temperature in (1.0, 2.0):
        for red in REDUCTIONS:
            cid = f"kl-edge-zeros-t{temperature:g}-{red}"
            cases.append(run_kl(cid, "float64", logits, "target_probs", probs, temperature, red))
    # logits of magnitude 1e4 on both sides
    big = np.array([[1e4, -1e4, 0.0, 5e3, -5e3], [-1e4, 1e4, 5e3, 0.0, -5e3]])
    big_target = np.array([[1e4, 0.0, 1e4, -1e4, 0.0], [0.0, 1e4, -1e4, 1e4 - 1, 0.0]])
    for red in REDUCTIONS:
        cid = f"kl-edge-big-t1-{red}"
        cases.append(run_kl(cid, "float64", big, "target_logits", big_target, 1.0, red))
    return cases


# --------------------------------------------------------------------------------------------
# Bradley-Terry / DPO


def run_bradley_terry(
    case_id: str,
    dtype: str,
    scores: dict[str, Any],
    beta: float,
    margin: float,
    reduction: str,
) -> dict[str, Any]:
    chosen, rejected = leaf(scores["chosen"]), leaf(scores["rejected"])
    diff = chosen - rejected
    if "ref_chosen" in scores or "ref_rejected" in scores:
        rc = const(scores["ref_chosen"]) if "ref_chosen" in scores else 0.0
        rr = const(scores["ref_rejected"]) if "ref_rejected" in scores else 0.0
        diff = diff - (rc - rr)
    loss = reduce(-F.logsigmoid(beta * diff - margin), reduction)
    options = {"reduction": reduction, "beta": beta, "margin": margin}
    leaves = {"chosen": chosen, "rejected": rejected}
    return finish(case_id, "bradley-terry", dtype, scores, options, loss, leaves)


def bradley_terry_cases() -> list[dict[str, Any]]:
    """(beta, margin, references) settings x reduction x dtype, then scores of 1e4."""
    cases = []
    settings = [
        (1.0, 0.0, "norefs"),
        (0.1, 0.0, "refs"),
        (2.5, 0.5, "refs"),
        (1.0, 0.5, "norefs"),
        (0.5, 0.0, "refchosen"),
    ]
    n = 8
    for beta, margin, refs in settings:
        for dtype in DTYPES:
            rng = rng_for(f"bradley-terry-{dtype}")
            scores = {name: randn(rng, (n,), dtype) for name in ("chosen", "rejected")}
            ref_chosen, ref_rejected = randn(rng, (n,), dtype), randn(rng, (n,), dtype)
            if refs in ("refs", "refchosen"):
                scores["ref_chosen"] = ref_chosen
            if refs == "refs":
                scores["ref_rejected"] = ref_rejected
            for red in REDUCTIONS:
                cid = f"bradley-terry-b{beta:g}-m{margin:g}-{refs}-{red}-{dtype}"
                cases.append(run_bradley_terry(cid, dtype, scores, beta, margin, red))
    big = {
        "chosen": np.array([1e4, -1e4, 0.0, 5e3]),
        "rejected": np.array([-1e4, 1e4, 1e4, 5e3]),
    }
    for red in REDUCTIONS:
        cid = f"bradley-terry-edge-big-{red}"
        cases.append(run_bradley_terry(cid, "float64", big, 1.0, 0.0, red))
    return cases


# --------------------------------------------------------------------------------------------
# InfoNCE


def run_info_nce(
    case_id: str,
    dtype: str,
    query_np: Any,
    keys_np: Any,
    labels: Any,
    temperature: float,
    normalize: bool,
    ignore_index: int,
    reduction: str,
) -> dict[str, Any]:
    query, keys = leaf(query_np), leaf(keys_np)
    q = F.normalize(query, dim=1) if normalize else query
    k = F.normalize(keys, dim=1) if normalize else keys
    logits = q @ k.T / temperature
    loss = F.cross_entropy(logits, const(labels), ignore_index=ignore_index, reduction=reduction)
    inputs = {"query": query_np, "keys": keys_np, "labels": labels}
    options = {
        "reduction": reduction,
        "temperature": temperature,
        "normalize": normalize,
        "ignore_index": ignore_index,
    }
    leaves = {"query": query, "keys": keys}
    return finish(case_id, "info-nce", dtype, inputs, options, loss, leaves)


def info_nce_cases() -> list[dict[str, Any]]:
    """(normalize, temperature, ignored labels) x reduction x dtype; N=5 queries, M=7 keys.

    ign0: nothing ignored; ign1: two labels are -100 and one of those queries is all zeros;
    ign2: ignore_index=-1 with one such label.
    """
    cases = []
    n, m, dim = 5, 7, 3
    settings = [
        (True, 0.07, "ign0"),
        (True, 0.07, "ign1"),
        (False, 0.5, "ign0"),
        (True, 0.5, "ign2"),
        (False, 1.0, "ign1"),
    ]
    for normalize, temperature, ign in settings:
        for dtype in DTYPES:
            rng = rng_for(f"info-nce-{ign}-{dtype}")
            query = randn(rng, (n, dim), dtype, scale=1.0)
            keys = randn(rng, (m, dim), dtype, scale=1.0)
            labels = rng.integers(0, m, size=n, dtype=np.int64)
            ignore_index = -1 if ign == "ign2" else -100
            if ign == "ign1":
                labels[[1, 3]] = -100
                query[3] = 0
            elif ign == "ign2":
                labels[2] = -1
            for red in REDUCTIONS:
                norm = "norm" if normalize else "raw"
                cid = f"info-nce-{norm}-t{temperature:g}-{ign}-{red}-{dtype}"
                cases.append(
                    run_info_nce(
                        cid, dtype, query, keys, labels, temperature, normalize, ignore_index, red
                    )
                )
    return cases


# --------------------------------------------------------------------------------------------
# triplet margin


def run_triplet(
    case_id: str,
    dtype: str,
    embeddings: dict[str, Any],
    margin: float,
    p: float,
    eps: float,
    swap: bool,
    reduction: str,
) -> dict[str, Any]:
    leaves = {name: leaf(value) for name, value in embeddings.items()}
    loss = F.triplet_margin_loss(
        leaves["anchor"],
        leaves["positive"],
        leaves["negative"],
        margin=margin,
        p=p,
        eps=eps,
        swap=swap,
        reduction=reduction,
    )
    options = {"reduction": reduction, "margin": margin, "p": p, "eps": eps, "swap": swap}
    return finish(case_id, "triplet-margin", dtype, embeddings, options, loss, leaves)


def triplet_cases() -> list[dict[str, Any]]:
    """(margin, p, eps, swap) x reduction x dtype, on N=6 triplets where some hinges are
    inactive; then a swap tie, a hinge of exactly 0 and embeddings of 1e4 (float64)."""
    cases = []
    n, dim = 6, 3
    settings = [
        (1.0, 2.0, 1e-6, False),
        (1.0, 2.0, 1e-6, True),
        (0.5, 1.0, 1e-6, False),
        (2.0, 3.0, 1e-6, True),
        (1.0, 1.5, 0.0, False),
    ]
    for margin, p, eps, swap in settings:
        for dtype in DTYPES:
            rng = rng_for(f"triplet-{dtype}")
            anchor = randn(rng, (n, dim), dtype, scale=1.0)
            positive = anchor + randn(rng, (n, dim), dtype, scale=0.7)
            negative = anchor + randn(rng, (n, dim), dtype, scale=1.5)
            embeddings = {"anchor": anchor, "positive": positive, "negative": negative}
            for red in REDUCTIONS:
                cid = f"triplet-margin-m{margin:g}-p{p:g}-eps{eps:g}-swap{int(swap)}-{red}-{dtype}"
                cases.append(run_triplet(cid, dtype, embeddings, margin, p, eps, swap, red))
    # row 0: positive == anchor, so d(a, p) = 0 (gradient 0) and d(a, n) == d(p, n) under swap
    # (the gradient splits) with an active hinge;
    # row 1: d(a, p) = 1, d(a, n) = 2, margin 1, eps 0: the hinge is exactly 0
    tie = {
        "anchor": np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
        "positive": np.array([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0]]),
        "negative": np.array([[1.5, 2.0, 0.5], [2.0, 0.0, 0.0]]),
    }
    big = {
        "anchor": np.array([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]]),
        "positive": np.array([[1e4, -1e4, 1.0], [1e4, -1e4, 0.0]]),
        "negative": np.array([[-1e4, 1e4, 0.0], [0.0, 1e4, 1e4 - 1]]),
    }
    for red in REDUCTIONS:
        for swap in (False, True):
            cid = f"triplet-margin-edge-tie-swap{int(swap)}-{red}"
            cases.append(run_triplet(cid, "float64", tie, 1.0, 2.0, 0.0, swap, red))
        cid = f"triplet-margin-edge-big-{red}"
        cases.append(run_triplet(cid, "float64", big, 1.0, 2.0, 1e-6, True, red))
    return cases


# --------------------------------------------------------------------------------------------
# regression: mse, mae, huber


def run_regression(
    case_id: str,
    loss_name: str,
    dtype: str,
    predictions_np: Any,
    targets_np: Any,
    weight_np: Any | None,
    delta: float | None,
    reduction: str,
) -> dict[str, Any]:
    predictions = leaf(predictions_np)
    targets = const(targets_np)
    if loss_name == "mse":
        loss = F.mse_loss(predictions, targets, reduction="none")
    elif loss_name == "mae":
        loss = F.l1_loss(predictions, targets, reduction="none")
    else:
        assert delta is not None
        loss = F.huber_loss(predictions, targets, reduction="none", delta=delta)
    inputs: dict[str, Any] = {"predictions": predictions_np, "targets": targets_np}
    if weight_np is not None:
        loss = loss * const(weight_np)
        inputs["weight"] = weight_np
    options: dict[str, Any] = {"reduction": reduction}
    if delta is not None:
        options["delta"] = delta
    loss = reduce(loss, reduction)
    return finish(case_id, loss_name, dtype, inputs, options, loss, {"predictions": predictions})


def regression_cases() -> list[dict[str, Any]]:
    """(weight, shape, delta) settings x loss x reduction x dtype, then values of 1e4.

    Two elements have prediction == target (mae's gradient is sign(0) = 0 there) and two sit at
    exactly |d| = delta (the seam of huber's branches).
    """
    cases = []
    settings = [("w0", "2d", 1.0), ("wc", "3d", 0.5), ("wfull", "2d", 2.0)]
    for loss_name in ("mse", "mae", "huber"):
        for wkind, shape, delta in settings:
            for dtype in DTYPES:
                rng = rng_for(f"regression-{wkind}-{shape}-{dtype}")
                full = SHAPES[shape]
                predictions = randn(rng, full, dtype, scale=2.0)
                targets = randn(rng, full, dtype, scale=2.0)
                flat_p, flat_t = predictions.reshape(-1), targets.reshape(-1)
                flat_t[[0, 7]] = flat_p[[0, 7]]
                flat_t[[3, 11]] = 0.25
                flat_p[3], flat_p[11] = 0.25 + delta, 0.25 - delta
                weight = None
                if wkind == "wfull":
                    weight = uniform(rng, full, dtype, 0.0, 2.0)
                elif wkind == "wc":
                    weight = uniform(rng, (C,), dtype, 0.2, 2.0)
                d = delta if loss_name == "huber" else None
                for red in REDUCTIONS:
                    tag = f"-d{delta:g}" if loss_name == "huber" else ""
                    cid = f"{loss_name}{tag}-{wkind}-{red}-{shape}-{dtype}"
                    cases.append(
                        run_regression(cid, loss_name, dtype, predictions, targets, weight, d, red)
                    )
    big_p = np.array([[1e4, -1e4, 0.0], [5e3, 1e4, -1e4]])
    big_t = np.array([[-1e4, -1e4, 1e4], [0.0, 1e4 - 0.5, 1e4]])
    for loss_name in ("mse", "mae", "huber"):
        d = 1.0 if loss_name == "huber" else None
        for red in REDUCTIONS:
            cid = f"{loss_name}-edge-big-{red}"
            cases.append(run_regression(cid, loss_name, "float64", big_p, big_t, None, d, red))
    return cases


# --------------------------------------------------------------------------------------------


def build() -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(0)  # nothing below draws from torch's RNG; set for good measure
    cases = (
        sigmoid_focal_cases()
        + kl_cases()
        + bradley_terry_cases()
        + info_nce_cases()
        + triplet_cases()
        + regression_cases()
    )
    ids = [c["id"] for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RuntimeError(f"duplicate case ids: {dupes}")
    text = json.dumps(cases)
    if any(f'"{word}"' in text for word in ("nan", "inf", "-inf")):
        raise RuntimeError("a reference value is not finite")
    cases.sort(key=lambda c: c["id"])
    return {"generator": GENERATOR, "torch_version": str(torch.__version__), "cases": cases}


if __name__ == "__main__":
    main(build, DEFAULT_OUTPUT, __doc__)
