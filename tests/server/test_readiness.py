"""The start: /healthz answers at once, /readyz 503 until the compiled kernels are ready, and the
kernels compile once, then load from numba's cache (or from a copy made ahead, as in the image).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import types
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from service.config import Settings
from service.engine import _kernel_cache, _warm_up
from tests.live_server import _env, running_server

ROOT = Path(__file__).resolve().parents[2]


class SlowKernels(types.ModuleType):
    """A stand-in for the kernels' module whose warm-up waits for the test (or fails)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__("slow_kernels")
        self.release = threading.Event()
        self.error = error

    def warm_up(self) -> None:
        assert self.release.wait(30), "the test never released the warm-up"
        if self.error is not None:
            raise self.error


@pytest.fixture
def kernels(monkeypatch: pytest.MonkeyPatch) -> SlowKernels:
    module = SlowKernels()
    monkeypatch.setattr(_warm_up, "cpu_kernels", lambda: module)
    return module


class _Started:
    """The app after its lifespan started, without waiting for the warm-up (unlike the
    `make_client` fixture)."""

    def __init__(self) -> None:
        self.app = create_app(Settings(device="cpu", retry_after_s=7))
        self._lifespan = self.app.router.lifespan_context(self.app)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        transport = httpx.ASGITransport(app=self.app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self._lifespan.__aexit__(None, None, None)


@pytest.fixture
async def starting(kernels: SlowKernels) -> AsyncIterator[tuple[httpx.AsyncClient, _Started]]:
    started = _Started()
    async with started as client:
        yield client, started
        kernels.release.set()


@pytest.mark.anyio
async def test_readyz_is_503_until_the_kernels_are_ready(
    starting: tuple[httpx.AsyncClient, _Started], kernels: SlowKernels
) -> None:
    client, started = starting
    assert (await client.get("/healthz")).status_code == 200
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.headers["content-type"] == "application/problem+json"
    assert not_ready.headers["retry-after"] == "7"
    problem = not_ready.json()
    assert problem["type"] == "urn:loss-service:problem:starting"
    assert "compiling" in problem["detail"]
    assert (await client.get("/v2/health/ready")).json() == {"ready": False}

    kernels.release.set()
    assert started.app.state.warm_up.wait(30)
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["engine"] == "fused"
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}

    # The warm-up is the process's: another app made here is ready at once.
    kernels.release.clear()
    another = _Started()
    async with another as again:
        assert another.app.state.warm_up is started.app.state.warm_up
        assert (await again.get("/readyz")).status_code == 200


@pytest.mark.anyio
async def test_kernels_that_fail_to_compile_keep_the_process_unready(
    kernels: SlowKernels, caplog: pytest.LogCaptureFixture
) -> None:
    kernels.error = RuntimeError("LLVM ERROR: out of registers")
    kernels.release.set()
    started = _Started()
    async with started as client:
        assert started.app.state.warm_up.wait(30)
        answer = await client.get("/readyz")
        assert (await client.get("/healthz")).status_code == 200
    assert answer.status_code == 503
    assert "failed to compile: LLVM ERROR: out of registers" in answer.json()["detail"]
    assert "failed to compile" in caplog.text


@pytest.mark.anyio
async def test_an_unknown_engine_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSS_SERVICE_ENGINE", "fast")
    with pytest.raises(ValueError, match="LOSS_SERVICE_ENGINE"):
        async with _Started():
            pass


@pytest.mark.system
@pytest.mark.slow
def test_the_server_logs_its_warm_up(tmp_path: Path) -> None:
    """What a first start shows instead of uvicorn's bare "Waiting for application startup":
    what the kernels are doing, then how long it took (here they load from numba's cache,
    which the tests before have filled, or compile where they did not)."""
    log = tmp_path / "server.log"
    with running_server(log, LOSS_SERVICE_LOG_LEVEL="info"):
        pass
    messages = [json.loads(line)["message"] for line in log.read_text().splitlines()]
    warm_up = [m for m in messages if "fused CPU kernels" in m]
    assert len(warm_up) == 2, messages
    assert re.match(r"(loading|compiling) the fused CPU kernels", warm_up[0])
    finished = r"fused CPU kernels (loaded from numba's cache|compiled) in [0-9.]+ s"
    assert re.match(finished, warm_up[1])


@pytest.mark.system
def test_serve_refuses_an_unknown_engine_before_it_starts() -> None:
    """`loss-service serve` starts the warm-up first, so a bad setting stops it at once."""
    completed = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "1"],
        cwd=ROOT,
        env=_env(LOSS_SERVICE_ENGINE="fast"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("loss-service serve: LOSS_SERVICE_ENGINE='fast'")


@pytest.mark.anyio
async def test_the_openapi_document_declares_the_503(client: httpx.AsyncClient) -> None:
    responses = (await client.get("/openapi.json")).json()["paths"]["/readyz"]["get"]["responses"]
    assert "503" in responses
    assert "Retry-After" in responses["503"]["headers"]


def test_the_seed_is_copied_where_numba_has_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "engine_abc").mkdir(parents=True)
    (seed / "engine_abc" / "k.nbi").write_bytes(b"seed index")
    (seed / "engine_abc" / "k.1.nbc").write_bytes(b"seed code")
    (cache / "engine_abc").mkdir(parents=True)
    (cache / "engine_abc" / "k.nbi").write_bytes(b"newer index")
    assert _kernel_cache.seed_cache() == 0  # neither variable set: nothing to do
    monkeypatch.setenv(_kernel_cache.SEED_ENV, str(seed))
    monkeypatch.setenv(_kernel_cache.CACHE_DIR_ENV, str(cache))
    assert _kernel_cache.seed_cache() == 1
    assert (cache / "engine_abc" / "k.1.nbc").read_bytes() == b"seed code"
    assert (cache / "engine_abc" / "k.nbi").read_bytes() == b"newer index"  # never overwritten


# A module of one cached kernel, and the warm-up as the server runs it, in a fresh process (numba
# and its cache are per process): what does it log, and what did it compile?
TOY_KERNELS = """
import numba

@numba.njit(cache=True)
def add(a, b):
    return a + b

def warm_up():
    add(1.0, 2.0)
"""

WARM_UP = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
import toy_kernels
from service.engine import _warm_up
from service.engine._kernel_cache import compile_counts
real_cpu_kernels = _warm_up.cpu_kernels
# The server's own steps (the seed is copied as the real kernels' module is imported), then
# the toy kernels in their place.
_warm_up.cpu_kernels = lambda: (real_cpu_kernels(), toy_kernels)[1]
warm_up = _warm_up.warm_up_in_background()
assert warm_up.wait(120) and warm_up.engine == "fused", warm_up.failure
print("counts", compile_counts(toy_kernels))
"""


def _start(tmp_path: Path, **env: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", WARM_UP],
        env=_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "src"), str(ROOT)]), **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return completed.stdout


@pytest.mark.system
@pytest.mark.slow
def test_the_first_start_compiles_and_says_so_later_ones_load(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "toy_kernels.py").write_text(TOY_KERNELS)
    cache = tmp_path / "cache"

    first = _start(tmp_path, NUMBA_CACHE_DIR=str(cache))
    assert "compiling the fused CPU kernels, first start only" in first
    assert f"later starts load them from numba's cache in {cache}" in first
    assert "fused CPU kernels compiled in" in first
    assert "compiled=1, loaded=0" in first

    second = _start(tmp_path, NUMBA_CACHE_DIR=str(cache))
    assert "loading the fused CPU kernels from numba's cache" in second
    assert "fused CPU kernels loaded from numba's cache in" in second
    assert "compiled=0, loaded=1" in second

    # As in the image: the build's cache is the seed of an empty cache directory, and stays as
    # it was (numba writes only to the copy).
    seed_files = {path: path.read_bytes() for path in cache.rglob("*") if path.is_file()}
    fresh = tmp_path / "fresh-cache"
    seeded = _start(tmp_path, NUMBA_CACHE_DIR=str(fresh), LOSS_SERVICE_KERNEL_CACHE_SEED=str(cache))
    assert "compiled=0, loaded=1" in seeded
    assert {path: path.read_bytes() for path in cache.rglob("*") if path.is_file()} == seed_files
