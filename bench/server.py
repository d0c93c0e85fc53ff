"""A real `loss-service serve` on a free loopback port, for the benchmarks that go over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import httpx

# A first start compiles the fused kernels (tens of seconds, minutes on a busy 2-core machine);
# later ones load them from numba's cache.
START_TIMEOUT_S = 300.0


@contextmanager
def serving(
    settings: dict[str, str] | None = None, *, start_timeout_s: float = START_TIMEOUT_S
) -> Iterator[str]:
    """`loss-service serve` with its defaults, on the CPU, but for `settings` (LOSS_SERVICE_*);
    yields its base URL once `/healthz` answers (the app's startup, migrations included, is
    done) and always stops it. A server that exits or never answers raises with its log's end."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    env["LOSS_SERVICE_DEVICE"] = "cpu"
    env.update(settings or {})
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited with {server.returncode}:\n{_tail(log)}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer within {start_timeout_s} s:\n{_tail(log)}")
                time.sleep(0.1)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


def _tail(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]
