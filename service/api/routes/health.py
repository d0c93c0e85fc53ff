"""Liveness and readiness probes (always open, even when API keys are configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import __version__
from service.api.problems import problem_responses
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"], responses=problem_responses(500))


@router.get("/healthz", name="healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", name="readyz", summary="Readiness, with the backend in use")
async def readyz(request: Request) -> Readiness:
    backend = request.app.state.backend
    return Readiness(
        backend=backend.name,
        device=backend.device,
        engine=request.app.state.engine,
        version=__version__,
    )


# Probes that ask with HEAD (load balancers, `curl -I`) get the GET's status, without a body
# (the server sends none for HEAD). Left out of the OpenAPI document: one operation per probe.
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(
        _path, _probe, methods=["HEAD"], name=f"{_probe.__name__}_head", include_in_schema=False
    )
