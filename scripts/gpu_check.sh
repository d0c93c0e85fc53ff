#!/usr/bin/env bash
# GPU checks, for a machine with CUDA, CuPy, NumPy, SciPy, ml_dtypes and pytest (no FastAPI
# needed): the engine test suite on the cupy backend, then CuPy cross-entropy timings against
# PyTorch CUDA when torch is present. Run from the repository root.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
python3 -m pytest -q -p no:cacheprovider -o addopts="" -k cupy \
  tests/test_engine_cross_entropy.py tests/test_engine_binary.py \
  tests/test_engine_torch_reference.py tests/test_engine_surface.py 2>&1 | tail -25
python3 - <<'PY'
import time

import cupy as cp
import numpy as np

from service.engine import cross_entropy, reduce_loss

def median_ms(step, repeats=10):
    step(); cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); step(); cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2] * 1e3

for rows, classes in [(8192, 1000), (2048, 32000), (256, 128256)]:
    x = cp.asarray(np.random.default_rng(0).standard_normal((rows, classes), dtype=np.float32))
    y = cp.asarray(np.random.default_rng(1).integers(0, classes, size=rows))
    out = cp.empty_like(x)
    ours = median_ms(lambda: reduce_loss(cross_entropy(x, y), "mean"))
    floor = median_ms(lambda: cp.copyto(out, x))
    line = f"{rows}x{classes}: cupy engine {ours:.2f} ms, copy floor {floor:.2f} ms"
    try:
        import torch
        import torch.nn.functional as F
        tx = torch.as_tensor(x, device="cuda"); ty = torch.as_tensor(y, device="cuda")
        def torch_step():
            leaf = tx.detach().requires_grad_(); F.cross_entropy(leaf, ty).backward()
        line += f", torch cuda {median_ms(torch_step):.2f} ms"
        leaf = tx.detach().double().requires_grad_(); ref = F.cross_entropy(leaf, ty); ref.backward()
        got = reduce_loss(cross_entropy(x.astype(cp.float64), y), "mean")
        err = float(cp.max(cp.abs(got.grads["logits"] - cp.asarray(leaf.grad))))
        line += f"; float64 |loss diff| {abs(got.loss - ref.item()):.2e}, max |grad diff| {err:.2e}"
    except ImportError:
        pass
    print(line)
PY
