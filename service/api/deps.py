"""Dependencies shared by the routes: API keys, the compute runner, the run store.

All are coroutines: FastAPI runs a plain function dependency on the thread pool, a thread hop
per request for nothing. Each reads what it needs from the request (the settings are
`app.state.settings`) rather than from sub-dependencies: FastAPI's solving of each dependency
costs more than its work on a small request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request

from service.api.api_keys import (
    MISSING_KEY,
    key_checked_by_middleware,
    key_matches,
    presented_keys,
)
from service.api.concurrency import ComputeGate
from service.codecs import output_elements, request_elements
from service.config import Settings
from service.core import Context
from service.db import RunStore
from service.errors import Unauthorized

T = TypeVar("T")


def _context(request: Request, settings: Settings) -> Context:
    """The app's context for use cases, made once (after the lifespan chose the backend)."""
    context: Context | None = getattr(request.app.state, "context", None)
    if context is None:
        context = request.app.state.context = Context(request.app.state.backend, settings)
    return context


def _gate(request: Request, settings: Settings) -> ComputeGate:
    """The app's compute slots, made on its first computation (within its event loop)."""
    gate: ComputeGate | None = getattr(request.app.state, "compute_gate", None)
    if gate is None:
        gate = request.app.state.compute_gate = ComputeGate.from_settings(settings)
    return gate


@dataclass(frozen=True)
class Compute:
    """Runs a core use case for a route: on a worker thread (heavy NumPy never blocks the event
    loop), once one of the compute slots is free (`service.api.concurrency`), within
    `request_timeout_s`, the tensors it decodes holding at most `max_request_elements` and
    those it answers at most `max_output_elements`. With `inline` (a small body: `_inline`),
    on the event loop, with the same slots and limits."""

    ctx: Context
    gate: ComputeGate
    inline: bool = False

    async def run(
        self, use_case: Callable[..., T], *args: object, inline_if_small: bool = False
    ) -> T:
        """`use_case(*args, ctx=...)`, its result or its exception. `inline_if_small`: the use
        case only computes, in time linear in its body (no database, no drawing), so that on a
        small body (`inline`) it may run on the event loop."""
        settings = self.ctx.settings

        def work() -> T:
            return use_case(*args, ctx=self.ctx)

        with (
            request_elements(settings.max_request_elements),
            output_elements(settings.max_output_elements),
        ):
            return await self.gate.run(
                work, timeout_s=settings.request_timeout_s, inline=inline_if_small and self.inline
            )

    async def run_io(self, use_case: Callable[..., T], *args: object) -> T:
        """`use_case(*args, ctx=...)` on a worker thread without a compute slot: a use case that
        waits on the database (bounded by its own timeouts) and computes nothing large."""

        def work() -> T:
            return use_case(*args, ctx=self.ctx)

        return await anyio.to_thread.run_sync(work)


def _inline(request: Request, settings: Settings) -> bool:
    """Whether the request's computation may run on the event loop: its body declares at most
    `inline_compute_bytes` (a chunked one declares nothing), on the CPU (a GPU's first call of a
    kernel compiles it), once the kernels' warm-up is over (a computation before its end waits
    for the kernels it needs: never on the event loop)."""
    declared = request.headers.get("content-length", "")
    if not (settings.inline_compute_bytes and declared.isascii() and declared.isdigit()):
        return False
    warm_up = getattr(request.app.state, "warm_up", None)
    return (
        int(declared) <= settings.inline_compute_bytes
        and request.app.state.backend.name == "numpy"
        and warm_up is not None
        and warm_up.engine is not None
    )


def compute_for(request: Request) -> Compute:
    """The compute runner of a request. A route on the path of small requests calls it itself
    (it takes the `Request`): as a dependency (`ComputeDep`), FastAPI's solving of it costs
    more than its work."""
    settings: Settings = request.app.state.settings
    context, gate = _context(request, settings), _gate(request, settings)
    return Compute(context, gate, inline=_inline(request, settings))


async def _compute(request: Request) -> Compute:
    return compute_for(request)


ComputeDep = Annotated[Compute, Depends(_compute)]


async def _run_store(request: Request) -> RunStore:
    """The app's run store, its schema migrated: when the database was down at startup, the
    first run request after it is back applies the migrations (or answers 503 meanwhile)."""
    store: RunStore = request.app.state.run_store
    if not request.app.state.run_store_migrated:
        await anyio.to_thread.run_sync(store.upgrade)  # DatabaseUnavailable: a 503
        request.app.state.run_store_migrated = True
    return store


RunStoreDep = Annotated[RunStore, Depends(_run_store)]


def _drawing_gate(request: Request, settings: Settings) -> ComputeGate:
    """The app's one drawing slot: matplotlib draws one figure at a time (`service.plots`), and
    a figure waiting for its turn waits here, holding no compute slot (ten 1000-bin diagrams
    waiting for the drawing lock in compute slots held up every other request)."""
    gate: ComputeGate | None = getattr(request.app.state, "drawing_gate", None)
    if gate is None:
        gate = request.app.state.drawing_gate = ComputeGate(
            1,
            queue_timeout_s=settings.queue_timeout_s,
            retry_after_s=settings.retry_after_s,
            slots="drawing slot",
        )
    return gate


async def _draw(request: Request) -> Compute:
    settings: Settings = request.app.state.settings
    return Compute(_context(request, settings), _drawing_gate(request, settings))


DrawDep = Annotated[Compute, Depends(_draw)]
"""Runs a drawing use case as `ComputeDep` runs a computation, in the drawing slot's queue."""

# Both schemes appear in the OpenAPI document on every operation that requires a key
# (`service.api.openapi`); either one is enough.
_KEYS_ONLY_WHEN_CONFIGURED = (
    "Required only when the service is configured with API keys (LOSS_SERVICE_API_KEYS or "
    "LOSS_SERVICE_API_KEYS_FILE)."
)
KEY_SCHEMES: dict[str, dict[str, str]] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": f"`Authorization: Bearer <key>`. {_KEYS_ONLY_WHEN_CONFIGURED}",
    },
    "apiKeyAuth": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": f"`X-API-Key: <key>`. {_KEYS_ONLY_WHEN_CONFIGURED}",
    },
}


async def require_api_key(request: Request) -> None:
    """With `api_keys` configured, require one of them as a Bearer token or as `X-API-Key`.

    `service.api.api_keys.ApiKeyMiddleware` refuses such requests before their body is read;
    this dependency marks the routes that require a key (the OpenAPI document declares
    `KEY_SCHEMES` on them), and checks again. It reads the headers itself, as the middleware
    does: FastAPI's security classes were three more dependencies to solve on every request."""
    keys: list[str] = request.app.state.settings.api_keys
    if keys and not key_matches(presented_keys(request.headers.raw), keys):
        raise Unauthorized(MISSING_KEY)


def requires_key(route: object) -> bool:
    """Whether `route` requires a key: it declares `require_api_key` (its router's dependencies
    included), or its class has the middleware check it (`KeyCheckedByMiddleware`)."""
    if key_checked_by_middleware(route):
        return True
    dependencies = getattr(route, "dependencies", ())
    return any(dependency.dependency is require_api_key for dependency in dependencies)
