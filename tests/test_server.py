"""End to end: the real server under uvicorn, the console script, and what `import` pulls in."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**extra: str) -> dict[str, str]:
    """This environment without LOSS_SERVICE_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    env.update(extra)
    return env


def _log(handle: IO[bytes]) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read().decode(errors="replace")[-4000:]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`python -m service serve` on a free port; yields its base URL and always stops it."""
    port = _free_port()
    with (tmp_path / "server.log").open("w+b") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=_env(LOSS_SERVICE_DEVICE="cpu"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"the server exited with {process.returncode}:\n{_log(log)}")
                try:
                    if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer on /healthz in {START_TIMEOUT_S} s:\n{_log(log)}")
                time.sleep(0.1)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def test_server_end_to_end(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10.0) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        ready = client.get("/readyz")
        assert ready.status_code == 200
        readiness = ready.json()
        assert readiness["status"] == "ready"
        assert readiness["backend"] == "numpy"
        assert readiness["device"] == "cpu"
        assert isinstance(readiness["version"], str)

        body = {"logits": [[0.0, 0.0]], "labels": [1], "return_grad": True}
        response = client.post("/v1/losses/cross-entropy", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["loss"] == pytest.approx(0.6931471805599453, rel=1e-12)  # log 2
        assert result["grad"] == [[0.5, -0.5]]
        assert result["backend"] == "numpy"

        problem = client.post("/v1/losses/cross-entropy", json={"logits": [[0.0]]})
        assert problem.status_code == 422
        assert problem.headers["content-type"] == "application/problem+json"


def _console_script() -> str:
    """`loss-service` from the environment that runs the tests."""
    script = shutil.which("loss-service", path=str(Path(sys.executable).parent))
    script = script or shutil.which("loss-service")
    assert script is not None, "the loss-service console script is not installed"
    return script


def test_console_script_prints_openapi() -> None:
    completed = subprocess.run(
        [_console_script(), "openapi"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    spec = json.loads(completed.stdout)
    assert spec["openapi"].startswith("3.")
    assert "/v1/losses/cross-entropy" in spec["paths"]


def test_console_script_help() -> None:
    completed = subprocess.run(
        [_console_script(), "--help"], env=_env(), capture_output=True, timeout=60, check=False
    )
    assert completed.returncode == 0
    assert b"serve" in completed.stdout
    assert b"openapi" in completed.stdout


IMPORT_CHECK = """
import json, sys
import {modules}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})))
"""


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        pytest.param("service", {"cupy", "cupyx"}, id="service"),
        pytest.param("service.api, service.cli", {"cupy", "cupyx"}, id="service.api"),
        pytest.param(
            "service.engine",
            {"cupy", "cupyx", "fastapi", "pydantic", "pydantic_settings", "starlette"},
            id="service.engine",
        ),
    ],
)
def test_import_does_not_pull_in(tmp_path: Path, modules: str, forbidden: set[str]) -> None:
    # Importable stand-ins for every forbidden module, so an eager import would succeed and be
    # seen in sys.modules even where the real package is not installed.
    for name in forbidden - {"fastapi", "pydantic", "pydantic_settings", "starlette"}:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("", encoding="utf-8")
    env = _env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    code = IMPORT_CHECK.format(modules=modules, forbidden=sorted(forbidden))
    completed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    assert json.loads(completed.stdout) == []


def test_import_check_sees_an_eager_import(tmp_path: Path) -> None:
    """The check above can fail: importing fastapi directly is seen."""
    code = IMPORT_CHECK.format(modules="service.engine, fastapi", forbidden=["fastapi"])
    completed = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    assert "fastapi" in json.loads(completed.stdout)
