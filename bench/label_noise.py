"""Confident learning: the engine's report against cleanlab 2.x on the same probabilities.

    python -m bench.label_noise [--repeats 3] [--shapes 1000000x100,100000x1000]
                                [--rank-by self_confidence]

Float32 probabilities of a classifier that is right about the true class most of the time, and
labels of which 15% were replaced (half by any other class, half by the next one); seeded. Runs
interleaved in one process and prints medians and ratios (quote ratios, not times: these machines
are shared). Columns:

- engine: `find_label_issues(probs, labels, rank_by=...)`, the whole report (ranked issues,
  quality scores, confident joint, thresholds, transition matrix, noise rate);
- cleanlab: `filter.find_label_issues(labels, probs, return_indices_ranked_by=..., n_jobs=1)`;
- cleanlab all: that plus what the rest of the report takes there, `rank.get_label_quality_scores`,
  `count.compute_confident_joint` and `count.estimate_latent` (the sum of their medians);
- exp: one `np.exp(probs, out=buffer)` pass over the probabilities, the cost of the cheapest
  transcendental pass over the input;
- peak/input: the most resident memory a call adds (Linux's VmHWM, reset before the call: it
  counts numba's allocations, which tracemalloc does not see) over the size of the probabilities.

Before timing, the answers are compared: the same issues in the same order, the same quality
scores and confident joint, the transition matrix equal to cleanlab's noise matrix transposed.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from cleanlab import count, rank
from cleanlab import filter as cleanlab_filter

from bench.engine import _measure, _ms, _print_table, _ratio, _shapes
from service.engine import RANKINGS, find_label_issues

DEFAULT_SHAPES = "1000000x100,100000x1000"


def draw(rows: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (float32, built in place: no float64 temporaries of the input's size) and
    noisy labels; the classifier's accuracy on the true class is about 85%."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, rows)
    probs = rng.standard_normal((rows, classes), dtype=np.float32)
    probs[np.arange(rows), true] += 4 * rng.uniform(0.5, 1.5, rows).astype(np.float32)
    probs *= rng.uniform(0.5, 2.0, (rows, 1)).astype(np.float32)
    probs -= probs.max(axis=1, keepdims=True)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    labels = true.copy()
    flipped = rng.random(rows) < 0.15
    anywhere = rng.random(rows) < 0.5
    shift = np.where(anywhere, rng.integers(1, classes, rows), 1)
    labels[flipped] = (true[flipped] + shift[flipped]) % classes
    return probs, labels


def check(probs: np.ndarray, labels: np.ndarray, rank_by: str) -> int:
    """Compare the report with cleanlab's answers; the number of issues."""
    report = find_label_issues(probs, labels, rank_by=rank_by)  # type: ignore[arg-type]
    issues = cleanlab_filter.find_label_issues(
        labels, probs, return_indices_ranked_by=rank_by, n_jobs=1
    )
    joint = count.compute_confident_joint(labels, probs)
    _, noise_matrix, _ = count.estimate_latent(joint, labels)
    quality = rank.get_label_quality_scores(labels, probs, method=rank_by)
    np.testing.assert_array_equal(report.label_issues, issues)
    np.testing.assert_array_equal(report.label_quality, quality.astype(np.float64))
    np.testing.assert_array_equal(report.confident_joint, joint)
    if np.all(joint.sum(axis=0) > 0):  # else the engine's identity rows differ, by design
        np.testing.assert_allclose(report.transition_matrix, noise_matrix.T, rtol=0, atol=1e-12)
    return report.n_issues


def _resident_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def peak_bytes(step: Callable[[], object]) -> float:
    """The most resident memory `step` adds (NaN where Linux's peak cannot be reset)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the system first
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")  # VmHWM := VmRSS
    except OSError:
        return float("nan")
    before = _resident_kib("VmRSS")
    step()
    return 1024.0 * (_resident_kib("VmHWM") - before)


def bench_shape(rows: int, classes: int, rank_by: str, repeats: int) -> dict[str, float]:
    probs, labels = draw(rows, classes)
    n_issues = check(probs, labels, rank_by)
    joint = count.compute_confident_joint(labels, probs)
    buffer = np.empty_like(probs)
    contenders: dict[str, Callable[[], Any]] = {
        "exp": lambda: np.exp(probs, out=buffer),
        "engine": lambda: find_label_issues(probs, labels, rank_by=rank_by),  # type: ignore[arg-type]
        "cleanlab": lambda: cleanlab_filter.find_label_issues(
            labels, probs, return_indices_ranked_by=rank_by, n_jobs=1
        ),
        "quality": lambda: rank.get_label_quality_scores(labels, probs, method=rank_by),
        "joint": lambda: count.compute_confident_joint(labels, probs),
        "latent": lambda: count.estimate_latent(joint, labels),
    }
    result = _measure(contenders, repeats)
    result["cleanlab all"] = statistics.fsum(
        result[name] for name in ("cleanlab", "quality", "joint", "latent")
    )
    result["peak_engine"] = peak_bytes(contenders["engine"]) / probs.nbytes
    result["peak_cleanlab"] = peak_bytes(contenders["cleanlab"]) / probs.nbytes
    result["issues"] = n_issues / rows
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--rank-by", default="self_confidence", choices=RANKINGS)
    args = parser.parse_args()
    find_label_issues(*draw(1000, 10), rank_by=args.rank_by)  # compile or load the kernels
    _print_table(
        f"Label issues, float32 probabilities, rank_by={args.rank_by}, answers equal",
        [
            ("issues", lambda r: f"{r['issues']:.1%}"),
            _ms("exp"),
            _ms("engine"),
            _ms("cleanlab"),
            _ms("cleanlab all"),
            ("engine/cleanlab", lambda r: _ratio(r, "engine", "cleanlab")),
            ("engine/cleanlab all", lambda r: _ratio(r, "engine", "cleanlab all")),
            ("engine/exp", lambda r: _ratio(r, "engine", "exp")),
            ("peak/input engine", lambda r: f"{r['peak_engine']:.2f}"),
            ("peak/input cleanlab", lambda r: f"{r['peak_cleanlab']:.2f}"),
        ],
        (
            (f"{m} x {c}", bench_shape(m, c, args.rank_by, args.repeats))
            for m, c in _shapes(args.shapes)
        ),
    )


if __name__ == "__main__":
    main()
