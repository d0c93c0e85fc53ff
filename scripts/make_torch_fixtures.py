"""Record PyTorch reference values for the loss service as JSON fixtures.

The output, ``tests/fixtures/torch_reference.json``, holds losses, per-sample losses and
gradients computed by ``torch.nn.functional.cross_entropy`` and
``torch.nn.functional.binary_cross_entropy_with_logits`` on small, seeded inputs. The tests
compare the service against it without needing torch installed.

Reproduce (from the repository root)::

    python -m venv .venv-ref && .venv-ref/bin/pip install torch==2.13.0 numpy && .venv-ref/bin/python scripts/make_torch_fixtures.py

The script imports only torch, numpy and the standard library (never the ``service``
package). Every case draws its inputs from a ``numpy.random.Generator`` seeded from a CRC32
of the case's data key, so reruns produce a byte-identical file.

Layout conventions (see the fixture file's ``cases``):

* Everything stored is class-last: logits ``[N, C]`` or ``[B, T, C]``. Torch wants the class
  axis at dim 1, so 3-D inputs are passed as ``logits.movedim(-1, 1)`` (probability targets
  likewise) and the results are moved back.
* ``expected.loss`` is what torch returns for the reduction; for ``"none"`` it is the sum of
  the per-sample tensor, which is stored as ``expected.per_sample``.
* ``expected.grad`` is d(loss)/d(logits) of that reduced value (for ``"none"``: of
  ``per_sample.sum()``), from autograd.
* Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"``.

Long because it lists every recorded case, one per line, beside the PyTorch call that answers it.
"""  # noqa: E501 (the one-line reproduce command above)

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "fixtures" / "torch_reference.json"
GENERATOR = "scripts/make_torch_fixtures.py"

C = 5
N_2D = 6
SHAPE_3D = (2, 3)
N_BCE_2D = 4
REDUCTIONS = ("mean", "sum", "none")
DTYPES = ("float64", "float32")
DEFAULT_IGNORE = -100

NP_DTYPES: dict[str, type[np.floating[Any]]] = {"float64": np.float64, "float32": np.float32}


# --------------------------------------------------------------------------------------------
# helpers


def rng_for(key: str) -> np.random.Generator:
    """A generator seeded from a stable hash of ``key`` (independent of case order)."""
    return np.random.default_rng(zlib.crc32(key.encode("utf-8")))


def fmt_float(x: float) -> float | str:
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def to_json(value: Any) -> Any:
    """Nested lists of Python floats/ints with non-finite floats as strings."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, bool):
        raise TypeError("unexpected bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return fmt_float(value)
    raise TypeError(f"unexpected value {value!r}")


def randn(rng: np.random.Generator, shape: Iterable[int], dtype: str, scale: float = 3.0) -> Any:
    """Standard normal draws generated directly in ``dtype`` (times ``scale``)."""
    np_dtype = NP_DTYPES[dtype]
    return rng.standard_normal(tuple(shape), dtype=np_dtype) * np_dtype(scale)


def uniform(
    rng: np.random.Generator, shape: Iterable[int], dtype: str, lo: float, hi: float
) -> Any:
    np_dtype = NP_DTYPES[dtype]
    u = rng.random(tuple(shape), dtype=np_dtype)
    return (np_dtype(lo) + u * np_dtype(hi - lo)).astype(np_dtype)


def softmax_rows(z: Any) -> Any:
    """Softmax over the last axis, computed in the array's own dtype."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def batch_shape(shape: str) -> tuple[int, ...]:
    return (N_2D,) if shape == "2d" else SHAPE_3D


def bce_shape(shape: str) -> tuple[int, ...]:
    return (N_BCE_2D, C) if shape == "2d" else (*SHAPE_3D, C)


def backpropagate(loss: torch.Tensor, reduction: str) -> dict[str, Any]:
    """The expected loss (for 'none': the sum, and `per_sample`), after `backward()` of it."""
    expected: dict[str, Any] = {}
    if reduction == "none":
        total = loss.sum()
        expected["loss"] = fmt_float(total.item())
        expected["per_sample"] = to_json(loss)
    else:
        total = loss
        expected["loss"] = fmt_float(loss.item())
    total.backward()
    return expected


def finish(
    case_id: str,
    loss_name: str,
    dtype: str,
    inputs: dict[str, Any],
    options: dict[str, Any],
    loss: torch.Tensor,
    logits: torch.Tensor,
) -> dict[str, Any]:
    """Backpropagate and assemble a case. ``loss`` is class-last already for 'none'."""
    expected = backpropagate(loss, options["reduction"])
    assert logits.grad is not None
    expected["grad"] = to_json(logits.grad)
    return {
        "id": case_id,
        "loss": loss_name,
        "dtype": dtype,
        # JSON cannot tell the shape of an empty array ([0, C] is written as []).
        "logits_shape": list(logits.shape),
        "inputs": {k: to_json(v) for k, v in inputs.items()},
        "options": options,
        "expected": expected,
    }


# --------------------------------------------------------------------------------------------
# cross-entropy


def run_ce(
    case_id: str,
    dtype: str,
    logits_np: Any,
    labels: Any,
    weight_np: Any | None,
    reduction: str,
    ignore_index: int,
    label_smoothing: float,
) -> dict[str, Any]:
    """``labels`` is an int64 array (class indices) or a float array (probabilities)."""
    logits = torch.from_numpy(np.array(logits_np)).requires_grad_()
    probs = np.issubdtype(labels.dtype, np.floating)
    target = torch.from_numpy(np.array(labels))
    weight = None if weight_np is None else torch.from_numpy(np.array(weight_np))
    x = logits
    if logits.dim() == 3:
        x = logits.movedim(-1, 1)
        if probs:
            target = target.movedim(-1, 1)
    loss = F.cross_entropy(
        x,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    inputs: dict[str, Any] = {"logits": logits_np, "labels": labels}
    if weight_np is not None:
        inputs["weight"] = weight_np
    options = {
        "reduction": reduction,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
    }
    return finish(case_id, "cross-entropy", dtype, inputs, options, loss, logits)


def ce_weight(rng: np.random.Generator, kind: str, dtype: str) -> Any | None:
    if kind == "w0":
        return None
    w = uniform(rng, (C,), dtype, 0.2, 2.0)
    if kind == "wz":
        w[1] = 0
    return w


def index_labels(rng: np.random.Generator, shape: tuple[int, ...], ign: str, wkind: str) -> Any:
    """Class-index labels; see the ``ign*`` / ``wz`` conventions in ``ce_index_cases``."""
    n = int(np.prod(shape))
    flat = rng.integers(0, C, size=n, dtype=np.int64)
    pos = rng.permutation(n)
    # pos[0]/pos[1]: ignored positions for ign1 / label 2 for ign2; pos[2]: a class-1 label for
    # the zero-weight class; pos[3:]: stay ordinary, so something is never ignored.
    if ign == "ign1":
        flat[pos[:2]] = DEFAULT_IGNORE
    elif ign == "ign2":
        flat[pos[:2]] = 2
        flat[pos[3:]] = np.where(flat[pos[3:]] == 2, 3, flat[pos[3:]])
    if wkind == "wz":
        flat[pos[2]] = 1
    return flat.reshape(shape)


def ce_index_cases() -> list[dict[str, Any]]:
    """weight x ignore x smoothing x reduction x shape x dtype, class-index labels.

    ign0: no ignored labels (ignore_index -100); ign1: two labels are -100 (ignore_index -100);
    ign2: ignore_index=2 and label 2 occurs twice. w0: no weight; w1: positive weight [C];
    wz: like w1 but class 1 has weight 0 and label 1 occurs (reduced grid).
    """
    cases = []
    for wkind in ("w0", "w1", "wz"):
        for ign in ("ign0", "ign1", "ign2"):
            for ls in (0.0, 0.1, 0.35):
                for shape in ("2d", "3d"):
                    for dtype in DTYPES:
                        if wkind == "wz" and (shape != "2d" or dtype != "float64" or ls == 0.35):
                            continue
                        key = f"ce-index-{wkind}-{ign}-{shape}-{dtype}"
                        rng = rng_for(key)
                        bshape = batch_shape(shape)
                        logits = randn(rng, (*bshape, C), dtype)
                        labels = index_labels(rng, bshape, ign, wkind)
                        weight = ce_weight(rng, wkind, dtype)
                        ignore_index = 2 if ign == "ign2" else DEFAULT_IGNORE
                        for red in REDUCTIONS:
                            cid = f"ce-index-{wkind}-{ign}-ls{ls:g}-{red}-{shape}-{dtype}"
                            cases.append(
                                run_ce(cid, dtype, logits, labels, weight, red, ignore_index, ls)
                            )
    return cases


def ce_two_class_cases() -> list[dict[str, Any]]:
    """Two classes (a binary classifier's softmax head), class-index labels, no weight or
    smoothing: rows [16, 2] whose logit gaps run from about 0.01 to 30 (confident rows
    included), x ign0 / ign1 / ignore_index 1 (a class) x reduction x dtype."""
    cases = []
    for ign in ("ign0", "ign1", "ignclass"):
        for dtype in DTYPES:
            rng = rng_for(f"ce-two-{ign}-{dtype}")
            row_scales = np.geomspace(0.01, 10.0, 16).astype(NP_DTYPES[dtype])[:, None]
            logits = randn(rng, (16, 2), dtype) * row_scales
            labels = rng.integers(0, 2, size=16, dtype=np.int64)
            if ign == "ign1":
                labels[rng.permutation(16)[:3]] = DEFAULT_IGNORE
            ignore_index = 1 if ign == "ignclass" else DEFAULT_IGNORE
            for red in REDUCTIONS:
                cid = f"ce-two-{ign}-{red}-{dtype}"
                cases.append(run_ce(cid, dtype, logits, labels, None, red, ignore_index, 0.0))
    return cases


def prob_labels(rng: np.random.Generator, shape: tuple[int, ...], kind: str, dtype: str) -> Any:
    """Probability rows: soft (softmax of randn), onehot (exact), zeros (some exact zeros)."""
    if kind == "onehot":
        idx = rng.integers(0, C, size=shape)
        return np.eye(C, dtype=NP_DTYPES[dtype])[idx]
    p = softmax_rows(randn(rng, (*shape, C), dtype, scale=1.0))
    if kind == "zeros":
        # zero two entries per row (the first row keeps a single non-zero) and renormalise
        flat = p.reshape(-1, C)
        for r in range(flat.shape[0]):
            cols = rng.permutation(C)[: (C - 1) if r == 0 else 2]
            flat[r, cols] = 0
            flat[r] /= flat[r].sum()
        p = flat.reshape(p.shape)
    return p.astype(NP_DTYPES[dtype])


def ce_prob_cases() -> list[dict[str, Any]]:
    """Probability targets: weight x smoothing x reduction x shape x dtype (soft rows), and
    a 2-D float64 grid for exact one-hot rows and rows with zero entries."""
    cases = []
    for kind in ("soft", "onehot", "zeros"):
        for wkind in ("w0", "w1"):
            for ls in (0.0, 0.2):
                for shape in ("2d", "3d"):
                    for dtype in DTYPES:
                        if kind != "soft" and (shape != "2d" or dtype != "float64"):
                            continue
                        key = f"ce-prob-{kind}-{wkind}-{shape}-{dtype}"
                        rng = rng_for(key)
                        bshape = batch_shape(shape)
                        logits = randn(rng, (*bshape, C), dtype)
                        labels = prob_labels(rng, bshape, kind, dtype)
                        weight = ce_weight(rng, wkind, dtype)
                        for red in REDUCTIONS:
                            cid = f"ce-prob-{kind}-{wkind}-ls{ls:g}-{red}-{shape}-{dtype}"
                            cases.append(
                                run_ce(cid, dtype, logits, labels, weight, red, DEFAULT_IGNORE, ls)
                            )
    return cases


def ce_edge_cases() -> list[dict[str, Any]]:
    """Float64, 2-D edge cases (ids ``ce-edge-<what>-...``)."""
    dtype = "float64"
    cases = []
    for wkind in ("w0", "w1"):
        for ls in (0.0, 0.1):
            # every label ignored
            rng = rng_for(f"ce-edge-allign-{wkind}")
            logits = randn(rng, (4, C), dtype)
            labels = np.full(4, DEFAULT_IGNORE, dtype=np.int64)
            weight = ce_weight(rng, wkind, dtype)
            for red in REDUCTIONS:
                cid = f"ce-edge-allign-{wkind}-ls{ls:g}-{red}"
                cases.append(run_ce(cid, dtype, logits, labels, weight, red, DEFAULT_IGNORE, ls))
            # empty batch, shape [0, C]
            rng = rng_for(f"ce-edge-empty-{wkind}")
            logits = np.zeros((0, C), dtype=np.float64)
            labels = np.zeros(0, dtype=np.int64)
            weight = ce_weight(rng, wkind, dtype)
            for red in REDUCTIONS:
                cid = f"ce-edge-empty-{wkind}-ls{ls:g}-{red}"
                cases.append(run_ce(cid, dtype, logits, labels, weight, red, DEFAULT_IGNORE, ls))
    # every non-ignored label sits in a class of weight 0 (mean is 0/0)
    rng = rng_for("ce-edge-allzeroweight")
    logits = randn(rng, (4, C), dtype)
    labels = np.array([1, 1, DEFAULT_IGNORE, 1], dtype=np.int64)
    weight = ce_weight(rng, "wz", dtype)
    for ls in (0.0, 0.1):
        for red in REDUCTIONS:
            cid = f"ce-edge-allzeroweight-ls{ls:g}-{red}"
            cases.append(run_ce(cid, dtype, logits, labels, weight, red, DEFAULT_IGNORE, ls))
    # a -inf logit on a non-target class, no smoothing (smoothing would make the loss inf)
    rng = rng_for("ce-edge-neginf")
    logits = randn(rng, (4, C), dtype)
    logits[0, 1] = -np.inf
    logits[2, 4] = -np.inf
    labels = np.array([0, 2, 3, 1], dtype=np.int64)
    for wkind in ("w0", "w1"):
        weight = ce_weight(rng_for(f"ce-edge-neginf-{wkind}"), wkind, dtype)
        for red in REDUCTIONS:
            cid = f"ce-edge-neginf-{wkind}-ls0-{red}"
            cases.append(run_ce(cid, dtype, logits, labels, weight, red, DEFAULT_IGNORE, 0.0))
    # logits of magnitude 1e4
    logits = np.array(
        [
            [1e4, -1e4, 0.0, 5e3, -5e3],
            [-1e4, 1e4, 5e3, 0.0, -5e3],
            [0.0, 0.0, 1e4, -1e4, 1e4],
            [-5e3, -1e4, -1e4, -1e4, -1e4],
        ],
        dtype=np.float64,
    )
    labels = np.array([0, 0, 3, 1], dtype=np.int64)
    for ls in (0.0, 0.1):
        for red in REDUCTIONS:
            cid = f"ce-edge-big-w0-ls{ls:g}-{red}"
            cases.append(run_ce(cid, dtype, logits, labels, None, red, DEFAULT_IGNORE, ls))
    return cases


# --------------------------------------------------------------------------------------------
# binary cross-entropy


def run_bce(
    case_id: str,
    dtype: str,
    logits_np: Any,
    labels_np: Any,
    weight_np: Any | None,
    pos_weight_np: Any | None,
    reduction: str,
) -> dict[str, Any]:
    logits = torch.from_numpy(np.array(logits_np)).requires_grad_()
    labels = torch.from_numpy(np.array(labels_np))
    weight = None if weight_np is None else torch.from_numpy(np.array(weight_np))
    pos_weight = None if pos_weight_np is None else torch.from_numpy(np.array(pos_weight_np))
    loss = F.binary_cross_entropy_with_logits(
        logits, labels, weight=weight, pos_weight=pos_weight, reduction=reduction
    )
    inputs: dict[str, Any] = {"logits": logits_np, "labels": labels_np}
    if weight_np is not None:
        inputs["weight"] = weight_np
    if pos_weight_np is not None:
        inputs["pos_weight"] = pos_weight_np
    return finish(
        case_id, "binary-cross-entropy", dtype, inputs, {"reduction": reduction}, loss, logits
    )


def bce_labels(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Any:
    """Soft labels in [0, 1] with roughly half replaced by exact 0 or 1."""
    y = uniform(rng, shape, dtype, 0.0, 1.0)
    hard = rng.random(shape) < 0.5
    y[hard] = np.round(y[hard])
    return y


def bce_cases() -> list[dict[str, Any]]:
    """weight (none / full shape / [C]) x pos_weight x reduction x shape x dtype, then edges."""
    cases = []
    for wkind in ("w0", "wfull", "wc"):
        for pkind in ("pw0", "pw1"):
            for shape in ("2d", "3d"):
                for dtype in DTYPES:
                    rng = rng_for(f"bce-{wkind}-{pkind}-{shape}-{dtype}")
                    full = bce_shape(shape)
                    logits = randn(rng, full, dtype)
                    labels = bce_labels(rng, full, dtype)
                    weight = None
                    if wkind == "wfull":
                        weight = uniform(rng, full, dtype, 0.0, 2.0)
                    elif wkind == "wc":
                        weight = uniform(rng, (C,), dtype, 0.2, 2.0)
                    pos_weight = uniform(rng, (C,), dtype, 0.5, 3.0) if pkind == "pw1" else None
                    for red in REDUCTIONS:
                        cid = f"bce-{wkind}-{pkind}-{red}-{shape}-{dtype}"
                        cases.append(run_bce(cid, dtype, logits, labels, weight, pos_weight, red))
    dtype = "float64"
    big = np.array(
        [
            [1e4, -1e4, 0.0, 5e3, -5e3],
            [-1e4, 1e4, 5e3, 1e4, -5e3],
            [1e4, -1e4, -1e4, 1e4, 0.0],
            [-5e3, 5e3, 1e4, -1e4, 1e4],
        ],
        dtype=np.float64,
    )
    big_labels = np.array(
        [
            [1.0, 0.0, 0.5, 0.0, 1.0],
            [1.0, 0.0, 0.0, 1.0, 0.25],
            [0.0, 1.0, 0.0, 1.0, 1.0],
            [0.75, 1.0, 0.0, 0.0, 1.0],
        ],
        dtype=np.float64,
    )
    rng = rng_for("bce-edge")
    pos_weight = uniform(rng, (C,), dtype, 0.5, 3.0)
    neginf = randn(rng, (4, C), dtype)
    neginf_labels = bce_labels(rng, (4, C), dtype)
    neginf[0, 0] = -np.inf
    neginf_labels[0, 0] = 0.0
    neginf[2, 3] = -np.inf
    neginf_labels[2, 3] = 0.0
    for pkind in ("pw0", "pw1"):
        pw = pos_weight if pkind == "pw1" else None
        for red in REDUCTIONS:
            cid = f"bce-edge-big-{pkind}-{red}"
            cases.append(run_bce(cid, dtype, big, big_labels, None, pw, red))
            cid = f"bce-edge-neginf-{pkind}-{red}"
            cases.append(run_bce(cid, dtype, neginf, neginf_labels, None, pw, red))
    return cases


# --------------------------------------------------------------------------------------------


def build() -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(0)  # nothing below draws from torch's RNG; set for good measure
    cases = ce_index_cases() + ce_two_class_cases() + ce_prob_cases() + ce_edge_cases()
    cases += bce_cases()
    ids = [c["id"] for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise RuntimeError(f"duplicate case ids: {dupes}")
    cases.sort(key=lambda c: c["id"])
    return {"generator": GENERATOR, "torch_version": str(torch.__version__), "cases": cases}


def write(doc: dict[str, Any], path: Path) -> None:
    """One case per line: valid JSON, compact, and diff-friendly."""
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = ["{"]
    lines += [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(' "cases": [')
    body = [json.dumps(c, allow_nan=False, separators=(",", ":")) for c in doc["cases"]]
    lines.append(",\n".join(f"  {b}" for b in body))
    lines.append(" ]")
    lines.append("}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(
    make: Callable[[], dict[str, Any]] | None = None,
    default_output: Path = DEFAULT_OUTPUT,
    description: str | None = __doc__,
) -> None:
    """Build the cases (`make`, this module's `build` by default) and write them."""
    parser = argparse.ArgumentParser(description=(description or "").splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output)
    args = parser.parse_args()
    doc = (make or build)()
    write(doc, args.output)
    # sanity: the file parses with the standard library and round-trips
    if json.loads(args.output.read_text(encoding="utf-8")) != json.loads(json.dumps(doc)):
        raise RuntimeError("fixture file does not round-trip")
    print(f"wrote {len(doc['cases'])} cases, {args.output.stat().st_size} bytes to {args.output}")


if __name__ == "__main__":
    main()
