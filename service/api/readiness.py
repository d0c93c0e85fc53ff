"""Readiness: the fused CPU kernels compile (first start) or load while the server already answers.

Compiling them takes tens of seconds the first time; loading them from numba's cache about one.
Either happens on a thread of its own, started by the app's lifespan, so that the server accepts
connections at once: `/healthz` answers 200 throughout (the process is alive), `/readyz` 503 until
the kernels are ready (a load balancer sends no traffic yet). A request that comes anyway is
computed; it waits for the kernels it needs, as it would without the warm-up.
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType

from service.engine import Backend
from service.engine._engine_path import cpu_kernels
from service.engine._kernel_cache import cache_state, compile_counts
from service.errors import Starting

logger = logging.getLogger(__name__)

# Kernels' modules whose warm-up finished in this process: numba keeps what it compiled or loaded
# for the process's life, so another app made here (tests make many) is ready at once.
_WARM: set[ModuleType] = set()


class KernelWarmUp:
    """The warm-up of one app: `engine` is `fused` or `reference` once it is done, else None."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.engine: str | None = None
        self.failure: str | None = None
        self._done = threading.Event()

    def start(self) -> None:
        """Raises at once what a loss would (an unknown `LOSS_SERVICE_ENGINE`, `fused` without
        numba), so that a misconfigured process fails to start; compiles on a thread."""
        module = cpu_kernels()
        if module is None or module in _WARM:
            self._ready("reference" if module is None else "fused")
            return
        # A daemon thread: stopping the server never waits for a compile to finish.
        thread = threading.Thread(
            target=self._warm_up, args=(module,), name="kernel-warm-up", daemon=True
        )
        thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether the warm-up is over (ready or failed), waiting up to `timeout_s`."""
        return self._done.wait(timeout_s)

    def check_ready(self, retry_after_s: int) -> str:
        """The engine in use, or `Starting` (503) while it is not ready."""
        if self.engine is not None:
            return self.engine
        if self.failure is not None:
            raise Starting(self.failure, retry_after_s=retry_after_s)
        raise Starting(
            "the fused CPU kernels are still compiling (first start) or loading from numba's "
            "cache; /healthz answers meanwhile",
            retry_after_s=retry_after_s,
        )

    def _warm_up(self, module: ModuleType) -> None:
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
        except Exception as error:  # the kernels do not compile: no traffic, and say why
            self.failure = f"the fused CPU kernels failed to compile: {error}"
            logger.exception("%s", self.failure)
            self._done.set()
            return
        elapsed = time.perf_counter() - start
        _WARM.add(module)
        counts = compile_counts(module)
        if counts.compiled:
            logger.info(
                "fused CPU kernels compiled in %.1f s (%d specialisations)%s",
                elapsed,
                counts.compiled,
                f"; cached in {state.directory}" if state.directory else "",
            )
        else:
            logger.info("fused CPU kernels loaded from numba's cache in %.1f s", elapsed)
        self._ready("fused")

    def _ready(self, engine: str) -> None:
        self.engine = engine
        logger.info(
            "ready: backend %s on %s, %s engine", self.backend.name, self.backend.device, engine
        )
        self._done.set()
