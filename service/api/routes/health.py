"""Liveness and readiness probes (always open, even when API keys are configured)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request

from service import __version__
from service.api.problems import problem_responses
from service.errors import DatabaseUnavailable, Starting
from service.schemas import Health, Readiness

# A probe answers within its own timeout: a database that takes longer is reported unavailable.
DATABASE_CHECK_S = 1.0

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
        backend=backend.name,
        device=backend.device,
        engine=engine,
        database="ok" if await _database_answers(request) else "unavailable",
        version=__version__,
    )


async def _database_answers(request: Request) -> bool:
    check = request.app.state.run_store.check
    with anyio.move_on_after(DATABASE_CHECK_S):
        try:
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
        except DatabaseUnavailable:
            return False
        return True
    return False


# Probes that ask with HEAD (load balancers, `curl -I`) get the GET's status, without a body
# (the server sends none for HEAD). Left out of the OpenAPI document: one operation per probe.
for _path, _probe in (("/healthz", healthz), ("/readyz", readyz)):
    router.add_api_route(
        _path, _probe, methods=["HEAD"], name=f"{_probe.__name__}_head", include_in_schema=False
    )
