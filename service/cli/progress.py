"""The progress line the file commands draw on stderr."""

from __future__ import annotations

import sys
import time


class ProgressLine:
    """`cross-entropy:  40% (393216/983040 rows, 3 chunks, 2.1 s)`, redrawn on stderr."""

    def __init__(self, label: str, unit: str = "chunk", units: str = "chunks") -> None:
        self.label = label
        self.unit, self.units = unit, units
        self.start = time.monotonic()
        self.chunks = 0
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        self.chunks += 1
        now = time.monotonic()
        if done < total and now - self.last < 0.1:  # redrawn at most ten times a second
            return
        self.last = now
        percent = 100 * done // max(total, 1)
        elapsed = now - self.start
        sys.stderr.write(
            f"\r{self.label}: {percent:3d}% ({done}/{total} rows, "
            f"{self.chunks} {self.unit if self.chunks == 1 else self.units}, {elapsed:.1f} s)"
        )
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
