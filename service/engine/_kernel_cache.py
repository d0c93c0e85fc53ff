"""numba's on-disk cache of the fused CPU kernels: where it is, and a copy made ahead of time.

The kernels take tens of seconds to compile and under two to load from numba's cache
(`cache=True`, `NUMBA_CACHE_DIR`). numba only uses a cache directory it can write to, so an image
whose root filesystem is read-only cannot point numba at kernels compiled into it. Instead the
image compiles them at build time into a directory of its own and names that directory in
`LOSS_SERVICE_KERNEL_CACHE_SEED`; at start, `seed_cache()` copies it into the (writable, empty)
`NUMBA_CACHE_DIR`, and numba loads instead of compiling. A cache entry is only taken where it
fits: the same kernel source, numba version and CPU model (numba's own checks); otherwise numba
compiles, as without a seed.

`cache_state` and `compile_counts` take the kernels' module (`_kernels.cpu`), imported, so numba
is too, and count the compiled functions of every module of its package; `seed_cache` runs before
numba is imported.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SEED_ENV = "LOSS_SERVICE_KERNEL_CACHE_SEED"
CACHE_DIR_ENV = "NUMBA_CACHE_DIR"


def seed_cache() -> int:
    """Copy the files of `LOSS_SERVICE_KERNEL_CACHE_SEED` into `NUMBA_CACHE_DIR` where it has
    none of that name; the number copied. Nothing to do (0) unless both are set."""
    seed, target = os.environ.get(SEED_ENV), os.environ.get(CACHE_DIR_ENV)
    if not seed or not target:
        return 0
    copied = 0
    for source in Path(seed).rglob("*"):
        destination = Path(target) / source.relative_to(seed)
        if source.is_file() and not destination.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            copied += 1
    return copied


def _dispatchers(module: ModuleType) -> list[Any]:
    """The compiled functions that numba caches (`cache=True`: each has a cache path) of the
    module and of the other modules of its package (the kernels it calls)."""
    package = module.__name__.rpartition(".")[0]
    modules = [module]
    if package:
        modules += [m for name, m in sys.modules.items() if name.rpartition(".")[0] == package]
    found = {
        id(value): value
        for m in modules
        for value in vars(m).values()
        if getattr(getattr(value, "stats", None), "cache_path", None) is not None
    }
    return list(found.values())


@dataclass(frozen=True)
class CacheState:
    directory: str | None  # None: numba found no writable place, every start compiles
    holds_kernels: bool  # an index file for each kernel is there (whether it fits is numba's call)


def cache_state(module: ModuleType) -> CacheState:
    dispatchers = _dispatchers(module)
    if not dispatchers:
        return CacheState(directory=None, holds_kernels=False)
    directories = {Path(d.stats.cache_path) for d in dispatchers}
    indexed = {path.name.split("-")[0] for folder in directories for path in folder.glob("*.nbi")}
    named = {f"{d.py_func.__module__.rpartition('.')[2]}.{d.py_func.__name__}" for d in dispatchers}
    return CacheState(directory=str(min(directories)), holds_kernels=named <= indexed)


@dataclass(frozen=True)
class CompileCounts:
    compiled: int  # specialisations compiled in this process
    loaded: int  # specialisations loaded from numba's cache


def compile_counts(module: ModuleType) -> CompileCounts:
    """What the process's kernels came from so far (numba counts both per signature)."""
    dispatchers = _dispatchers(module)
    return CompileCounts(
        compiled=sum(sum(d.stats.cache_misses.values()) for d in dispatchers),
        loaded=sum(sum(d.stats.cache_hits.values()) for d in dispatchers),
    )
