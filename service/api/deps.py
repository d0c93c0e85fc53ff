"""Dependencies shared by the routes: settings, API keys, and the compute context."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from service.api.compute import ComputeContext
from service.config import Settings
from service.errors import Unauthorized


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(_settings)]


def _compute(request: Request, settings: SettingsDep) -> ComputeContext:
    return ComputeContext(backend=request.app.state.backend, settings=settings)


ComputeDep = Annotated[ComputeContext, Depends(_compute)]


def _presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return request.headers.get("x-api-key")


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """With `api_keys` configured, require one of them as a Bearer token or `X-API-Key`."""
    if not settings.api_keys:
        return
    presented = _presented_key(request)
    # compare_digest against every key: the time taken does not reveal which prefix matched.
    matches = [hmac.compare_digest(presented or "", key) for key in settings.api_keys]
    if presented is None or not any(matches):
        raise Unauthorized(
            "send a configured API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"
        )
