"""The calibration state: fixed-size sufficient statistics, and its wire form.

`_update` makes one from a batch (`update`) and adds them (`merge`).

A state holds sums, never samples: per bin the count, the sum of confidences and the sum of
outcomes (correct top labels; positives for binary), per class and bin the same for classwise
ECE, the sums of per-sample Brier scores and NLLs, the hits of each requested top-k and N. Its
size depends on `n_bins`, `C` and `len(top_k)`, not on N, and two states of disjoint shards add up
to the state of their union.

Wire form (`to_dict` / `from_dict`), version 1::

    {"version": 1, "task": "binary" | "multiclass", "n_classes": C, "n_bins": B,
     "binning": "uniform" | "quantile", "mergeable": bool, "edges": [B + 1 floats],
     "top_k": [k, ...], "n": N, "n_correct": int, "sum_brier": float, "sum_nll": float,
     "top_k_hits": [int per k],
     "bins": {"count": [B ints], "sum_confidence": [B floats], "sum_correct": [B ints]},
     "classwise": null | {"count": [[B ints] * C], "sum_confidence": [[...] * C],
                          "sum_correct": [[...] * C], "edges": null | [[B + 1 floats] * C]}}

Classwise bins are kept while `C * B <= MAX_CLASSWISE_CELLS` (C <= 4369 at 15 bins); beyond that
`classwise` is null and so is `classwise_ece`, which keeps a state for a 128k-token vocabulary
small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.calibration._bins import (
    BINNINGS,
    Binning,
    uniform_edges,
)
from service.engine.calibration._inputs import NLL_CAP, Task
from service.errors import FieldPath, InvalidInput, shown

STATE_VERSION = 1
MAX_COUNT = 2**53  # counts are exact integers in JSON (and in the float64 reader) up to here
MAX_CLASSWISE_CELLS = 2**16  # C * n_bins of the per-class bins a state carries


@dataclass(frozen=True)
class BinSums:
    """Sums per bin: `[B]` (top label) or `[C, B]` (per class). Host arrays."""

    count: np.ndarray  # int64
    sum_confidence: np.ndarray  # float64
    sum_correct: np.ndarray  # int64

    def __add__(self, other: BinSums) -> BinSums:
        return BinSums(
            self.count + other.count,
            self.sum_confidence + other.sum_confidence,
            self.sum_correct + other.sum_correct,
        )


@dataclass(frozen=True)
class CalibrationState:
    task: Task
    n_classes: int
    n_bins: int
    binning: Binning
    edges: np.ndarray  # [B + 1] float64
    top_k: tuple[int, ...]
    n: int
    n_correct: int
    sum_brier: float
    sum_nll: float
    top_k_hits: tuple[int, ...]
    bins: BinSums
    classwise: BinSums | None
    classwise_edges: np.ndarray | None  # [C, B + 1]; quantile bins only
    version: int = STATE_VERSION

    @property
    def mergeable(self) -> bool:
        return self.binning == "uniform"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready wire form (see the module docstring)."""
        classwise = None
        if self.classwise is not None:
            classwise = {
                **_sums_to_lists(self.classwise),
                "edges": None if self.classwise_edges is None else self.classwise_edges.tolist(),
            }
        return {
            "version": self.version,
            "task": self.task,
            "n_classes": self.n_classes,
            "n_bins": self.n_bins,
            "binning": self.binning,
            "mergeable": self.mergeable,
            "edges": self.edges.tolist(),
            "top_k": list(self.top_k),
            "n": self.n,
            "n_correct": self.n_correct,
            "sum_brier": self.sum_brier,
            "sum_nll": self.sum_nll,
            "top_k_hits": list(self.top_k_hits),
            "bins": _sums_to_lists(self.bins),
            "classwise": classwise,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field: FieldPath = ("state",)) -> CalibrationState:
        """Read a state in wire form, checking that its parts fit together."""
        return _StateReader(data, field).read()


def keeps_classwise(n_classes: int, n_bins: int) -> bool:
    return n_classes * n_bins <= MAX_CLASSWISE_CELLS


# --- wire form --------------------------------------------------------------------------------


def _sums_to_lists(sums: BinSums) -> dict[str, Any]:
    return {
        "count": sums.count.tolist(),
        "sum_confidence": sums.sum_confidence.tolist(),
        "sum_correct": sums.sum_correct.tolist(),
    }


def dotted(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _StateReader:
    """`CalibrationState.from_dict`: every check names the offending part of the state."""

    def __init__(self, data: Mapping[str, Any], field: FieldPath) -> None:
        self.data = data
        self.field = field

    def fail(self, path: tuple[str, ...], message: str) -> InvalidInput:
        where = (*self.field, *path)
        return InvalidInput(f"{dotted(where)}: {message}", field=where)

    def read(self) -> CalibrationState:
        d = self.data
        if d.get("version") != STATE_VERSION:
            raise self.fail(
                ("version",), f"unsupported state version {shown(d.get('version'))}; expected 1"
            )
        task = d.get("task")
        if task not in ("binary", "multiclass"):
            raise self.fail(("task",), f"expected 'binary' or 'multiclass', got {shown(task)}")
        binning = d.get("binning")
        if binning not in BINNINGS:
            raise self.fail(("binning",), f"expected 'uniform' or 'quantile', got {shown(binning)}")
        n_classes = self.integer(("n_classes",), low=1)
        if task == "binary" and n_classes != 2:
            raise self.fail(("n_classes",), f"a binary state has 2 classes, got {n_classes}")
        n_bins = self.integer(("n_bins",), low=1)
        n = self.integer(("n",), low=0)
        edges = self.array(("edges",), (n_bins + 1,), np.float64)
        if binning == "uniform" and not np.array_equal(edges, uniform_edges(n_bins)):
            raise self.fail(("edges",), f"uniform edges must be i / {n_bins}, i = 0..{n_bins}")
        self.check_edges(("edges",), edges)
        top_k = tuple(int(k) for k in self.array(("top_k",), None, np.int64))
        if any(k < 1 for k in top_k):
            raise self.fail(("top_k",), "every k must be >= 1")
        hits = self.array(("top_k_hits",), (len(top_k),), np.int64)
        bins = self.sums(("bins",), (n_bins,), n)
        if int(bins.count.sum()) != n:
            raise self.fail(
                ("bins", "count"), f"counts sum to {int(bins.count.sum())}, not n = {n}"
            )
        n_correct = self.integer(("n_correct",), low=0)
        if n_correct > n or np.any(hits > n) or np.any(hits < 0):
            raise self.fail(("n_correct",), f"n_correct and top_k_hits must lie in [0, n = {n}]")
        sum_brier = self.number(("sum_brier",), high=2.0 * n)
        sum_nll = self.number(("sum_nll",), high=NLL_CAP * n * (1 + 1e-12))
        classwise, classwise_edges = self.classwise(n_classes, n_bins, binning, n)
        return CalibrationState(
            task=task,
            n_classes=n_classes,
            n_bins=n_bins,
            binning=binning,
            edges=edges,
            top_k=top_k,
            n=n,
            n_correct=n_correct,
            sum_brier=sum_brier,
            sum_nll=sum_nll,
            top_k_hits=tuple(int(h) for h in hits),
            bins=bins,
            classwise=classwise,
            classwise_edges=classwise_edges,
        )

    def classwise(
        self, n_classes: int, n_bins: int, binning: str, n: int
    ) -> tuple[BinSums | None, np.ndarray | None]:
        block = self.data.get("classwise")
        if block is None:
            return None, None
        if not isinstance(block, Mapping):
            raise self.fail(("classwise",), "expected an object or null")
        if not keeps_classwise(n_classes, n_bins):
            raise self.fail(
                ("classwise",),
                f"n_classes * n_bins = {n_classes * n_bins} exceeds {MAX_CLASSWISE_CELLS}",
            )
        sums = _StateReader(block, (*self.field, "classwise")).sums((), (n_classes, n_bins), n)
        if np.any(sums.count.sum(axis=1) != n):
            raise self.fail(("classwise", "count"), f"every class's counts must sum to n = {n}")
        edges = None
        if binning == "quantile":
            edges = self.array(("classwise", "edges"), (n_classes, n_bins + 1), np.float64)
            self.check_edges(("classwise", "edges"), edges)
        elif block.get("edges") is not None:
            raise self.fail(("classwise", "edges"), "uniform bins carry no per-class edges")
        return sums, edges

    def sums(self, path: tuple[str, ...], shape: tuple[int, ...], n: int) -> BinSums:
        count = self.array((*path, "count"), shape, np.int64)
        total = self.array((*path, "sum_confidence"), shape, np.float64)
        correct = self.array((*path, "sum_correct"), shape, np.int64)
        if np.any(count < 0):
            raise self.fail((*path, "count"), "counts must be >= 0")
        # Confidences lie in [0, 1], so a bin's sum lies in [0, count] (with rounding slack).
        slack = 1e-9 * np.maximum(count, 1)
        if np.any(total < -slack) or np.any(total > count + slack):
            raise self.fail((*path, "sum_confidence"), "each sum must lie in [0, count]")
        if np.any(correct < 0) or np.any(correct > count):
            raise self.fail((*path, "sum_correct"), "each sum must lie in [0, count]")
        return BinSums(count, total, correct)

    def array(
        self, path: tuple[str, ...], shape: tuple[int, ...] | None, dtype: type
    ) -> np.ndarray:
        node: Any = self.data
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        try:
            values: np.ndarray = np.asarray(node, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise self.fail(path, "expected a rectangular array of numbers") from None
        if shape is None and values.ndim != 1:
            raise self.fail(path, "expected a list of numbers")
        if shape is not None and values.shape != shape:
            raise self.fail(path, f"expected shape {list(shape)}, got {list(values.shape)}")
        if not np.all(np.isfinite(values)):
            raise self.fail(path, "values must be finite")
        if dtype is np.int64:
            if np.any(values != np.floor(values)) or np.any(np.abs(values) > MAX_COUNT):
                raise self.fail(path, "expected integers (below 2^53)")
            return values.astype(np.int64)
        return values

    def integer(self, path: tuple[str, ...], *, low: int) -> int:
        value = self.data.get(path[0])
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(path, f"expected an integer >= {low}, got {shown(value)}")
        return value

    def number(self, path: tuple[str, ...], *, high: float) -> float:
        value = self.data.get(path[0])
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value) if abs(value) < 2**1023 else math.inf  # a huge int: rejected
            if math.isfinite(number) and 0 <= number <= high:
                return number
        raise self.fail(path, f"expected a finite number in [0, {high}], got {shown(value)}")

    def check_edges(self, path: tuple[str, ...], edges: np.ndarray) -> None:
        ok = np.all(edges[..., 0] == 0) and np.all(edges[..., -1] == 1)
        if not ok or np.any(np.diff(edges, axis=-1) < 0):
            raise self.fail(path, "edges must rise from 0 to 1")
