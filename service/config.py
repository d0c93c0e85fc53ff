"""Settings, read once from `LOSS_SERVICE_*` environment variables.

Every limit has a safe default, so `loss-service serve` needs no configuration. Invalid values stop
the service at startup rather than at the first request.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.engine import DeviceChoice, EnginePath, checked_engine_path
from service.logs import LogFormat, LogLevel

MiB = 2**20

CommaSeparated = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    # Errors name the setting, never its value: a rejected value may be an API key.
    model_config = SettingsConfigDict(
        env_prefix="LOSS_SERVICE_", frozen=True, hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: DeviceChoice = "auto"
    engine: EnginePath = Field(
        "auto",
        description="the softmax losses' code: `fused` kernels, the `reference` array code, or "
        "`auto` (fused where numba imports); set for the process at start",
    )
    workers: int = Field(
        1, ge=1, le=256, description="server processes sharing the port (`serve --workers`)"
    )
    # 512 MiB holds a 2048 x 32000 float32 batch as base64 (350 MB) with room to spare.
    max_body_bytes: int = Field(512 * MiB, gt=0)
    max_elements: int = Field(2**27, gt=0, description="per tensor")
    max_request_elements: int = Field(
        2**28, gt=0, description="all the tensors of one request together"
    )
    max_classes: int = Field(2**20, gt=0, description="size of the class axis")
    # What a connection may send before the app sees a request, and how slowly: enforced by
    # the server's protocol (service._compat.uvicorn_body_into), in part by the app otherwise.
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="request line and header fields of one request (431)"
    )
    max_header_count: int = Field(100, ge=1, description="header fields of one request (431)")
    header_timeout_s: float = Field(
        10.0, gt=0, description="for a request's head to arrive; an idle connection closes (408)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="the longest a request body may stall while it is read (408)"
    )
    # A small request can ask for a large answer: these bound what one answer may hold.
    max_output_elements: int = Field(
        2**28, gt=0, description="all the output tensors of one answer together"
    )
    max_evaluate_losses: int = Field(
        32, ge=1, description="entries of `losses` in one /v1/evaluate request"
    )
    max_oip_outputs: int = Field(
        16, ge=1, description="entries of `outputs` in one Open Inference Protocol request"
    )
    request_timeout_s: float = Field(120.0, gt=0)
    # Each computation holds its decoded tensors and their temporaries: this many at once bound
    # the memory a burst can take (SECURITY.md). A computation past its timeout keeps its slot
    # until its thread ends.
    max_concurrent: int = Field(4, ge=1, description="computations running at once")
    # A worker thread's hand-off costs more than a computation on a body this small
    # (service.api.concurrency): such a computation runs on the event loop, in a compute slot.
    inline_compute_bytes: int = Field(
        16 * 1024,
        ge=0,
        description="computations whose request declares a body of at most this many bytes run "
        "on the event loop instead of a worker thread; 0: always a worker thread",
    )
    queue_timeout_s: float = Field(
        30.0, ge=0, description="how long a request waits for a compute slot before a 503"
    )
    retry_after_s: int = Field(5, ge=0, description="`Retry-After` of the 503 answers")
    max_label_noise_classes: int = Field(
        2048,
        gt=0,
        description="classes of /v1/label-noise, whose estimates keep several [C, C] arrays",
    )
    max_bootstrap: int = Field(
        1000, ge=0, description="bootstrap resamples per calibration request"
    )
    max_diagram_bins: int = Field(
        100, ge=1, description="bins of a reliability diagram (drawing costs time per bin)"
    )
    # glibc: freed memory the process keeps for the next large body (service._compat.glibc_malloc)
    retain_freed_bytes: int = Field(
        1024 * MiB, ge=0, description="freed memory kept for reuse; 0: the C library's default"
    )
    # Evaluation runs. Errors never echo a rejected value (`hide_input_in_errors`): a URL may
    # hold a password.
    database_url: str = Field(
        "sqlite:///loss-service.db",
        description="evaluation runs' database: an embedded SQLite file (a relative path is "
        "relative to the working directory), or postgresql+psycopg://user:password@host/db, "
        "which several replicas share",
    )
    database_connect_timeout_s: float = Field(
        5.0, gt=0, description="a database that does not answer within it gives 503"
    )
    database_lock_timeout_s: float = Field(
        10.0, gt=0, description="how long a batch waits for another one writing the same run"
    )
    library_internals: bool = Field(
        True,
        description="use the transport optimisations that rely on other libraries' internals "
        "(each checked at start); false: uvicorn's own protocol and the C library's allocator "
        "defaults, with the same answers",
    )
    api_keys: CommaSeparated = Field(default_factory=list, description="comma-separated")
    api_keys_file: Path | None = Field(
        None, description="one API key per line, added to `api_keys`; read once at startup"
    )
    cors_origins: CommaSeparated = Field(default_factory=list, description="comma-separated")
    log_level: LogLevel = "info"
    log_format: LogFormat = Field("json", description="`json`: one object per line; `text`")

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("engine", mode="before")
    @classmethod
    def _engine(cls, value: object) -> object:
        return checked_engine_path(value) if isinstance(value, str) else value

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        return _split(value)

    @model_validator(mode="before")
    @classmethod
    def _read_api_keys_file(cls, data: Any) -> Any:
        """The keys of `api_keys_file` join `api_keys`. A file that cannot be read, or that
        holds no key, stops the service: it must not start open by mistake."""
        if not isinstance(data, dict) or data.get("api_keys_file") in (None, ""):
            return data
        path = Path(data["api_keys_file"])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"api_keys_file: cannot read {path}: {error}") from None
        keys = [key for key in map(str.strip, lines) if key and not key.startswith("#")]
        if not keys:
            raise ValueError(f"api_keys_file: {path} holds no key")
        inline = _split(data.get("api_keys") or [])
        if not isinstance(inline, list):
            raise ValueError("api_keys: expected a comma-separated string or a list")
        return {**data, "api_keys": [*inline, *keys]}

    @field_validator("api_keys")
    @classmethod
    def _printable_keys(cls, keys: list[str]) -> list[str]:
        """A key must fit in an HTTP header as it is: visible ASCII, no spaces."""
        for index, key in enumerate(keys):
            if not key.isascii() or not key.isprintable() or " " in key:
                raise ValueError(
                    f"API key {index + 1} holds a space or a character that is not visible ASCII"
                )
        return keys


def _split(value: object) -> object:
    """A comma-separated string as the list of its items; anything else as it is."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
