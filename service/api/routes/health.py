"""Liveness and readiness probes (always open, even when API keys are configured)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service import __version__
from service.api.problems import problem_responses
from service.errors import Starting
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"], responses=problem_responses(500))


@router.get("/healthz", name="healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    name="readyz",
    summary="Readiness, with the backend in use",
    description="503 while the process is starting: the compiled CPU kernels are compiling "
    "(first start) or loading from their cache. `/healthz` answers 200 meanwhile.",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> Readiness:
    backend = request.app.state.backend
    warm_up = request.app.state.warm_up
    engine = warm_up.engine
    if engine is None:
        raise Starting(
            warm_up.failure
            or "the fused CPU kernels are still compiling (first start) or loading from numba's "
            "cache; /healthz answers meanwhile",
            retry_after_s=request.app.state.settings.retry_after_s,
        )
    return Readiness(
        backend=backend.name, device=backend.device, engine=engine, version=__version__
    )
