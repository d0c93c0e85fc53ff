"""`loss-service serve` and `loss-service openapi`: the app under uvicorn, and its document."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import uvicorn

from service.api.app import create_app
from service.api.server_protocol import BodyIntoProtocol
from service.config import Settings
from service.logs import logging_config


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_config=logging_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        access_log=False,  # the app logs one line per request itself (service.api.observe)
        http=cast(type[asyncio.Protocol], BodyIntoProtocol),  # a buffered one: uvicorn takes it
    )


def openapi_document(settings: Settings) -> dict[str, Any]:
    return create_app(settings).openapi()
