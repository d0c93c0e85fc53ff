"""Bodies of the health probes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    backend: str
    device: str
    engine: str = Field(description="`fused` (compiled CPU kernels) or `reference` (array code)")
    database: Literal["ok", "unavailable"] = Field(
        description="the evaluation runs' database. `unavailable`: the run routes answer 503 "
        "until it is back; every other route works, so the service stays ready"
    )
    version: str
