"""`loss-service serve` and `loss-service openapi`: the app under uvicorn, and its document."""

from __future__ import annotations

from typing import Any

import uvicorn

from service._compat.uvicorn_body_into import protocol_for_uvicorn
from service.api.app import create_app, http_limits
from service.config import Settings
from service.logs import logging_config


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """uvicorn on `settings`. With several workers each is a process of its own that builds the
    app from the environment (`create_app` reads `LOSS_SERVICE_*` itself), so the settings given
    here apply to them only through the environment, as they do to every replica."""
    workers = workers or settings.workers
    uvicorn.run(
        "service.api.app:create_app" if workers > 1 else create_app(settings),
        factory=workers > 1,
        workers=workers,
        host=host or settings.host,
        port=port or settings.port,
        log_config=logging_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        access_log=False,  # the app logs one line per request itself (service.api.observe)
        # A buffered protocol where it checks out (uvicorn takes any protocol class), else its own.
        http=protocol_for_uvicorn(  # type: ignore[arg-type]
            enabled=settings.library_internals, limits=http_limits(settings)
        ),
    )


def openapi_document(settings: Settings) -> dict[str, Any]:
    return create_app(settings).openapi()
