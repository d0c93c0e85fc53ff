"""The smallest FastAPI service doing what the loss service's small requests must do: validate
the same body to the same depth and answer. It is the yardstick of `bench.small_requests`.

    uvicorn bench.minimal_app:app --http httptools --loop uvloop

- `POST /json`: `logits` as `list[list[float]]`, `labels` as `list[int]` (pydantic walks every
  number), answering a constant;
- `POST /base64`: `logits` and `labels` as encoded tensors (`dtype`, `shape`, base64 `data`)
  turned into NumPy arrays;
- `POST /binary`: an Open Inference Protocol binary body: its JSON header parsed, the tensors
  viewed with `np.frombuffer`.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel

app = FastAPI()
ANSWER = {"name": "cross-entropy", "loss": 1.0, "n_valid": 1, "weight_sum": 1.0}


class JsonBatch(BaseModel):
    logits: list[list[float]]
    labels: list[int]


class EncodedTensor(BaseModel):
    dtype: str
    shape: list[int]
    data: str

    def array(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.data), dtype=self.dtype).reshape(self.shape)


class EncodedBatch(BaseModel):
    logits: EncodedTensor
    labels: EncodedTensor


@app.post("/json")
async def json_body(body: JsonBatch) -> dict[str, Any]:
    return ANSWER


@app.post("/base64")
async def base64_body(body: EncodedBatch) -> dict[str, Any]:
    body.logits.array(), body.labels.array()
    return ANSWER


@app.post("/binary")
async def binary_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    length = int(request.headers["inference-header-content-length"])
    header = orjson.loads(raw[:length])
    offset = length
    for item in header["inputs"]:
        size = item["parameters"]["binary_data_size"]
        np.frombuffer(raw[offset : offset + size], dtype=np.uint8)
        offset += size
    return ANSWER
