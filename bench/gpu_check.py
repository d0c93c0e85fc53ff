"""The GPU check: engine parity tests on CuPy, then cross-entropy timings against PyTorch CUDA.

    PYTHONPATH=. python3 bench/gpu_check.py        (or: bash scripts/gpu_check.sh)
    PYTHONPATH=. python3 bench/gpu_check.py --dry-run   (no GPU: imports and table logic only)

For a CUDA machine with python3, NumPy, SciPy, pytest, ml_dtypes, CuPy and PyTorch; it installs
nothing and needs neither FastAPI nor numba (test modules that import a missing package are left
out, and say so). Under 5 minutes on an H100 or H200. Steps:

1. `pytest -k cupy` over tests/engine/test_*.py: every engine test on the cupy backend, and the
   CUDA kernel against the CuPy and NumPy reference code and float64 numbers
   (tests/engine/test_fused_cuda.py: launch shapes, misaligned rows, float16/bfloat16 rows);
2. a markdown table, medians of CUDA-event-timed runs, for cross-entropy value + gradient with
   class-index labels, `mean`, float32 and bfloat16 logits:
   - kernel: `_kernels.cuda.softmax_rows` alone (the CUDA kernel; bfloat16 read as its bits,
     the `mean` 1/M folded in as `grad_scale`), what the targets are judged on;
   - engine: our engine on CuPy as the API calls it (`reduce_loss(cross_entropy(x, y))`,
     on the `fused` engine path; bfloat16 widened to float32 on the device first, as CuPy has
     no bfloat16 dtype), for information;
   - torch: `F.cross_entropy(x, y)` forward + backward on CUDA, in the logits' dtype;
   - floor: a device-to-device copy of the logits (one read of them, one write of their size);
   - kernel / torch, kernel / floor, and the largest difference of our gradient from torch's
     float32 one (computed from the same, widened, values);
3. PASS/FAIL per target: on 256 x 128256 and 4096 x 128256, float32 and bfloat16, the kernel
   takes at most `TORCH_RATIO` x torch's time and `FLOOR_RATIO` x the floor.

The exit status is 0 only when the tests pass and every target does.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(65536, 10), (8192, 1000), (256, 128256), (4096, 128256)]
DTYPES = ["float32", "bfloat16"]
TARGET_SHAPES = {(256, 128256), (4096, 128256)}
TORCH_RATIO = 1.0  # kernel time at most this times PyTorch's forward + backward
FLOOR_RATIO = 3.0  # and at most this times a copy of the logits


def run_tests() -> int:
    """`pytest -k cupy` over the engine tests that import here (no FastAPI, maybe no numba)."""
    sys.path.insert(0, str(ROOT))
    files, left_out = [], []
    for path in sorted((ROOT / "tests" / "engine").glob("test_*.py")):
        try:
            importlib.import_module(f"tests.engine.{path.stem}")
        except ImportError as error:  # e.g. the numba kernels' tests where numba is missing
            left_out.append(f"{path.name} ({error})")
            continue
        files.append(str(path.relative_to(ROOT)))
    for line in left_out:
        print(f"left out: {line}")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    # pyproject's `timeout` is pytest-timeout's: without that plugin it is an unknown option
    command += ["-W", "ignore::pytest.PytestConfigWarning", "-rs", "-k", "cupy", *files]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, check=False).returncode


def median_ms(
    synchronize: Callable[[], None],
    event: Callable[[], Any],
    elapsed: Callable[[Any, Any], float],
    step: Callable[[], object],
    repeats: int,
) -> float:
    """Median of `repeats` CUDA-event-timed runs of `step`, after two untimed ones."""
    for _ in range(2):
        step()
    synchronize()
    times = []
    for _ in range(repeats):
        start, end = event(), event()
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(elapsed(start, end))
    return statistics.median(times)


def verdict(shape: tuple[int, int], kernel: float, torch_ms: float, floor: float) -> str:
    """PASS / FAIL for a target shape (both ratios met), `-` for the others."""
    if shape not in TARGET_SHAPES:
        return "-"
    met = kernel <= TORCH_RATIO * torch_ms and kernel <= FLOOR_RATIO * floor
    return "PASS" if met and all(map(math.isfinite, (kernel, torch_ms, floor))) else "FAIL"


HEADER = (
    "| shape | dtype | kernel | engine | torch | floor | kernel / torch | kernel / floor "
    "| max abs grad diff | target |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
)


def table_row(
    shape: tuple[int, int], dtype: str, times: dict[str, float], diff: float
) -> tuple[str, str]:
    """The table's line for one case, and its verdict."""
    kernel, torch_ms, floor = times["kernel"], times["torch"], times["floor"]
    result = verdict(shape, kernel, torch_ms, floor)
    line = (
        f"| {shape[0]} x {shape[1]} | {dtype} | {kernel:.3f} | {times['engine']:.3f} | "
        f"{torch_ms:.3f} | {floor:.3f} | {kernel / torch_ms:.2f} | {kernel / floor:.2f} | "
        f"{diff:.1e} | {result} |"
    )
    return line, result


def benchmark(repeats: int) -> list[str]:
    """Print the table; return the verdicts of the target cases."""
    import cupy as cp
    import numpy as np
    import torch

    from service.engine import using_engine_path

    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"\n## Cross-entropy + gradient on {name}, {datetime.date.today().isoformat()}\n")
    print(
        f"CuPy {cp.__version__}, PyTorch {torch.__version__}, CUDA runtime "
        f"{cp.cuda.runtime.runtimeGetVersion()}; medians of {repeats} runs (ms), `mean`. "
        f"Target: kernel <= {TORCH_RATIO} x torch and <= {FLOOR_RATIO} x floor.\n"
    )
    print(HEADER)
    verdicts = []
    rng = np.random.default_rng(0)
    with using_engine_path("fused"):
        for rows, classes in SHAPES:
            x32 = cp.asarray(rng.standard_normal((rows, classes), dtype=np.float32) * 2)
            y = cp.asarray(rng.integers(0, classes, size=rows))
            for dtype in DTYPES:
                line, result = measure_case(x32, y, dtype, repeats)
                print(line, flush=True)
                if result != "-":
                    verdicts.append(f"{result}: {rows} x {classes} {dtype}")
            del x32, y
            cp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
    return verdicts


def measure_case(x32: Any, y: Any, dtype: str, repeats: int) -> tuple[str, str]:
    """Time one case (float32 logits `x32`, or bfloat16 ones cut from them): its table line
    and verdict."""
    import cupy as cp
    import numpy as np
    import torch
    import torch.nn.functional as F

    from service.engine import cross_entropy, reduce_loss
    from service.engine._kernels import cuda

    rows, classes = x32.shape
    valid = cp.ones(rows, dtype=np.bool_)
    ones = cp.ones(rows, dtype=np.float32)
    ty = torch.as_tensor(y, device="cuda")
    bits = dtype == "bfloat16"
    if bits:  # the top half of each float32 (CuPy has no bfloat16 type); torch reads them so
        x = (x32.view(cp.uint32) >> 16).astype(cp.uint16)
        tx = torch.as_tensor(x.view(cp.int16), device="cuda").view(torch.bfloat16)
        widened = (x.astype(cp.uint32) << 16).view(cp.float32)
    else:
        x, tx, widened = x32, torch.as_tensor(x32, device="cuda"), x32

    def kernel_step() -> Any:
        return cuda.softmax_rows(
            x,
            y,
            valid,
            kind=cuda.CROSS_ENTROPY,
            at_label=ones,
            total=ones,
            grad_scale=1.0 / rows,  # `mean`
            bfloat16_bits=bits,
        )

    def engine_step() -> Any:
        logits = (x.astype(cp.uint32) << 16).view(cp.float32) if bits else x
        return reduce_loss(cross_entropy(logits, y), "mean")

    def torch_step() -> None:
        leaf = tx.detach().requires_grad_()
        F.cross_entropy(leaf, ty).backward()

    out = cp.empty_like(x)

    def timed(step: Callable[[], object]) -> float:
        synchronize = cp.cuda.Device().synchronize
        return median_ms(synchronize, cp.cuda.Event, cp.cuda.get_elapsed_time, step, repeats)

    times = {
        "kernel": timed(kernel_step),
        "engine": timed(engine_step),
        "torch": timed(torch_step),
        "floor": timed(lambda: cp.copyto(out, x)),
    }
    ours = kernel_step()[2]
    leaf = torch.as_tensor(widened, device="cuda").detach().requires_grad_()
    F.cross_entropy(leaf, ty).backward()
    diff = float(cp.max(cp.abs(ours - cp.asarray(leaf.grad))))
    return table_row((rows, classes), dtype, times, diff)


def dry_run() -> list[str]:
    """No GPU: import what the benchmark imports (FastAPI and numba blocked) and run the table
    logic on made-up times, one passing and one failing target case."""
    for blocked in ("fastapi", "numba"):
        sys.modules[blocked] = None  # type: ignore[assignment]  # an import of it now fails
    from service.engine import cross_entropy, reduce_loss  # noqa: F401
    from service.engine._kernels import cuda

    assert "cupy" not in sys.modules, "importing the engine imported CuPy"
    print(f"kernels: {sorted(cuda.KERNEL_NAMES.values())}")
    for shape in SHAPES:
        print(f"{shape}: (blocks, threads, lanes) = {cuda.launch_shape(*shape)}")
    print(HEADER)
    verdicts = []
    for shape, times in [
        ((4096, 128256), {"kernel": 2.0, "engine": 2.5, "torch": 4.6, "floor": 1.0}),
        ((256, 128256), {"kernel": 0.4, "engine": 0.5, "torch": 0.34, "floor": 0.07}),
        ((8192, 1000), {"kernel": 0.1, "engine": 0.2, "torch": 0.2, "floor": 0.03}),
    ]:
        line, result = table_row(shape, "float32", times, 0.0)
        print(line)
        if result != "-":
            verdicts.append(f"{result}: {shape[0]} x {shape[1]} float32 (made-up times)")
    assert [v.split(":")[0] for v in verdicts] == ["PASS", "FAIL"], verdicts
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: imports and table logic")
    args = parser.parse_args()
    for variable in ("LOSS_SERVICE_DEVICE", "LOSS_SERVICE_ENGINE"):
        os.environ.pop(variable, None)
    sys.path.insert(0, str(ROOT))
    if args.dry_run:
        for line in dry_run():
            print(line)
        print("dry run: fine (the verdicts above come from made-up times)")
        return 0
    status = 0 if args.skip_tests else run_tests()
    verdicts = benchmark(args.repeats)
    print("\n" + "\n".join(verdicts))
    failed = [v for v in verdicts if not v.startswith("PASS")]
    print(f"\ntargets: {len(verdicts) - len(failed)} of {len(verdicts)} PASS")
    print(f"pytest exit status: {status}" + ("" if args.skip_tests else " (0: all passed)"))
    return 1 if status or failed else 0


if __name__ == "__main__":
    sys.exit(main())
