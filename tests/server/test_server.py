"""End to end: the real server under uvicorn, the console script, and what `import` pulls in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import LossClient
from service.engine import cross_entropy, reduce_loss
from tests.live_server import _env, console_script, running_server

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with running_server(tmp_path / "server.log") as base_url:
        yield base_url


@pytest.mark.slow
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
        assert readiness["engine"] == "fused"  # numba is a dependency; warmed up at startup
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


@pytest.mark.slow
def test_large_tensors_over_http_with_the_client(server: str) -> None:
    """Bodies and answers over 1 MB, through uvicorn: read into one buffer, sent in pieces with
    their Content-Length, by the server and by `LossClient`, in every transport."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(512, 1000)).astype(np.float32)  # 2 MB raw, 2.7 MB of base64
    labels = rng.integers(0, 1000, size=512)
    expected = reduce_loss(cross_entropy(logits, labels), "mean")
    with LossClient(server, timeout=30.0) as client:
        encoded = client.loss("cross-entropy", logits=logits, labels=labels, return_grad=True)
        binary = client.infer("cross-entropy", logits=logits, labels=labels, return_grad=True)
    for result in (encoded, binary):
        assert result.loss == pytest.approx(expected.loss, rel=1e-12)
        assert result.grad is not None
        np.testing.assert_array_equal(result.grad, expected.grads["logits"])


def test_console_script_prints_openapi() -> None:
    completed = subprocess.run(
        [console_script(), "openapi"],
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
        [console_script(), "--help"], env=_env(), capture_output=True, timeout=60, check=False
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
            {"cupy", "cupyx", "fastapi", "pydantic", "pydantic_settings", "starlette", "numba"},
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
