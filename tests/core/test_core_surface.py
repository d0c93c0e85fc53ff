"""The core is what every adapter shares: it loads without the web server, and adding a loss is
one registry entry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core import BY_NAME, LOSSES
from service.core.evaluate import EVALUATED
from tests.live_server import running_server

WEB = ("fastapi", "starlette", "uvicorn")


@pytest.mark.system
@pytest.mark.parametrize(
    "modules",
    [
        "service.core",
        "service.core.losses, service.core.evaluate, service.core.calibration",
        "service.core.offline",
        "service.cli",
        "service.upload, service.client",
    ],
)
def test_the_core_and_the_offline_cli_import_no_web_framework(modules: str) -> None:
    code = f"import sys, {modules}; print(sorted(m for m in {WEB!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.system
def test_the_offline_cli_computes_without_loading_the_web_framework() -> None:
    """`loss-service compute` end to end in a fresh interpreter, then a look at its modules."""
    code = (
        "import sys, numpy as np, tempfile, os\n"
        "from service import cli\n"
        "d = tempfile.mkdtemp()\n"
        "np.save(os.path.join(d, 'x.npy'), np.zeros((2, 3), dtype=np.float32))\n"
        "np.save(os.path.join(d, 'y.npy'), np.array([0, 2]))\n"
        "try:\n"
        "    cli.main(['compute', 'cross-entropy', '--logits', os.path.join(d, 'x.npy'),"
        " '--labels', os.path.join(d, 'y.npy')])\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        f"print(sorted(m for m in {WEB!r} if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert '"loss":1.0986' in out.stdout.replace(" ", "")  # log 3, from the offline path
    assert out.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@pytest.mark.system
def test_the_upload_cli_uploads_without_loading_the_web_framework(tmp_path: Path) -> None:
    """`loss-service upload` end to end against a live server, in a fresh interpreter."""
    np.savez(tmp_path / "data.npz", logits=np.zeros((3, 2)), labels=np.array([0, 1, 1]))
    with running_server(tmp_path / "server.log") as url:
        created = httpx.post(f"{url}/v1/runs", json={"losses": [{"name": "cross-entropy"}]})
        argv = ["upload", created.json()["id"], str(tmp_path / "data.npz"), "--url", url]
        code = (
            "import sys\n"
            "from service import cli\n"
            "try:\n"
            f"    cli.main({argv!r})\n"
            "except SystemExit as done:\n"
            "    assert done.code == 0, done.code\n"
            f"print(sorted(m for m in {WEB!r} if m in sys.modules), file=sys.stderr)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert httpx.get(f"{url}/v1/runs/{argv[1]}").json()["n_samples"] == 3
    assert '"sent": 1' in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_every_loss_is_one_registry_entry() -> None:
    assert len(BY_NAME) == len(LOSSES)
    for spec in LOSSES:
        assert spec.required_inputs, spec.name
        for name, mark in spec.inputs.items():
            # Every input says how it relates to the samples; class indices are named labels.
            assert mark.role in ("sample", "shared", "broadcast"), (spec.name, name)
            if mark.kind == "index":
                assert name == "labels", (spec.name, name)


def test_evaluate_takes_every_loss_of_logits_and_labels() -> None:
    assert {spec.name for spec in EVALUATED} == {
        spec.name for spec in LOSSES if {"logits", "labels"} <= set(spec.required_inputs)
    }
