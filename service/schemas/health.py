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
    version: str
