"""Shared fixtures: the array backends every engine test runs on, and an HTTP client on the app."""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.engine_helpers import ENGINE_PATHS, use_engine_path

if TYPE_CHECKING:  # the engine tests run where FastAPI is not installed (a GPU box), so lazily
    import httpx


def _cupy_with_gpu() -> ModuleType | None:
    try:
        cupy = importlib.import_module("cupy")
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


_CUPY = _cupy_with_gpu()

# No test writes the default embedded database into the working directory: apps made without an
# explicit database_url (the OpenAPI and fuzz tests) get one in a directory removed at exit.
_DATA = tempfile.mkdtemp(prefix="loss-service-tests-")
atexit.register(shutil.rmtree, _DATA, ignore_errors=True)
os.environ.setdefault("LOSS_SERVICE_DATABASE_URL", f"sqlite:///{_DATA}/runs.db")


@pytest.fixture(
    params=[
        pytest.param(np, id="numpy"),
        pytest.param(
            _CUPY,
            id="cupy",
            marks=pytest.mark.skipif(_CUPY is None, reason="CuPy with a CUDA device not found"),
        ),
    ]
)
def xp(request: pytest.FixtureRequest) -> ModuleType:
    """The array namespace an engine test runs on (SciPy's `xp` fixture, in small)."""
    module: ModuleType = request.param
    return module


@pytest.fixture(params=ENGINE_PATHS)
def engine_path(
    request: pytest.FixtureRequest, xp: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Each implementation of the softmax losses: the reference array code, the fused kernels."""
    path: str = request.param
    use_engine_path(path, xp, monkeypatch)
    return path


def to_numpy(array: object) -> np.ndarray:
    """A host copy of a NumPy or CuPy array, for assertions."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ClientFactory = Callable[..., "AsyncClientContext"]


class AsyncClientContext:
    """`async with make_client(**settings) as client`: the app with its lifespan, over httpx."""

    def __init__(self, **settings: object) -> None:
        import tempfile

        from service.api import create_app
        from service.config import Settings

        settings.setdefault("device", "cpu")
        # Each app its own embedded database, removed with the directory at exit.
        self._data = tempfile.TemporaryDirectory(prefix="loss-service-test-")
        settings.setdefault("database_url", f"sqlite:///{self._data.name}/runs.db")
        self.app = create_app(Settings(**settings))  # type: ignore[arg-type]
        self._lifespan = self.app.router.lifespan_context(self.app)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        import httpx

        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)
        self._data.cleanup()


@pytest.fixture
def make_client() -> ClientFactory:
    return AsyncClientContext


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncClientContext() as http:
        yield http
