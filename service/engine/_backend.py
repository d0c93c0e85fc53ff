"""The backend chosen once at startup: NumPy on the CPU, or CuPy on a GPU.

`select_backend` is the only place that imports CuPy, and only when asked to look for a GPU.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import numpy as np

from service.engine._namespace import Array

DeviceChoice = Literal["auto", "cpu", "gpu"]


class BackendUnavailable(RuntimeError):
    """`gpu` was required but no usable CuPy + CUDA device was found."""


@dataclass(frozen=True)
class Backend:
    name: Literal["numpy", "cupy"]
    device: str
    xp: ModuleType

    def asarray(self, array: Array) -> Array:
        """Move a host array to this backend (a no-op for NumPy)."""
        return array if self.xp is np else self.xp.asarray(array)

    def to_numpy(self, array: Array) -> np.ndarray:
        """Bring an array back to the host for encoding."""
        return np.asarray(array) if self.xp is np else self.xp.asnumpy(array)


CPU = Backend(name="numpy", device="cpu", xp=np)


def _find_gpu() -> Backend | None:
    try:
        cupy = importlib.import_module("cupy")
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, or a CUDA driver/runtime error: no usable GPU either way
        return None
    if count < 1:
        return None
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return Backend(name="cupy", device=f"cuda:0 ({name})", xp=cupy)


def select_backend(choice: DeviceChoice) -> Backend:
    """`cpu`: NumPy; `gpu`: CuPy or BackendUnavailable; `auto`: CuPy when usable, else NumPy."""
    if choice == "cpu":
        return CPU
    gpu = _find_gpu()
    if gpu is not None:
        return gpu
    if choice == "gpu":
        raise BackendUnavailable(
            "LOSS_SERVICE_DEVICE=gpu but CuPy with a CUDA device is not usable"
        )
    return CPU
