"""Shared fixtures: the array backends every engine test runs on, and an HTTP client on the app."""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
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
NO_GPU_REASON = "CuPy with a CUDA device not found"

# NumPy always; CuPy only where it sees a device: elsewhere its parametrisations do not exist.
BACKENDS = [pytest.param(np, id="numpy")]
if _CUPY is not None:
    BACKENDS.append(pytest.param(_CUPY, id="cupy", marks=pytest.mark.gpu))

# No test writes the default embedded database into the working directory: apps made without an
# explicit database_url (the OpenAPI and fuzz tests) get one in a directory removed at exit.
_DATA = tempfile.mkdtemp(prefix="loss-service-tests-")
atexit.register(shutil.rmtree, _DATA, ignore_errors=True)
os.environ.setdefault("LOSS_SERVICE_DATABASE_URL", f"sqlite:///{_DATA}/runs.db")


@pytest.fixture(params=BACKENDS)
def xp(request: pytest.FixtureRequest) -> ModuleType:
    """The array namespace an engine test runs on (SciPy's `xp` fixture, in small)."""
    module: ModuleType = request.param
    return module


# Tests that need what a machine may lack are deselected where it is missing, and each group is
# named once, with the reason, at the end of the report: not thousands of skips that hide the few
# that matter. The markers are declared in pyproject.toml.
MISSING = {
    marker: reason
    for marker, reason in (
        ("gpu", None if _CUPY is not None else NO_GPU_REASON),
        ("cxx", None if shutil.which("g++") else "no host C++ compiler (g++)"),
    )
    if reason is not None
}
_deselected: dict[str, int] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        marker = next((name for name in MISSING if item.get_closest_marker(name)), None)
        if marker is None:
            kept.append(item)
        else:
            dropped.append(item)
            _deselected[marker] = _deselected.get(marker, 0) + 1
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    if _CUPY is not None:
        return f"GPU: CuPy {_CUPY.__version__}, the engine tests run on NumPy and CuPy"
    return f"GPU: none ({NO_GPU_REASON}): the engine tests run on NumPy only"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for marker, count in _deselected.items():
        terminalreporter.write_line(
            f"DESELECTED [{count}] tests marked {marker}: {MISSING[marker]}", yellow=True
        )


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
        # Requests never wait for the kernels' warm-up, but /readyz does: tests start when ready.
        import anyio

        await anyio.to_thread.run_sync(self.app.state.warm_up.wait)
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a real `loss-service serve` (tests/live_server.py), one per test module
    that asks for it; its log and runs database in a temporary directory."""
    from tests.live_server import running_server

    with running_server(tmp_path_factory.mktemp("server") / "server.log") as base_url:
        yield base_url
