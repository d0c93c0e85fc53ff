"""Settings, read once from `LOSS_SERVICE_*` environment variables.

Every limit has a safe default, so `loss-service serve` needs no configuration. Invalid values stop
the service at startup rather than at the first request.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.engine import DeviceChoice
from service.logs import LogFormat, LogLevel

MiB = 2**20

CommaSeparated = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSS_SERVICE_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: DeviceChoice = "auto"
    # 512 MiB holds a 2048 x 32000 float32 batch as base64 (350 MB) with room to spare.
    max_body_bytes: int = Field(512 * MiB, gt=0)
    max_elements: int = Field(2**27, gt=0, description="per tensor")
    max_classes: int = Field(2**20, gt=0, description="size of the class axis")
    request_timeout_s: float = Field(120.0, gt=0)
    max_bootstrap: int = Field(
        1000, ge=0, description="bootstrap resamples per calibration request"
    )
    api_keys: CommaSeparated = Field(default_factory=list, description="comma-separated")
    cors_origins: CommaSeparated = Field(default_factory=list, description="comma-separated")
    log_level: LogLevel = "info"
    log_format: LogFormat = Field("json", description="`json`: one object per line; `text`")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
