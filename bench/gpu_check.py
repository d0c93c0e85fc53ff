"""The GPU check: engine parity tests on CuPy, then cross-entropy timings against PyTorch CUDA.

    PYTHONPATH=. python3 bench/gpu_check.py        (or: bash scripts/gpu_check.sh)

For a CUDA machine with python3, NumPy, SciPy, pytest, ml_dtypes, CuPy and PyTorch; it installs
nothing and needs neither FastAPI nor numba (test modules that import a missing package are left
out, and say so). Steps:

1. `pytest -k cupy` over tests/test_engine_*.py: every engine test on the cupy backend, and the
   CUDA kernel against the CuPy and NumPy reference code (tests/test_engine_fused_cupy.py);
2. a markdown table, medians of CUDA-event-timed runs, for cross-entropy value + gradient with
   class-index labels, `mean` reduction, float32 and bfloat16 logits:
   - fused: our engine on CuPy as the API calls it (`reduce_loss(cross_entropy(x, y))`, the CUDA
     kernel; `LOSS_SERVICE_ENGINE=fused`); for bfloat16, the upcast of the raw bits to float32
     on the device is included (CuPy has no bfloat16; the engine computes in float32);
   - kernel: the CUDA kernel alone, with `reduction="sum"` (no rescale of the gradient by
     1 / divisor, which `mean` adds as a second pass over it);
   - reference: the array code on CuPy (`LOSS_SERVICE_ENGINE=reference`);
   - torch: `F.cross_entropy(x, y)` forward + backward on CUDA, in the logits' dtype;
   - floor: a device-to-device copy of the logits (one read of them, one write of their size),
     the least any loss + gradient can cost;
   - the ratios fused / torch and fused / floor, and the largest difference of our float32
     gradient from torch's.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(8192, 1000), (2048, 32000), (256, 128256), (4096, 128256)]
DTYPES = ["float32", "bfloat16"]


def run_tests() -> int:
    """`pytest -k cupy` over the engine tests that import here (no FastAPI, maybe no numba)."""
    sys.path.insert(0, str(ROOT))
    files, left_out = [], []
    for path in sorted((ROOT / "tests").glob("test_engine_*.py")):
        try:
            importlib.import_module(f"tests.{path.stem}")
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


def median_ms(cp: Any, step: Callable[[], object], repeats: int) -> float:
    """Median of `repeats` CUDA-event-timed runs of `step`, after two untimed ones."""
    for _ in range(2):
        step()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def benchmark(repeats: int) -> None:
    import cupy as cp
    import numpy as np
    import torch
    import torch.nn.functional as F

    from service.engine import cross_entropy, reduce_loss
    from service.engine._engine_path import ENGINE_ENV

    def engine(x: Any, y: Any, path: str, reduction: Any = "mean", bits: bool = False) -> Any:
        def step() -> Any:
            os.environ[ENGINE_ENV] = path
            logits = (x.astype(cp.uint32) << 16).view(cp.float32) if bits else x
            return reduce_loss(cross_entropy(logits, y), reduction)

        return step

    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"\n## Cross-entropy + gradient on {name}, {datetime.date.today().isoformat()}\n")
    print(
        f"CuPy {cp.__version__}, PyTorch {torch.__version__}, CUDA runtime "
        f"{cp.cuda.runtime.runtimeGetVersion()}; medians of {repeats} runs (ms), `mean`.\n"
    )
    print(
        "| shape | dtype | fused | kernel | reference | torch | floor "
        "| fused / torch | fused / floor | max abs grad diff |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for rows, classes in SHAPES:
        x32 = cp.asarray(rng.standard_normal((rows, classes), dtype=np.float32) * 2)
        y = cp.asarray(rng.integers(0, classes, size=rows))
        ty = torch.as_tensor(y, device="cuda")
        for dtype in DTYPES:
            if dtype == "float32":
                x, bits, tx = x32, False, torch.as_tensor(x32, device="cuda")
            else:  # bfloat16: the top half of each float32 (CuPy has no bfloat16 type)
                x = (x32.view(cp.uint32) >> 16).astype(cp.uint16)
                bits = True
                tx = torch.as_tensor(x.view(cp.int16), device="cuda").view(torch.bfloat16)
            out = cp.empty_like(x)

            def torch_step(tx: Any = tx, ty: Any = ty) -> None:
                leaf = tx.detach().requires_grad_()
                F.cross_entropy(leaf, ty).backward()

            fused = median_ms(cp, engine(x, y, "fused", bits=bits), repeats)
            kernel = median_ms(cp, engine(x, y, "fused", "sum", bits=bits), repeats)
            reference = median_ms(cp, engine(x, y, "reference", bits=bits), repeats)
            torch_ms = median_ms(cp, torch_step, repeats)
            floor = median_ms(cp, lambda x=x, out=out: cp.copyto(out, x), repeats)
            ours = engine(x, y, "fused", bits=bits)().grads["logits"]
            leaf = tx.detach().float().requires_grad_()
            F.cross_entropy(leaf, ty).backward()
            diff = float(cp.max(cp.abs(ours - cp.asarray(leaf.grad))))
            print(
                f"| {rows} x {classes} | {dtype} | {fused:.3f} | {kernel:.3f} | "
                f"{reference:.3f} | {torch_ms:.3f} | {floor:.3f} | {fused / torch_ms:.2f} | "
                f"{fused / floor:.2f} | {diff:.1e} |",
                flush=True,
            )
            del ours, leaf, out, tx
        del x32, y, ty
        cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    os.environ.pop(ENGINE_ENV, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    for variable in ("LOSS_SERVICE_DEVICE", "LOSS_SERVICE_ENGINE"):
        os.environ.pop(variable, None)
    status = 0 if args.skip_tests else run_tests()
    sys.path.insert(0, str(ROOT))
    benchmark(args.repeats)
    print(f"\npytest exit status: {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
