#!/usr/bin/env bash
# GPU checks, for a CUDA machine with python3, NumPy, SciPy, pytest, ml_dtypes, CuPy and PyTorch
# (no FastAPI or numba needed; nothing is installed): the engine tests on the cupy backend, then
# the cross-entropy table (our CuPy engine vs PyTorch CUDA vs the memory floor). See
# bench/gpu_check.py. Run from anywhere; under 5 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
unset LOSS_SERVICE_DEVICE LOSS_SERVICE_ENGINE
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import cupy; print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')"
exec python3 bench/gpu_check.py "$@"
