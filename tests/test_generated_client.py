"""A client generated from the committed openapi/openapi.json with openapi-python-client computes
against a live server: the spec stays one that client generators take whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.live_server import _env, running_server

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "openapi" / "openapi.json"
PACKAGE = "loss_service_client"  # from the document's title, "Loss service"
# No formatting hooks (ruff) on the generated code; the reliability diagram's images are bytes.
CONFIG = """\
post_hooks: []
content_type_overrides:
  image/png: application/octet-stream
  image/svg+xml: application/octet-stream
"""

USE = """
import json, sys
from {package} import Client
from {package}.api.losses import cross_entropy, list_losses
from {package}.models import CrossEntropyRequest, LossResponse, Problem

client = Client(base_url=sys.argv[1], raise_on_unexpected_status=True, timeout=30.0)
out = {{}}
body = CrossEntropyRequest.from_dict(json.loads(sys.argv[2]))
result = cross_entropy.sync(client=client, body=body)
assert isinstance(result, LossResponse), result
out["loss"] = result.to_dict()
problem = cross_entropy.sync(
    client=client, body=CrossEntropyRequest(logits=[[1.0, 2.0]], labels=[7])
)
assert isinstance(problem, Problem), problem
out["problem"] = problem.to_dict()
out["losses"] = [entry.name for entry in list_losses.sync(client=client).losses]
if {calibration}:
    from {package}.api.calibration import calibration
    from {package}.models import CalibrationRequest, CalibrationResponse
    report = calibration.sync(
        client=client, body=CalibrationRequest.from_dict(json.loads(sys.argv[3]))
    )
    assert isinstance(report, CalibrationResponse), report
    out["calibration"] = report.to_dict()
print(json.dumps(out))
"""


def generator() -> str:
    found = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    found = found or shutil.which("openapi-python-client")
    assert found, "openapi-python-client is not installed (the `test` extra)"
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client package, generated into a fresh folder; any dropped operation fails here."""
    work = tmp_path_factory.mktemp("generated")
    (work / "config.yaml").write_text(CONFIG, encoding="utf-8")
    completed = subprocess.run(
        [
            generator(),
            "generate",
            "--path",
            str(SPEC),
            "--meta",
            "none",
            "--output-path",
            str(work / PACKAGE),
            "--config",
            str(work / "config.yaml"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    # The generator still writes a client when it has to leave parts out; we want none left out.
    assert "Warning" not in output, output[-4000:]
    return work


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("generated-server") / "server.log") as url:
        yield url


def test_every_operation_is_generated(generated: Path) -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    modules = {path.stem for path in (generated / PACKAGE / "api").rglob("*.py")}
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert operation["operationId"] in modules, operation["operationId"]


def test_generated_client_computes_a_loss(generated: Path, server: str) -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    has_calibration = "/v1/calibration" in spec["paths"]
    logits = [[2.0, 0.5, -1.0], [0.1, 3.0, 0.2]]
    body = {"logits": logits, "labels": [0, 2], "return_grad": True, "label_smoothing": 0.1}
    calibration = {"logits": logits, "labels": [0, 2], "n_bins": 5}  # one of two right
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            USE.format(package=PACKAGE, calibration=has_calibration),
            server,
            json.dumps(body),
            json.dumps(calibration),
        ],
        env=_env(PYTHONPATH=os.pathsep.join([str(generated), str(ROOT)])),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    out: dict[str, Any] = json.loads(completed.stdout)

    loss = out["loss"]
    x = np.array(logits)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    target = np.full((2, 3), 0.1 / 3)
    target[[0, 1], [0, 2]] += 0.9
    assert loss["name"] == "cross-entropy"
    assert loss["loss"] == pytest.approx(float(-(target * log_p).sum(axis=1).mean()), rel=1e-12)
    assert loss["n_valid"] == 2
    assert np.array(loss["grad"]).shape == (2, 3)

    problem = out["problem"]
    assert problem["status"] == 422
    assert problem["type"] == "urn:loss-service:problem:invalid-input"
    assert problem["errors"][0]["field"] == "labels"

    assert "cross-entropy" in out["losses"]
    if has_calibration:
        report = out["calibration"]
        assert report["n"] == 2
        assert 0 <= report["ece"] <= 1
        assert report["accuracy"] == pytest.approx(0.5)
