"""The application core: the loss registry and the use cases, over arrays and settings.

Every adapter is decode -> one core call -> encode: the REST routes (`service.api`), the Open
Inference Protocol, the offline CLI and evaluation runs. Nothing here imports FastAPI, Starlette
or uvicorn (a test keeps it so); pydantic models are the wire contract the core validates with.
"""

from service.core.context import Context
from service.core.registry import BY_NAME, LOSSES, LossSpec

__all__ = ["BY_NAME", "LOSSES", "Context", "LossSpec"]
