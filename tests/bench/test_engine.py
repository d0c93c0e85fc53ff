"""`python -m bench.engine` in small: every table gets its rows (the fused and reference paths,
and PyTorch where it is installed, ran on each)."""

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
def test_the_engine_benchmark_prints_a_row_per_shape_of_every_table() -> None:
    command = [
        sys.executable, "-m", "bench.engine", "--repeats", "1", "--shapes", "64x2,8x4x10",
        "--bce-shapes", "64x10", "--focal-shapes", "64x10", "--half-shapes", "16x20",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True,
                          text=True, timeout=540)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split(" | ")[0].removeprefix("| ") for line in done.stdout.splitlines()]
    assert [row for row in rows if row[:1].isdigit()] == [
        "64 x 2", "8 x 4 x 10 (32 rows)", "64 x 10", "64 x 10 gamma 2", "64 x 10 gamma 1.5",
        "16 x 20 bfloat16", "16 x 20 float16",
    ]  # fmt: skip
