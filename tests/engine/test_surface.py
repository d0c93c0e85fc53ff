"""The engine's public surface and its backend choice."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import service.engine
from service.engine import CPU, BackendUnavailable, array_namespace, select_backend
from tests.conftest import _CUPY


def test_all_is_complete_and_importable() -> None:
    public = {name for name in dir(service.engine) if not name.startswith("_")}
    modules = {name for name in public if isinstance(getattr(service.engine, name), type(sys))}
    assert set(service.engine.__all__) == public - modules


def test_engine_imports_no_web_framework_no_cupy_and_no_compiler() -> None:
    # numba (and its llvmlite) load on the first fused call or `warm_up()`, not on import.
    lazy = ("fastapi", "pydantic", "cupy", "starlette", "numba", "llvmlite")
    code = f"import sys, service.engine; print(sorted(m for m in {lazy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_numpy_arrays_resolve_to_numpy() -> None:
    assert array_namespace(np.zeros(2), None) is np


def test_cpu_is_numpy() -> None:
    assert select_backend("cpu") is CPU
    assert CPU.to_numpy(CPU.asarray(np.arange(3))).tolist() == [0, 1, 2]


@pytest.mark.skipif(_CUPY is not None, reason="a GPU is visible here")
def test_gpu_required_without_a_gpu_fails_at_startup() -> None:
    with pytest.raises(BackendUnavailable):
        select_backend("gpu")
    assert select_backend("auto") is CPU


@pytest.mark.gpu
def test_auto_picks_the_gpu_when_there_is_one() -> None:
    backend = select_backend("auto")
    assert backend.name == "cupy"
    assert array_namespace(backend.asarray(np.zeros(2))) is backend.xp
