"""Which code computes a softmax loss: the fused kernels or the reference code.

The reference is the array-namespace code of each loss: it runs on NumPy and CuPy alike and states
the conventions. The fused kernels compute the same numbers for the cross-entropy family with
class-index labels, several times faster and without `[M, C]` temporaries: `_kernels.cpu` (numba)
on NumPy arrays, `_kernels.cuda` (a CUDA kernel) on CuPy arrays. Both implement one interface
(`_kernels.interface.SoftmaxKernels`), so a loss calls whichever `fused_kernels` returns.

The path is one choice for the process, `set_engine_path()`: the app and the CLI set it at start
from the `LOSS_SERVICE_ENGINE` setting (`service.config.Settings.engine`); `using_engine_path()`
switches it for a block (tests, the benchmark). Until something sets it, it is `auto`:

- `auto` (default): fused where it applies (on NumPy: where numba imports), the reference
  elsewhere;
- `reference`: always the reference;
- `fused`: fused where it applies, and an error if numba does not import (NumPy arrays).

"Where it applies": NumPy or CuPy arrays, class-index labels, and a loss with a fused form
(cross-entropy, focal, poly-1); also binary cross-entropy and the sigmoid focal loss on NumPy
arrays (`_kernels.cpu.binary_rows`, which the CUDA module does not have: CuPy arrays take the
reference code there). Inside a `shared_softmax()` block too: the kernel costs less than the copy
of the shared exponentials a reference loss starts from, and `/v1/evaluate` then gives bit for bit
the numbers of `/v1/losses/{name}`; the other losses still share one softmax there.
numba is imported on first use, never by `import service.engine`; `_kernels.cuda` imports nothing
but NumPy (it reaches CuPy only when a CuPy array reached it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Literal, cast, get_args

import numpy as np

from service.engine._kernel_cache import seed_cache
from service.engine._kernels.interface import SoftmaxKernels

EnginePath = Literal["auto", "reference", "fused"]
ENGINE_ENV = "LOSS_SERVICE_ENGINE"

_chosen: EnginePath = "auto"


def checked_engine_path(value: str) -> EnginePath:
    """`value` as an engine path (case and surrounding spaces ignored); ValueError if unknown."""
    path = value.strip().lower()
    if path not in get_args(EnginePath):
        raise ValueError(
            f"{ENGINE_ENV}={value!r}: expected one of {', '.join(get_args(EnginePath))}"
        )
    return cast(EnginePath, path)


def engine_path() -> EnginePath:
    """The path every loss takes now (`auto` until `set_engine_path`)."""
    return _chosen


def set_engine_path(path: str) -> EnginePath:
    """Make `path` the process's engine path; returns the one it replaces. ValueError if
    unknown."""
    global _chosen
    previous, _chosen = _chosen, checked_engine_path(path)
    return previous


@contextlib.contextmanager
def using_engine_path(path: str) -> Iterator[None]:
    """The engine path `path` inside the block, the previous one after it."""
    previous = set_engine_path(path)
    try:
        yield
    finally:
        set_engine_path(previous)


def fused_kernels(xp: ModuleType) -> SoftmaxKernels | None:
    """The fused kernels' module for a loss on `xp` arrays, or None for the reference code:
    `_kernels.cpu` (numba) for NumPy, `_kernels.cuda` for CuPy, None for any other namespace."""
    path = engine_path()
    if path == "reference":
        return None
    if xp is np:
        return cast(SoftmaxKernels | None, _load(required=path == "fused"))
    if is_cupy(xp):
        return cast(SoftmaxKernels, importlib.import_module("service.engine._kernels.cuda"))
    return None


def native_dtypes(kernels: SoftmaxKernels | None) -> frozenset[str]:
    """The logits' dtypes that `kernels` reads as they are (`NATIVE_INPUT_DTYPES`): a loss about
    to call them widens nothing else (`_rows.logit_rows`). None (the reference code): none."""
    return frozenset() if kernels is None else frozenset(kernels.NATIVE_INPUT_DTYPES)


def is_cupy(xp: ModuleType) -> bool:
    """Whether `xp` is CuPy, by name: looking never imports it."""
    return xp.__name__ == "cupy"


def cpu_kernels() -> ModuleType | None:
    """The fused CPU kernels' module that NumPy arrays will use, imported but not compiled, or
    None (the reference code: the `reference` path, or no numba with `auto`).

    Raises what a loss would raise: `fused` without numba.
    """
    path = engine_path()
    return None if path == "reference" else _load(required=path == "fused")


def warm_up() -> bool:
    """Compile the fused kernels now, or load them from numba's cache, so no request waits.

    The first compile takes tens of seconds, loading a cached one about one. Returns whether
    the fused kernels are in use (False on the `reference` path or without numba).
    """
    module = cpu_kernels()
    if module is None:
        return False
    module.warm_up()
    return True


def _load(*, required: bool) -> Any:
    module, failure = _import_fused()
    if module is None and required:
        raise RuntimeError(f"{ENGINE_ENV}=fused, but the fused kernels do not load: {failure}")
    return module


@functools.cache
def _import_fused() -> tuple[ModuleType | None, str]:
    """The CPU kernels' module, or None and why not (tried once per process)."""
    # Kernels compiled ahead of time (an image's build) go into numba's cache before numba looks
    # there; a failed copy costs a compile, nothing more.
    with contextlib.suppress(OSError):
        seed_cache()
    try:
        return importlib.import_module("service.engine._kernels.cpu"), ""
    except ImportError as error:  # numba missing, or built for another NumPy
        return None, f"{type(error).__name__}: {error}"
