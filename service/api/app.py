"""The application factory: it wires settings, routers, error handlers and middleware, no more."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from service import __version__
from service._compat.glibc_malloc import retain_freed_memory
from service.api import docs, metrics, openapi, problems
from service.api.body_limit import BodyLimitMiddleware
from service.api.observe import REQUEST_ID_HEADER, ObservabilityMiddleware
from service.api.routes import calibration, evaluate, health, losses, oip
from service.config import Settings, get_settings
from service.engine import select_backend
from service.engine._warm_up import warm_up_in_background

logger = logging.getLogger(__name__)

DESCRIPTION = """Losses, their gradients and calibration statistics from logits and labels.

Conventions follow PyTorch where PyTorch has one; every error is an RFC 9457
`application/problem+json` body naming the offending field."""


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids for generated clients: the route's name (`cross_entropy`)."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.library_internals:
            retain_freed_memory(settings.retain_freed_bytes)
        # Chosen once: every request of this process computes on the same backend.
        app.state.backend = select_backend(settings.device)
        # The fused CPU kernels compile (first start) or load from numba's cache on a thread,
        # once per worker process, while the server answers: /readyz says 503 until then.
        app.state.warm_up = warm_up_in_background()
        logger.info("backend %s on %s", app.state.backend.name, app.state.backend.device)
        yield

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
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(losses.router)
    app.include_router(evaluate.router)
    app.include_router(calibration.router)
    app.include_router(oip.router)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
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
