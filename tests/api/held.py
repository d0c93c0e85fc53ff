"""`Held`: a function whose calls wait until the test lets them go on, to prove that something
else is answered while they run."""

from __future__ import annotations

import threading
from typing import Any

import anyio

GUARD_S = 10.0  # how long a held step waits before it goes on by itself: a hang, not a delay


class Held:
    """Wraps a function so that each call waits until `release()`: `entered` says a call is in,
    `left` that one has returned."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.entered = threading.Event()
        self.left = threading.Event()
        self._release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self._release.wait(GUARD_S)
        try:
            return self.function(*args, **kwargs)
        finally:
            self.left.set()

    def release(self) -> None:
        self._release.set()

    async def wait_entered(self) -> None:
        with anyio.fail_after(GUARD_S * 2):
            while not self.entered.is_set():
                await anyio.sleep(0.005)
