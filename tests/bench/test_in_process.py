"""`python -m bench.in_process` in small: both apps answer every case in process, and the table
has a row per case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# bench.small_requests' cases (not imported: the bench modules are outside the type check)
CASES = ["json-32x10", "base64-32x10", "oip-binary-32x10", "json-256x100", "base64-256x100"]


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.timeout(600)
def test_the_in_process_benchmark_answers_every_case() -> None:
    command = [sys.executable, "-m", "bench.in_process", "--requests", "3", "--rounds", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    # A case that answers anything but 200 stops the run with its status.
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == CASES
