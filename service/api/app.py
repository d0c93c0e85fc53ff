"""The application factory: it wires settings, routers, error handlers and middleware, no more."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from service import __version__
from service._compat.glibc_malloc import retain_freed_memory
from service._compat.http_limits import HttpLimits
from service.api import docs, metrics, openapi, problems, run_pages
from service.api.api_keys import ApiKeyMiddleware
from service.api.body_limit import BodyLimitMiddleware
from service.api.deps import requires_key
from service.api.observe import REQUEST_ID_HEADER, ObservabilityMiddleware
from service.api.routes import calibration, evaluate, health, label_noise, losses, oip, runs
from service.api.startup_heap import freeze_after_warm_up
from service.config import Settings, get_settings
from service.core import Context
from service.db import RunStore
from service.engine import select_backend, set_engine_path
from service.engine._warm_up import warm_up_in_background
from service.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

DESCRIPTION = """Losses, their gradients and calibration statistics from logits and labels.

Conventions follow PyTorch where PyTorch has one; every error is an RFC 9457
`application/problem+json` body naming the offending field."""


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids for generated clients: the route's name (`cross_entropy`)."""
    return route.name


def http_limits(settings: Settings) -> HttpLimits:
    """The limits on what a connection sends, for the server's protocol and the app."""
    return HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.library_internals:
            retain_freed_memory(settings.retain_freed_bytes)
        # Chosen once: every request of this process computes on the same backend.
        app.state.backend = select_backend(settings.device)
        app.state.context = Context(app.state.backend, settings)  # what every use case gets
        set_engine_path(settings.engine)  # every loss of this process takes this path
        # The fused CPU kernels compile (first start) or load from numba's cache on a thread,
        # once per worker process, while the server answers: /readyz says 503 until then.
        app.state.warm_up = warm_up_in_background()
        # Not awaited: the server answers meanwhile (the task is kept, or it could be collected).
        app.state.heap_freeze = asyncio.get_running_loop().create_task(
            anyio.to_thread.run_sync(
                freeze_after_warm_up, app.state.warm_up, abandon_on_cancel=True
            )
        )
        logger.info("backend %s on %s", app.state.backend.name, app.state.backend.device)
        app.state.run_store = store = RunStore(
            settings.database_url,
            connect_timeout_s=settings.database_connect_timeout_s,
            lock_timeout_s=settings.database_lock_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
        app.state.run_store_migrated = False
        try:
            await anyio.to_thread.run_sync(store.upgrade)
            app.state.run_store_migrated = True
        except DatabaseUnavailable as error:
            # The stateless routes work without it; run routes answer 503 until it is back.
            logger.warning("database unavailable at startup: %s", error.detail)
        try:
            yield
        finally:
            app.state.heap_freeze.cancel()  # a warm-up still under way is not waited for
            store.dispose()

    app = FastAPI(
        title="Loss service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # served from the package's own files: service.api.docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics.Metrics(backend=lambda: getattr(app.state, "backend", None))
    problems.install(app)
    # Routes are matched in order, one after another: the small requests' routes come first.
    losses.add_loss_routes(app.router)
    oip.add_infer_routes(app.router)
    app.include_router(oip.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(losses.router)
    app.include_router(evaluate.router)
    app.include_router(calibration.router)
    app.include_router(runs.router)
    app.include_router(label_noise.router)
    app.include_router(run_pages.router)
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, limits=http_limits(settings)
    )
    if settings.api_keys:
        # Outside the body limit: a client without a key learns nothing, not even the limit.
        app.add_middleware(
            ApiKeyMiddleware,
            api_keys=settings.api_keys,
            routes=lambda: app.routes,
            requires_key=requires_key,
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER],
        )
    # Outermost: it times, counts and logs every answer, the middleware's own 413s included.
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics)
    docs.install(app)
    openapi.install(app)
    return app
