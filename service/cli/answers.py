"""How the file commands write their answer: the API's JSON, or NumPy files.

`--out FILE.json` (or stdout) gets the bytes the HTTP route would send; `--out FILE.npz` the
answer's arrays and its scalars (as 0-d arrays); `--out FILE.npy` its one array, with the
scalars printed as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from service.codecs import body_pieces
from service.core.responses import render_json


def wants_arrays(out: Path | None) -> bool:
    """Whether `--out` names NumPy files (the answer's tensors are then asked for as JSON
    arrays, which are the arrays as they are)."""
    return out is not None and out.suffix.lower() in (".npz", ".npy")


def write(
    answer: BaseModel,
    out: Path | None,
    arrays: Mapping[str, object | None],
    fail: Callable[[str], int],
) -> int:
    """Write `answer` to `out` (stdout when None); `arrays` are its tensor fields by the names
    they take in a .npz, the other fields are its scalars."""
    if not wants_arrays(out):
        text = b"".join(body_pieces(render_json(answer))) + b"\n"
        if out is None:
            sys.stdout.buffer.write(text)
            sys.stdout.flush()
        else:
            out.write_bytes(text)
        return 0
    assert out is not None
    present = {name: np.asarray(value) for name, value in arrays.items() if value is not None}
    tensor_fields = {name.split(".")[0] for name in arrays}
    scalars = {
        key: value
        for key, value in answer.model_dump(exclude=tensor_fields).items()
        if value is not None
    }
    if out.suffix.lower() == ".npz":
        contents: dict[str, Any] = {**present, **scalars}
        np.savez(out, **contents)
        return 0
    if len(present) != 1:
        names = ", ".join(present) or "none"
        return fail(f"--out {out}: a .npy holds one array; this answer has {names}: use a .npz")
    np.save(out, next(iter(present.values())))
    print(json.dumps(scalars))
    return 0
