"""At most `max_concurrent` computations at once; a request waits `queue_timeout_s` for a slot.

Every computation runs on a worker thread and holds its decoded tensors and their temporaries,
so the number running at once bounds the memory a burst of requests can take. A request that
finds every slot busy waits for one, first come first served, and past `queue_timeout_s` gets
503 `Overloaded`; one whose computation outlives `request_timeout_s` gets 503 `ComputeTimeout`.

A thread cannot be interrupted: a computation past its timeout runs on, abandoned, and keeps its
slot until it ends. A client that retries at once therefore waits for it (or is told to come
back later) instead of piling another computation onto the CPU and into memory.

A computation on a small body (`inline=True`: `service.api.deps` decides) runs on the event loop
instead, in a slot all the same: handing it to a thread and back cost more than the computation
(and the GIL passed back and forth between the loop and the thread made the slowest answers
slower still). It is bounded by its body's size, so it cannot outlive a timeout worth
the name, and `request_timeout_s` does not apply to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio

from service.config import Settings
from service.errors import ComputeTimeout, Overloaded

T = TypeVar("T")


class _Ticket:
    """Who gives one slot back: exactly one of the request and the worker thread.

    The request does, once its work has ended or if it never started (the request was
    cancelled while the work waited for a thread; the worker then skips it). The worker does
    if the request left first (its timeout, or its client gone) while the work ran on.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = self._ended = self._left = False

    def start(self) -> bool:
        """In the worker: whether to run the work at all."""
        with self._lock:
            self._started = not self._left
            return self._started

    def end(self) -> bool:
        """In the worker, after the work: whether the worker gives the slot back."""
        with self._lock:
            self._ended = True
            return self._left

    def leave(self) -> bool:
        """In the request, however it ends: whether the request gives the slot back."""
        with self._lock:
            self._left = True
            return self._ended or not self._started


class ComputeGate:
    """The compute slots of one application (`service.api.deps` keeps one per app)."""

    def __init__(
        self,
        max_concurrent: int,
        *,
        queue_timeout_s: float,
        retry_after_s: int,
        slots: str = "compute slots (max_concurrent)",
    ) -> None:
        self.max_concurrent = max_concurrent
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.slots = slots  # what the 503 calls them
        self._slots = anyio.Semaphore(max_concurrent, max_value=max_concurrent)

    @classmethod
    def from_settings(cls, settings: Settings) -> ComputeGate:
        return cls(
            settings.max_concurrent,
            queue_timeout_s=settings.queue_timeout_s,
            retry_after_s=settings.retry_after_s,
        )

    @property
    def busy(self) -> int:
        """Slots held now, by running or abandoned computations."""
        return self.max_concurrent - self._slots.value

    async def run(
        self, work: Callable[..., T], *args: object, timeout_s: float, inline: bool = False
    ) -> T:
        """`work(*args)` on a worker thread once a slot is free, its result within `timeout_s`;
        with `inline`, on the event loop (no timeout: the caller knows it to be small)."""
        await self._acquire()
        if inline:
            try:
                return work(*args)
            finally:
                self._slots.release()
        loop = asyncio.get_running_loop()
        ticket = _Ticket()

        def guarded() -> T:
            if not ticket.start():
                raise RuntimeError("skipped: the request was cancelled before the work began")
            try:
                return work(*args)
            finally:
                if ticket.end():
                    # Not waited for: at shutdown the loop may be gone, and its waiters too.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._slots.release)

        try:
            with anyio.fail_after(timeout_s):
                return await anyio.to_thread.run_sync(guarded, abandon_on_cancel=True)
        except TimeoutError:
            raise ComputeTimeout(
                f"the computation took longer than request_timeout_s = {timeout_s}",
                retry_after_s=self.retry_after_s,
            ) from None
        finally:
            # Given back here in the usual case, once the worker thread is idle again: the
            # next request reuses it instead of starting another.
            if ticket.leave():
                self._slots.release()

    async def _acquire(self) -> None:
        with contextlib.suppress(anyio.WouldBlock):
            self._slots.acquire_nowait()  # a free slot is taken even with queue_timeout_s = 0
            return
        with anyio.move_on_after(self.queue_timeout_s):
            await self._slots.acquire()
            return
        raise Overloaded(
            f"all {self.max_concurrent} {self.slots} stayed busy for "
            f"queue_timeout_s = {self.queue_timeout_s}; try again later",
            retry_after_s=self.retry_after_s,
        )
