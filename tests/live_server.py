"""A real `loss-service` under uvicorn on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import contextlib
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
# Ready within seconds when numba's cache holds the kernels (an earlier test compiled them in this
# checkout); a first compile on a busy 2-core machine takes about a minute.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A loopback port nothing listens on: one for a server to start on, or one whose connects
    are refused."""
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


def console_script() -> str:
    """`loss-service` from the environment that runs the tests."""
    script = shutil.which("loss-service", path=str(Path(sys.executable).parent))
    script = script or shutil.which("loss-service")
    assert script is not None, "the loss-service console script is not installed"
    return script


@contextlib.contextmanager
def running_server(log_path: Path, **settings: str) -> Iterator[str]:
    """`python -m service serve` on a free port, once `/readyz` answers 200; yields its base
    URL and always stops it. Its runs go to a SQLite file beside the log unless
    LOSS_SERVICE_DATABASE_URL says otherwise."""
    with serving(log_path, **settings) as (base_url, _):
        yield base_url


@contextlib.contextmanager
def serving(log_path: Path, **settings: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`running_server`, with the server's process (to signal it)."""
    port = free_port()
    with log_path.open("w+b") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=_env(
                **{
                    "LOSS_SERVICE_DEVICE": "cpu",
                    "LOSS_SERVICE_DATABASE_URL": f"sqlite:///{log_path.parent / 'runs.db'}",
                    **settings,
                }
            ),
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
                    if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"not ready (/readyz) in {START_TIMEOUT_S} s:\n{_log(log)}")
                time.sleep(0.1)
            yield base_url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
