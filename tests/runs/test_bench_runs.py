"""`python -m bench.runs` end to end, in small: one client, a few batches, both databases (the
PostgreSQL one skipped with its reason where no server answers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.timeout(600)
def test_the_runs_benchmark_runs_and_prints_its_tables() -> None:
    command = [
        *(sys.executable, "-m", "bench.runs", "--clients", "1", "--seconds", "0.5"),
        *("--repeats", "1", "--rows", "8", "--classes", "5", "--fill", "20"),
        *("--fill-clients", "2", "--gets", "3", "--storage-batches", "1"),
    ]
    if "LOSS_SERVICE_TEST_POSTGRES_URL" in os.environ:  # the server the suite's tests use
        command += ["--postgres-url", os.environ["LOSS_SERVICE_TEST_POSTGRES_URL"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("| 1 | ") for line in lines), done.stdout  # the throughput row
    assert any(line.startswith("| SQLite | 20 | ") for line in lines), done.stdout  # the report
    assert any(line.startswith("| SQLite | 1000 | ") for line in lines), done.stdout  # storage
    postgres = any(line.startswith("| PostgreSQL | 20 | ") for line in lines)
    assert postgres or "PostgreSQL: skipped: no PostgreSQL server" in done.stdout, done.stdout
