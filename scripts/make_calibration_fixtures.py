"""Record reference calibration values from torchmetrics, scikit-learn and Kumar et al.'s package.

The output, ``tests/fixtures/calibration_reference.json``, holds seeded, continuous inputs
(probabilities or logits, binary or multiclass) with the values other libraries compute on them:

* ``ece`` / ``mce`` / ``rmsce``: ``torchmetrics.functional.classification.
  {binary,multiclass}_calibration_error`` with ``norm="l1" / "max" / "l2"``. The multiclass
  function casts confidences to float32 before binning (``_multiclass_calibration_error_update``),
  so its values carry float32 rounding (about 1e-6 relative); ``*_float64`` are the same
  torchmetrics binning code (``_ce_compute``) run on the float64 confidences and accuracies.
* ``classwise_ece``: the mean over classes c of torchmetrics' ``binary_calibration_error`` of
  ``p[:, c]`` against ``labels == c`` (Kull et al. 2019's classwise ECE, one-vs-rest).
* ``ece_debiased``: ``calibration.utils.unbiased_l2_ce`` from ``uncertainty-calibration``
  (Kumar, Liang & Ma 2019) on the data binned here into ``[i / n, (i + 1) / n)`` (last closed).
* ``brier``, ``nll``, ``accuracy``, ``top_k_accuracy``: scikit-learn's ``brier_score_loss``,
  ``log_loss``, ``accuracy_score`` and ``top_k_accuracy_score``.

Torchmetrics puts a confidence of exactly 1.0 into an extra (n+1)-th bin and, for multiclass,
bins float32 values against float32 edges; the service uses float64 edges ``i / n`` and closes
the last bin. The data here are continuous and the script asserts that no confidence lies close
enough to an edge for those differences to matter; the service's edge semantics are tested
separately.

Reproduce (from the repository root)::

    python -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 torchmetrics scikit-learn uncertainty-calibration
    .venv-ref/bin/python scripts/make_calibration_fixtures.py

The script never imports the ``service`` package. Inputs come from ``numpy.random.Generator``s
seeded with a CRC32 of each case's name, so reruns write the same file.
"""

from __future__ import annotations

import argparse
import json
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
import torchmetrics
from calibration.utils import unbiased_l2_ce
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, top_k_accuracy_score
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)
from torchmetrics.functional.classification.calibration_error import _ce_compute

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "fixtures" / "calibration_reference.json"
NORMS = {"ece": "l1", "mce": "max", "rmsce": "l2"}
EDGE_MARGIN = 1e-7  # no confidence lies closer than this to an interior bin edge

# name, task, input kind, N, C, n_bins, top_k
CASES: list[tuple[str, str, str, int, int, int, list[int]]] = [
    ("multiclass-probs-c5", "multiclass", "probs", 1500, 5, 15, [1, 2, 3]),
    ("multiclass-logits-c10", "multiclass", "logits", 1000, 10, 10, [1, 5]),
    ("multiclass-probs-c3-7bins", "multiclass", "probs", 800, 3, 7, [2]),
    ("binary-probs", "binary", "probs", 2000, 2, 15, []),
    ("binary-logits", "binary", "logits", 1000, 2, 20, []),
]


def rng_for(key: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(key.encode("utf-8")))


def softmax(x: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(x), dim=-1).numpy()


def draw(name: str, task: str, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, C] (binary: [N]) and labels drawn from a softer model: overconfident scores."""
    rng = rng_for(name)
    if task == "binary":
        logits = rng.normal(0.3, 2.0, size=n)
        truth = 1 / (1 + np.exp(-0.6 * logits))
        return logits, (rng.uniform(size=n) < truth).astype(np.int64)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 3.0, size=(n, 1))
    truth = softmax(0.6 * logits)
    cumulative = np.cumsum(truth, axis=1)
    labels = (rng.uniform(size=(n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, c - 1).astype(np.int64)


def check_away_from_edges(confidence: np.ndarray, n_bins: int, name: str) -> None:
    """Continuous data: every confidence well inside its bin, in float64 and float32."""
    for values in (confidence, confidence.astype(np.float32).astype(np.float64)):
        scaled = values * n_bins
        nearest = np.rint(scaled)
        interior = (nearest > 0) & (nearest < n_bins)  # 0 and 1 are no edge between two bins
        distance = np.abs(scaled - nearest)[interior] / n_bins
        assert distance.min() > EDGE_MARGIN, f"{name}: a confidence lies on a bin edge"


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def expected_values(
    task: str,
    probs: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    c: int,
    n_bins: int,
    top_k: list[int],
) -> dict[str, Any]:
    y = torch.from_numpy(labels)
    out: dict[str, Any] = {}
    if task == "binary":
        confidence, outcome = probs, labels.astype(np.float64)
        hits = (probs > 0.5).astype(np.int64) == labels
        for key, norm in NORMS.items():
            # The logits themselves: torchmetrics applies the sigmoid to values outside [0, 1].
            value = binary_calibration_error(torch.from_numpy(scores), y, n_bins=n_bins, norm=norm)
            out[key] = float(value)
        per_class = [
            binary_calibration_error(torch.from_numpy(p), torch.from_numpy(t), n_bins=n_bins)
            for p, t in ((1 - probs, 1 - labels), (probs, labels))
        ]
        out["brier"] = float(brier_score_loss(labels, probs))
        out["nll"] = float(log_loss(labels, probs))
        out["accuracy"] = float(accuracy_score(labels, (probs > 0.5).astype(np.int64)))
    else:
        confidence = probs.max(axis=1)
        hits = probs.argmax(axis=1) == labels
        outcome = hits.astype(np.float64)
        for key, norm in NORMS.items():
            value = multiclass_calibration_error(
                torch.from_numpy(scores), y, num_classes=c, n_bins=n_bins, norm=norm
            )
            out[key] = float(value)
            exact = _ce_compute(
                torch.from_numpy(confidence), torch.from_numpy(outcome), n_bins, norm
            )
            out[f"{key}_float64"] = float(exact)
        per_class = [
            binary_calibration_error(
                torch.from_numpy(np.ascontiguousarray(probs[:, k])),
                torch.from_numpy((labels == k).astype(np.int64)),
                n_bins=n_bins,
            )
            for k in range(c)
        ]
        classes = list(range(c))
        out["brier"] = float(brier_score_loss(labels, probs, labels=classes))
        out["nll"] = float(log_loss(labels, probs, labels=classes))
        out["accuracy"] = float(accuracy_score(labels, probs.argmax(axis=1)))
        out["top_k_accuracy"] = {
            str(k): float(top_k_accuracy_score(labels, probs, k=k, labels=classes)) for k in top_k
        }
    assert hits.mean() == out["accuracy"]
    out["classwise_ece"] = float(np.mean([float(v) for v in per_class]))
    index = bin_index(confidence, n_bins)
    pairs = np.stack([confidence, outcome], axis=1)
    out["ece_debiased"] = float(unbiased_l2_ce([pairs[index == b] for b in range(n_bins)]))
    return out


def build_case(
    name: str, task: str, kind: str, n: int, c: int, n_bins: int, top_k: list[int]
) -> dict[str, Any]:
    logits, labels = draw(name, task, n, c)
    if task == "binary":
        probs = 1 / (1 + np.exp(-logits))
        confidence = probs
        per_class = [probs, 1 - probs]
    else:
        probs = softmax(logits)
        confidence = probs.max(axis=1)
        per_class = [probs[:, k] for k in range(c)]
    for values in (confidence, *per_class):
        check_away_from_edges(values, n_bins, name)
    scores = logits if kind == "logits" else probs
    return {
        "name": name,
        "task": task,
        "input": kind,
        "n_bins": n_bins,
        "top_k": top_k,
        "scores": scores.tolist(),
        "labels": labels.tolist(),
        "expected": expected_values(task, probs, scores, labels, c, n_bins, top_k),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    document = {
        "generator": "scripts/make_calibration_fixtures.py",
        "versions": {
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "scikit-learn": sklearn.__version__,
            "uncertainty-calibration": version("uncertainty-calibration"),
            "numpy": np.__version__,
        },
        "cases": [build_case(*case) for case in CASES],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(document['cases'])} cases to {args.output}")


if __name__ == "__main__":
    main()
