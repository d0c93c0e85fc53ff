"""Reading the recorded PyTorch reference values (tests/fixtures/torch_reference.json).

The file is written by scripts/make_torch_fixtures.py; JSON has no NaN or infinity, so those
values are stored as the strings "nan" and "-inf".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def load_cases(name: str = "torch_reference.json") -> list[dict[str, Any]]:
    with (FIXTURES / name).open() as file:
        cases: list[dict[str, Any]] = json.load(file)["cases"]
    return cases


def _number(value: object) -> object:
    if isinstance(value, list):
        return [_number(item) for item in value]
    if value == "nan":
        return np.nan
    if value == "-inf":
        return -np.inf
    return value


def as_array(value: object, dtype: Any) -> np.ndarray:
    return np.array(_number(value), dtype=dtype)
