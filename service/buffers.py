"""Large buffers kept between calls and handed out again once no one else refers to them.

On this kind of machine (a VM that returns freed memory to its host) a fresh 262 MB buffer costs
40-100 ms of page faults, more than the kernel that fills it (docs/performance.md), and a fresh 44
MB request body ~10 ms. A pool keeps such buffers: gradients (`ArrayPool`,
`service.engine._kernels.cpu`) and request bodies (`service.api.request_body`).

A buffer is idle when the pool holds the only reference to it: every array handed out, and
every view of one (NumPy's `.base`, a memoryview's exporter), refers to it. Idle buffers are
dropped, oldest first, to keep the pool under `max_bytes`; a buffer that does not fit is still
handed out, just not kept.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Sized
from typing import Generic, TypeVar

import numpy as np

Buffer = TypeVar("Buffer", bound=Sized)


class BufferPool(Generic[Buffer]):
    """Buffers of `allocate(nbytes)`; `take(n)` reuses an idle one of n to `slack` x n bytes."""

    def __init__(
        self, allocate: Callable[[int], Buffer], *, max_bytes: int, slack: float = 1.0
    ) -> None:
        self.allocate = allocate
        self.max_bytes = max_bytes
        self.slack = slack
        self._buffers: list[Buffer] = []  # least recently handed out first
        self._idle_refs: int | None = None
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> Buffer:
        """An idle buffer of at least `nbytes`, or a new one."""
        buffer = self.reuse(nbytes)
        if buffer is not None:
            return buffer
        with self._lock:
            self._trim(nbytes)
            buffer = self.allocate(nbytes)
            if self.nbytes + len(buffer) <= self.max_bytes:
                self._buffers.append(buffer)
                if self._idle_refs is None:  # the count `_idle` sees with nothing handed out
                    self._idle_refs = self._refs(len(self._buffers) - 1) - 1  # less `buffer`
            return buffer

    def reuse(self, nbytes: int) -> Buffer | None:
        """An idle buffer of `nbytes` to `slack` x `nbytes` bytes, or None: nothing new."""
        with self._lock:
            self._trim(0)  # a buffer may have grown while it was out (`GrowingBody`)
            # By index: a loop variable would be one more reference to each buffer.
            for index in range(len(self._buffers)):
                size = len(self._buffers[index])
                if nbytes <= size <= nbytes * self.slack and self._idle(index):
                    buffer = self._buffers.pop(index)
                    self._buffers.append(buffer)
                    return buffer
        return None

    def _trim(self, room: int) -> None:
        """Drop idle buffers, oldest first, until `room` more bytes fit under `max_bytes`."""
        index = 0
        while self.nbytes + room > self.max_bytes and index < len(self._buffers):
            if self._idle(index):
                del self._buffers[index]
            else:
                index += 1

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()

    @property
    def nbytes(self) -> int:
        return sum(len(buffer) for buffer in self._buffers)

    def _refs(self, index: int) -> int:
        return sys.getrefcount(self._buffers[index])

    def _idle(self, index: int) -> bool:
        return self._refs(index) == self._idle_refs


class ArrayPool(BufferPool[np.ndarray]):
    """NumPy arrays of any shape and dtype over pooled bytes of exactly their size; arrays under
    `min_bytes` come from `np.empty`."""

    def __init__(self, *, min_bytes: int, max_bytes: int) -> None:
        super().__init__(_bytes_array, max_bytes=max_bytes)
        self.min_bytes = min_bytes

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.min_bytes:
            return np.empty(shape, dtype=dtype)
        return self.take(nbytes).view(dtype).reshape(shape)


def _bytes_array(nbytes: int) -> np.ndarray:
    return np.empty(nbytes, dtype=np.uint8)
