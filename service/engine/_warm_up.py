"""The fused CPU kernels' warm-up: once per process, on a thread of its own.

Compiling the kernels takes tens of seconds the first time; loading them from numba's cache
about one. `warm_up_in_background` starts that on a daemon thread and returns at once, so that a
server can answer meanwhile (`/healthz` at once, `/readyz` once `engine` is set). numba keeps what
it compiled or loaded for the life of the process, so the warm-up is one per process, shared by
every app made in it: `loss-service serve` starts it before it imports the web stack, and the
app's start finds it under way. A computation that comes before the end waits for the kernels it
needs, as it would without a warm-up.
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType

from service.engine import label_noise
from service.engine._engine_path import cpu_kernels
from service.engine._kernel_cache import cache_state, compile_counts

logger = logging.getLogger(__name__)


class KernelWarmUp:
    """`engine` is `fused` or `reference` once the kernels are ready, else None; `failure` says
    why they never will be."""

    def __init__(self, module: ModuleType | None) -> None:
        self.module = module
        self.engine: str | None = None if module is not None else "reference"
        self.failure: str | None = None
        self._done = threading.Event()
        if module is None:
            self._done.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether the warm-up is over (ready or failed), waiting up to `timeout_s`."""
        return self._done.wait(timeout_s)

    def _run(self) -> None:
        assert self.module is not None
        module = self.module
        state = cache_state(module)
        if state.directory is None:
            logger.info(
                "compiling the fused CPU kernels: numba has no writable cache directory here "
                "(set NUMBA_CACHE_DIR), so every start compiles them (tens of seconds) ..."
            )
        elif state.holds_kernels:
            logger.info("loading the fused CPU kernels from numba's cache in %s", state.directory)
        else:
            logger.info(
                "compiling the fused CPU kernels, first start only: tens of seconds; later "
                "starts load them from numba's cache in %s ...",
                state.directory,
            )
        start = time.perf_counter()
        try:
            module.warm_up()
            label_noise.warm_up()  # confident learning's kernels: numba too, the same cache
        except Exception as error:  # the kernels do not compile: never ready, and say why
            self.failure = f"the fused CPU kernels failed to compile: {error}"
            logger.exception("%s", self.failure)
            self._done.set()
            return
        elapsed = time.perf_counter() - start
        counts = compile_counts(module)
        if counts.compiled:
            logger.info(
                "fused CPU kernels compiled in %.1f s (%d specialisations)%s; ready",
                elapsed,
                counts.compiled,
                f", cached in {state.directory}" if state.directory else "",
            )
        else:
            logger.info("fused CPU kernels loaded from numba's cache in %.1f s; ready", elapsed)
        self.engine = "fused"
        self._done.set()


_STARTED: dict[ModuleType | None, KernelWarmUp] = {}
_LOCK = threading.Lock()


def warm_up_in_background() -> KernelWarmUp:
    """The process's warm-up of the kernels NumPy arrays use, started by the first call.

    Raises at once what a loss would (an unknown `LOSS_SERVICE_ENGINE`, `fused` without numba),
    so that a misconfigured server fails to start.
    """
    module = cpu_kernels()
    with _LOCK:
        warm_up = _STARTED.get(module)
        if warm_up is None:
            warm_up = _STARTED[module] = KernelWarmUp(module)
            if module is not None:
                # A daemon thread: stopping the server never waits for a compile to finish.
                threading.Thread(target=warm_up._run, name="kernel-warm-up", daemon=True).start()
    return warm_up
