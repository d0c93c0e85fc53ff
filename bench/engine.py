"""Cross-entropy value + gradient: the engine against the memory floor and PyTorch on the CPU.

    python -m bench.engine [--repeats 7] [--shapes 8192x1000,2048x32000]

Runs interleaved in one process and prints medians and ratios (quote ratios, not times: these
machines are shared). The memory floor is one read of the logits plus one write of a gradient
(`np.copyto` into a preallocated array). PyTorch's column appears when torch is importable; set
THP_MEM_ALLOC_ENABLE=1 to give it huge pages, where it is at its best. Peak memory is the
engine call's peak allocation (tracemalloc) relative to the logits plus the gradient.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from service.engine import cross_entropy, reduce_loss

DEFAULT_SHAPES = "65536x10,8192x1000,2048x32000,256x128256"


def _engine(logits: np.ndarray, labels: np.ndarray) -> Callable[[], object]:
    return lambda: reduce_loss(cross_entropy(logits, labels), "mean")


def _floor(logits: np.ndarray) -> Callable[[], object]:
    out = np.empty_like(logits)
    return lambda: np.copyto(out, logits)


def _torch(logits: np.ndarray, labels: np.ndarray) -> Callable[[], object] | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    x = torch.from_numpy(logits)
    y = torch.from_numpy(labels)

    def step() -> object:
        leaf = x.detach().requires_grad_()
        F.cross_entropy(leaf, y).backward()
        return leaf.grad

    return step


def _peak_ratio(logits: np.ndarray, labels: np.ndarray) -> float:
    tracemalloc.start()
    reduce_loss(cross_entropy(logits, labels), "mean")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / (2 * logits.nbytes)


def bench_shape(rows: int, classes: int, repeats: int) -> dict[str, float | None]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = rng.integers(0, classes, size=rows)
    contenders = {"floor": _floor(logits), "engine": _engine(logits, labels)}
    torch_step = _torch(logits, labels)
    if torch_step is not None:
        contenders["torch"] = torch_step
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):  # interleaved: drift on a shared machine hits every column alike
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "floor_ms": medians["floor"] * 1e3,
        "engine_ms": medians["engine"] * 1e3,
        "engine_vs_floor": medians["engine"] / medians["floor"],
        "torch_ms": medians["torch"] * 1e3 if "torch" in medians else None,
        "torch_vs_engine": medians["torch"] / medians["engine"] if "torch" in medians else None,
        "peak_vs_io": _peak_ratio(logits, labels),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    args = parser.parse_args()
    print("| shape | floor ms | engine ms | engine/floor | torch ms | torch/engine | peak/io |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.shapes.split(","):
        rows, classes = (int(part) for part in spec.split("x"))
        r = bench_shape(rows, classes, args.repeats)
        torch_ms = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.1f}"
        torch_ratio = "-" if r["torch_vs_engine"] is None else f"{r['torch_vs_engine']:.2f}x"
        print(
            f"| {rows} x {classes} | {r['floor_ms']:.1f} | {r['engine_ms']:.1f} | "
            f"{r['engine_vs_floor']:.1f}x | {torch_ms} | {torch_ratio} | {r['peak_vs_io']:.2f} |"
        )


if __name__ == "__main__":
    main()
