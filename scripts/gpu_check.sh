#!/usr/bin/env bash
# GPU checks, for a CUDA machine with python3, NumPy, SciPy, pytest, ml_dtypes, CuPy and PyTorch
# (no FastAPI or numba needed; nothing is installed): the engine tests on the cupy backend, then
# the cross-entropy table (our CUDA kernel and engine vs PyTorch CUDA vs the memory floor) with a
# PASS/FAIL per performance target. See bench/gpu_check.py (--dry-run checks it without a GPU,
# --skip-tests times only). Run from anywhere; under 5 minutes on an H100 or H200. Exit status 0
# only when the tests pass and every target does.
set -uo pipefail
cd "$(dirname "$0")/.."
unset LOSS_SERVICE_DEVICE LOSS_SERVICE_ENGINE
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
exec python3 bench/gpu_check.py "$@"
