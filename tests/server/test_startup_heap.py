"""The started server's objects are frozen out of the garbage collector's passes, once."""

from __future__ import annotations

import gc

from service.api import startup_heap
from service.engine._warm_up import KernelWarmUp


def test_the_heap_is_frozen_once_the_warm_up_is_over() -> None:
    done = KernelWarmUp(None)  # no kernels to warm up: over at once
    startup_heap.freeze_after_warm_up(done)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    kept = [object() for _ in range(10)]  # objects made afterwards are not frozen by a second call
    startup_heap.freeze_after_warm_up(done)
    assert gc.get_freeze_count() == frozen
    assert kept
