"""Loss value + gradient: the engine's two paths against the memory floor and PyTorch.

    THP_MEM_ALLOC_ENABLE=1 python -m bench.engine [--repeats 7] [--shapes 8192x1000,8x4x32000]
        [--bce-shapes 2048x32000] [--focal-shapes 65536x10] [--half-shapes 2048x32000]
        (an empty list skips a table)

A shape is its sizes joined by `x`, the class axis last: `8x4x32000` is 8 sequences of 4 tokens
over 32000 classes, labels `[8, 4]` (the engine takes any number of leading axes and computes on
the `[32, 32000]` rows they flatten to, a view of the logits).

On an AVX-512 processor the kernels are compiled for 512-bit vectors
(`service/engine/_kernels/vector_width.py`; the output says so above the tables);
`LOSS_SERVICE_WIDE_VECTORS=false` in the environment compiles them at numba's default width, for
a before and after on one machine.

Four tables: cross-entropy on float32 logits, binary cross-entropy, the sigmoid focal loss,
cross-entropy on bfloat16 and float16 logits. The first:

Float32 logits, class-index labels, `mean` reduction
(`reduce_loss(cross_entropy(..., grad_reduction="mean"), "mean")`), as the API computes it. Runs
interleaved in one process and prints medians and ratios (quote ratios, not times: these machines
are shared). Columns:

- floor: one read of the logits plus one write of a gradient (`np.copyto` into a preallocated
  array), the least any CE + gradient can cost;
- exp: one NumPy `np.exp(x, out=y)` pass over the logits (into a preallocated array), the
  compute floor of a softmax on one core; fused/exp is the fused path's time relative to it;
- fused: the fused kernels (engine path `fused`), in the steady state of a service,
  where the gradient buffer of the previous call is free again and is reused;
- fused sum: the same with `reduction="sum"` (no scale to fold into the gradient): about
  `fused`, as `mean`'s 1 / divisor is folded into the kernel rather than a second pass;
- fused fresh: `mean` with a new gradient buffer every call (its page faults included);
- reference: the array code (engine path `reference`), which is also the CuPy path;
- torch: `F.cross_entropy` forward + backward on the CPU, when torch is importable
  (THP_MEM_ALLOC_ENABLE=1 gives it huge pages, where it is at its best);
- peak/io: the engine call's peak allocation (tracemalloc, a fresh gradient buffer counted)
  relative to the logits plus the gradient.

Binary cross-entropy (`binary_cross_entropy(..., grad_reduction="mean")`, 10% positive targets):
floor is one read of logits and targets and one write of a gradient (`np.subtract`); torch is
`F.binary_cross_entropy_with_logits` forward + backward. Its per-element loss is an output too, so
peak/io (relative to logits + gradient) is about 1 more than cross-entropy's.

Sigmoid focal loss (`sigmoid_focal(..., alpha=0.25, grad_reduction="mean")`, 10% positive
targets) at gamma 2 (the common one, whose kernel loop squares) and 1.5 (a power per element):
columns as binary cross-entropy's; torch is torchvision's `sigmoid_focal_loss` written in torch
operations (torchvision is not a dependency), forward + backward.

16-bit logits: the fused kernel reads bfloat16 and float16 rows as they are and writes a float32
gradient; floor reads the 16-bit logits and writes a float32 array; widened is the fused kernel
after casting the whole payload to float32 first (the engine before it read 16-bit rows); torch
runs on the 16-bit tensor (its gradient is 16-bit too) where it has a CPU kernel for it; peak/io
is relative to the 16-bit logits plus the float32 gradient.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator

import ml_dtypes  # noqa: F401  (registers the bfloat16 dtype name)
import numpy as np

from service.engine import (
    Reduction,
    binary_cross_entropy,
    cross_entropy,
    reduce_loss,
    sigmoid_focal,
    using_engine_path,
    warm_up,
)
from service.engine._kernels.cpu import GRADIENTS
from service.engine._kernels.vector_width import SWITCH_ENV, full_width_requested

DEFAULT_SHAPES = "65536x2,65536x10,16384x100,8192x1000,2048x32000,256x128256,8x4x32000"
DEFAULT_BCE_SHAPES = "65536x10,2048x32000"
DEFAULT_FOCAL_SHAPES = "65536x10"
FOCAL_GAMMAS = (2.0, 1.5)
DEFAULT_HALF_SHAPES = "2048x32000,256x128256"


def _engine(
    logits: np.ndarray, labels: np.ndarray, path: str, reduction: Reduction = "mean"
) -> Callable[[], object]:
    def step() -> object:
        with using_engine_path(path):
            return reduce_loss(cross_entropy(logits, labels, grad_reduction=reduction), reduction)

    return step


def _fused_fresh(logits: np.ndarray, labels: np.ndarray) -> Callable[[], object]:
    step = _engine(logits, labels, "fused")

    def fresh() -> object:
        GRADIENTS.clear()
        return step()

    return fresh


def _floor(logits: np.ndarray) -> Callable[[], object]:
    out = np.empty_like(logits)
    return lambda: np.copyto(out, logits)


def torch_step(loss: str, logits: np.ndarray, labels: np.ndarray) -> Callable[[], object] | None:
    """`torch.nn.functional.<loss>` forward + backward on the same arrays (16-bit logits in
    torch's own 16-bit dtype), or None without torch or without a CPU kernel for the dtype."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if logits.dtype.name == "bfloat16":  # which torch.from_numpy cannot read: its bits
        x = torch.from_numpy(logits.view(np.int16)).view(torch.bfloat16)
    else:
        x = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    if loss == "cross_entropy":  # torch's class axis is 1, ours the last: rows [M, C] for both
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1)
    function = getattr(F, loss)

    def step() -> object:
        leaf = x.detach().requires_grad_()
        function(leaf, y).backward()
        return leaf.grad

    try:
        step()
    except RuntimeError:  # no CPU kernel for this dtype
        return None
    return step


def _measure(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds per contender, runs interleaved."""
    for run in contenders.values():  # first touches: page faults, lazy initialisation
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):  # interleaved: drift on a shared machine hits every column alike
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _peak_bytes(step: Callable[[], object]) -> int:
    """Peak allocation of `step` (tracemalloc), a fresh gradient buffer counted."""
    GRADIENTS.clear()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def _exp_pass(logits: np.ndarray) -> Callable[[], object]:
    out = np.empty_like(logits)
    return lambda: np.exp(logits, out=out)


def bench_shape(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, dtype=np.float32)
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    contenders = {
        "floor": _floor(logits),
        "exp": _exp_pass(logits),
        "fused": _engine(logits, labels, "fused"),
        "fused sum": _engine(logits, labels, "fused", "sum"),
        "fused fresh": _fused_fresh(logits, labels),
        "reference": _engine(logits, labels, "reference"),
    }
    torch = torch_step("cross_entropy", logits, labels)
    if torch is not None:
        contenders["torch"] = torch
    result = _measure(contenders, repeats)
    io = 2 * logits.nbytes  # logits + gradient
    result["peak_fused"] = _peak_bytes(_engine(logits, labels, "fused")) / io
    result["peak_reference"] = _peak_bytes(_engine(logits, labels, "reference")) / io
    return result


# --- binary cross-entropy --------------------------------------------------------------------


def _bce_engine(logits: np.ndarray, labels: np.ndarray, path: str) -> Callable[[], object]:
    def step() -> object:
        with using_engine_path(path):
            result = binary_cross_entropy(logits, labels, grad_reduction="mean")
            return reduce_loss(result, "mean")

    return step


Engine = Callable[[np.ndarray, np.ndarray, str], Callable[[], object]]


def bench_targets(
    shape: tuple[int, ...],
    repeats: int,
    engine: Engine,
    torch_of: Callable[[np.ndarray, np.ndarray], Callable[[], object] | None],
) -> dict[str, float]:
    """A loss of logits against binary targets of `shape` (10% positive): floor, the engine's
    two paths (`engine(logits, targets, path)`), torch (`torch_of(logits, targets)`, if any)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, dtype=np.float32)
    labels = (rng.random(shape, dtype=np.float32) < 0.1).astype(np.float32)
    out = np.empty_like(logits)
    contenders = {
        "floor": lambda: np.subtract(logits, labels, out=out),
        "fused": engine(logits, labels, "fused"),
        "reference": engine(logits, labels, "reference"),
    }
    torch = torch_of(logits, labels)
    if torch is not None:
        contenders["torch"] = torch
    result = _measure(contenders, repeats)
    io = 2 * logits.nbytes  # logits + gradient, as for cross-entropy
    result["peak_fused"] = _peak_bytes(engine(logits, labels, "fused")) / io
    result["peak_reference"] = _peak_bytes(engine(logits, labels, "reference")) / io
    return result


def bench_bce_shape(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    return bench_targets(
        shape, repeats, _bce_engine,
        functools.partial(torch_step, "binary_cross_entropy_with_logits"),
    )  # fmt: skip


# --- sigmoid focal loss -----------------------------------------------------------------------


def _focal_engine(
    logits: np.ndarray, labels: np.ndarray, path: str, gamma: float
) -> Callable[[], object]:
    def step() -> object:
        with using_engine_path(path):
            result = sigmoid_focal(logits, labels, gamma=gamma, grad_reduction="mean")
            return reduce_loss(result, "mean")

    return step


def torch_focal_step(
    logits: np.ndarray, labels: np.ndarray, gamma: float
) -> Callable[[], object] | None:
    """torchvision's `sigmoid_focal_loss` (alpha 0.25, mean) in torch operations, forward +
    backward, or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    x, y = torch.from_numpy(logits), torch.from_numpy(labels)

    def step() -> object:
        leaf = x.detach().requires_grad_()
        p = torch.sigmoid(leaf)
        ce = F.binary_cross_entropy_with_logits(leaf, y, reduction="none")
        p_t = p * y + (1 - p) * (1 - y)
        alpha_t = 0.25 * y + 0.75 * (1 - y)
        (alpha_t * ce * (1 - p_t) ** gamma).mean().backward()
        return leaf.grad

    return step


def bench_focal_shape(shape: tuple[int, ...], gamma: float, repeats: int) -> dict[str, float]:
    return bench_targets(
        shape, repeats, functools.partial(_focal_engine, gamma=gamma),
        functools.partial(torch_focal_step, gamma=gamma),
    )  # fmt: skip


# --- 16-bit logits ----------------------------------------------------------------------------


def bench_half_shape(shape: tuple[int, ...], dtype: str, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape, dtype=np.float32).astype(np.dtype(dtype))
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    out = np.empty(shape, dtype=np.float32)
    bits = logits.view(np.uint16)

    def widened() -> object:  # what the engine did before reading 16-bit rows itself
        with using_engine_path("fused"):
            return reduce_loss(
                cross_entropy(logits.astype(np.float32), labels, grad_reduction="mean")
            )

    contenders = {
        "floor": lambda: np.copyto(out, bits, casting="unsafe"),  # read 2 bytes, write 4
        "fused": _engine(logits, labels, "fused"),
        "widened": widened,
        "reference": _engine(logits, labels, "reference"),
    }
    torch = torch_step("cross_entropy", logits, labels)
    if torch is not None:
        contenders["torch"] = torch
    result = _measure(contenders, repeats)
    io = logits.nbytes + out.nbytes  # 16-bit logits + float32 gradient
    result["peak_fused"] = _peak_bytes(_engine(logits, labels, "fused")) / io
    result["peak_reference"] = _peak_bytes(_engine(logits, labels, "reference")) / io
    return result


Row = dict[str, float]
Columns = list[tuple[str, Callable[[Row], str]]]


def _ratio(r: Row, a: str, b: str) -> str:
    return f"{r[a] / r[b]:.2f}x" if a in r and b in r else "-"


def _ms(name: str) -> tuple[str, Callable[[Row], str]]:
    return f"{name} ms", lambda r: f"{r[name]:.1f}" if name in r else "-"


def _print_table(title: str, columns: Columns, rows: Iterator[tuple[str, Row]]) -> None:
    print(f"\n{title}\n")
    print("| shape | " + " | ".join(name for name, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, r in rows:
        print(f"| {label} | " + " | ".join(cell(r) for _, cell in columns) + " |", flush=True)


def _shapes(spec: str) -> list[tuple[int, ...]]:
    """`65536x10,8x4x32000` -> [(65536, 10), (8, 4, 32000)]: any number of axes, classes last."""
    shapes = []
    for item in filter(None, spec.split(",")):
        try:
            shape = tuple(int(part) for part in item.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected sizes joined by x") from None
        if not shape or min(shape) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected positive sizes")
        shapes.append(shape)
    return shapes


def _label(shape: tuple[int, ...]) -> str:
    rows = f" ({math.prod(shape[:-1])} rows)" if len(shape) > 2 else ""
    return " x ".join(map(str, shape)) + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", type=_shapes, default=DEFAULT_SHAPES)
    parser.add_argument("--bce-shapes", type=_shapes, default=DEFAULT_BCE_SHAPES)
    parser.add_argument("--focal-shapes", type=_shapes, default=DEFAULT_FOCAL_SHAPES)
    parser.add_argument("--half-shapes", type=_shapes, default=DEFAULT_HALF_SHAPES)
    args = parser.parse_args()
    with using_engine_path("fused"):
        warm_up()
    if full_width_requested():
        print(f"\nKernels compiled for 512-bit vectors ({SWITCH_ENV}=false: numba's default).")
    peaks: Columns = [
        ("peak/io fused", lambda r: f"{r['peak_fused']:.2f}"),
        ("peak/io reference", lambda r: f"{r['peak_reference']:.2f}"),
    ]
    _print_table(
        "Cross-entropy, float32 logits",
        [
            _ms("floor"),
            _ms("exp"),
            _ms("fused"),
            ("fused/floor", lambda r: _ratio(r, "fused", "floor")),
            ("fused/exp", lambda r: _ratio(r, "fused", "exp")),
            ("fused/torch", lambda r: _ratio(r, "fused", "torch")),
            _ms("fused sum"),
            _ms("fused fresh"),
            _ms("reference"),
            _ms("torch"),
            *peaks,
        ],
        ((_label(shape), bench_shape(shape, args.repeats)) for shape in args.shapes),
    )
    fused_against_floor_and_torch: Columns = [
        _ms("floor"),
        _ms("fused"),
        ("fused/floor", lambda r: _ratio(r, "fused", "floor")),
        ("fused/torch", lambda r: _ratio(r, "fused", "torch")),
    ]
    targets_columns: Columns = [
        *fused_against_floor_and_torch,
        _ms("reference"),
        _ms("torch"),
        *peaks,
    ]
    _print_table(
        "Binary cross-entropy with logits, float32, mean",
        targets_columns,
        ((_label(shape), bench_bce_shape(shape, args.repeats)) for shape in args.bce_shapes),
    )
    _print_table(
        "Sigmoid focal loss, alpha 0.25, float32, mean",
        targets_columns,
        (
            (f"{_label(shape)} gamma {gamma:g}", bench_focal_shape(shape, gamma, args.repeats))
            for shape in args.focal_shapes
            for gamma in FOCAL_GAMMAS
        ),
    )
    _print_table(
        "Cross-entropy, 16-bit logits (float32 gradient; torch: its gradient in the input dtype)",
        [
            *fused_against_floor_and_torch,
            _ms("widened"),
            _ms("reference"),
            _ms("torch"),
            *peaks,
        ],
        (
            (f"{_label(shape)} {dtype}", bench_half_shape(shape, dtype, args.repeats))
            for shape in args.half_shapes
            for dtype in ("bfloat16", "float16")
        ),
    )


if __name__ == "__main__":
    main()
