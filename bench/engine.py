"""Cross-entropy value + gradient: the engine's two paths against the memory floor and PyTorch.

    THP_MEM_ALLOC_ENABLE=1 python -m bench.engine [--repeats 7] [--shapes 8192x1000,2048x32000]

Float32 logits, class-index labels, `mean` reduction
(`reduce_loss(cross_entropy(..., grad_reduction="mean"), "mean")`), as the API computes it. Runs
interleaved in one process and prints medians and ratios (quote ratios, not times: these machines
are shared). Columns:

- floor: one read of the logits plus one write of a gradient (`np.copyto` into a preallocated
  array), the least any CE + gradient can cost;
- fused: the fused kernels (`LOSS_SERVICE_ENGINE=fused`), in the steady state of a service,
  where the gradient buffer of the previous call is free again and is reused;
- fused sum: the same with `reduction="sum"` (no scale to fold into the gradient): about
  `fused`, as `mean`'s 1 / divisor is folded into the kernel rather than a second pass;
- fused fresh: `mean` with a new gradient buffer every call (its page faults included);
- reference: the array code (`LOSS_SERVICE_ENGINE=reference`), which is also the CuPy path;
- torch: `F.cross_entropy` forward + backward on the CPU, when torch is importable
  (THP_MEM_ALLOC_ENABLE=1 gives it huge pages, where it is at its best);
- peak/io: the engine call's peak allocation (tracemalloc, a fresh gradient buffer counted)
  relative to the logits plus the gradient.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from service.engine import Reduction, cross_entropy, reduce_loss, warm_up
from service.engine._engine_path import ENGINE_ENV

DEFAULT_SHAPES = "65536x10,8192x1000,2048x32000,256x128256"


@contextmanager
def _engine_path(path: str) -> Iterator[None]:
    saved = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = path
    try:
        yield
    finally:
        if saved is None:
            del os.environ[ENGINE_ENV]
        else:
            os.environ[ENGINE_ENV] = saved


def _engine(
    logits: np.ndarray, labels: np.ndarray, path: str, reduction: Reduction = "mean"
) -> Callable[[], object]:
    def step() -> object:
        with _engine_path(path):
            return reduce_loss(cross_entropy(logits, labels, grad_reduction=reduction), reduction)

    return step


def _fused_fresh(logits: np.ndarray, labels: np.ndarray) -> Callable[[], object]:
    from service.engine._fused import GRADIENTS

    step = _engine(logits, labels, "fused")

    def fresh() -> object:
        GRADIENTS.clear()
        return step()

    return fresh


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


def _peak_ratio(logits: np.ndarray, labels: np.ndarray, path: str) -> float:
    from service.engine._fused import GRADIENTS

    GRADIENTS.clear()  # the gradient's allocation counts
    tracemalloc.start()
    _engine(logits, labels, path)()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / (2 * logits.nbytes)


def bench_shape(rows: int, classes: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    labels = rng.integers(0, classes, size=rows)
    contenders = {
        "floor": _floor(logits),
        "fused": _engine(logits, labels, "fused"),
        "fused sum": _engine(logits, labels, "fused", "sum"),
        "fused fresh": _fused_fresh(logits, labels),
        "reference": _engine(logits, labels, "reference"),
    }
    torch_step = _torch(logits, labels)
    if torch_step is not None:
        contenders["torch"] = torch_step
    for run in contenders.values():  # first touches: page faults, lazy initialisation
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):  # interleaved: drift on a shared machine hits every column alike
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    result["peak_fused"] = _peak_ratio(logits, labels, "fused")
    result["peak_reference"] = _peak_ratio(logits, labels, "reference")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    args = parser.parse_args()
    with _engine_path("fused"):
        warm_up()
    columns: list[tuple[str, Callable[[dict[str, float]], str]]] = [
        ("floor ms", lambda r: f"{r['floor']:.1f}"),
        ("fused ms", lambda r: f"{r['fused']:.1f}"),
        ("fused/floor", lambda r: f"{r['fused'] / r['floor']:.2f}x"),
        ("fused/torch", lambda r: f"{r['fused'] / r['torch']:.2f}x" if "torch" in r else "-"),
        ("fused sum ms", lambda r: f"{r['fused sum']:.1f}"),
        ("fused fresh ms", lambda r: f"{r['fused fresh']:.1f}"),
        ("reference ms", lambda r: f"{r['reference']:.1f}"),
        ("torch ms", lambda r: f"{r['torch']:.1f}" if "torch" in r else "-"),
        ("peak/io fused", lambda r: f"{r['peak_fused']:.2f}"),
        ("peak/io reference", lambda r: f"{r['peak_reference']:.2f}"),
    ]
    print("| shape | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for spec in args.shapes.split(","):
        rows, classes = (int(part) for part in spec.split("x"))
        r = bench_shape(rows, classes, args.repeats)
        print(f"| {rows} x {classes} | " + " | ".join(cell(r) for _, cell in columns) + " |")


if __name__ == "__main__":
    main()
