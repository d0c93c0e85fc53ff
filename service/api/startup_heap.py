"""The objects of a started server, kept out of the cyclic garbage collector's passes.

A started process holds hundreds of thousands of long-lived objects (numba's and LLVM's
compiled kernels, SciPy, the app's routes and pydantic schemas). Every full collection walks
them all: tens of milliseconds during which the event loop answers nothing, triggered by the
allocations of ordinary requests, which put the service's p99 latency on small requests at 3x a
bare FastAPI endpoint's. `gc.freeze()` moves the objects alive at that moment into a permanent
generation that collections skip. It is done once per process, once the kernels' warm-up is
over (the largest share of those objects comes from it), after one collection so that no
garbage is frozen.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from service.engine._warm_up import KernelWarmUp

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_FROZEN = False


def freeze_after_warm_up(warm_up: KernelWarmUp) -> None:
    """Wait for `warm_up` to end (blocking: run it on a worker thread), then freeze the heap,
    the first time in this process only."""
    global _FROZEN
    warm_up.wait()
    with _LOCK:
        if _FROZEN:
            return
        _FROZEN = True
        start = time.perf_counter()
        gc.collect()
        gc.freeze()
    logger.info(
        "%d startup objects kept out of garbage collection (%.2f s)",
        gc.get_freeze_count(),
        time.perf_counter() - start,
    )
