"""End to end over loopback: one cross-entropy request with its gradient, per transport.

    python -m bench.transport [--rows 8192] [--classes 1000] [--repeats 5]

Starts `loss-service serve` on a free loopback port and times, interleaved, the whole round trip
as a client sees it (encode, send, compute, receive, decode the gradient) for nested JSON lists,
base64 tensors in JSON, and the Open Inference Protocol's binary tensors; beside them, the same
computation in this process with the engine alone and with PyTorch (when importable). Prints
medians and ratios; quote ratios, not times.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import orjson
import pybase64

from service.engine import cross_entropy, reduce_loss


@contextmanager
def serving() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    env["LOSS_SERVICE_DEVICE"] = "cpu"
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the server did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _json_lists(client: httpx.Client, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    body = orjson.dumps(
        {"logits": logits, "labels": labels, "return_grad": True},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    response = client.post(
        "/v1/losses/cross-entropy", content=body, headers={"content-type": "application/json"}
    )
    return np.asarray(orjson.loads(response.content)["grad"], dtype=np.float32)


def _encoded(array: np.ndarray) -> dict[str, object]:
    # The client encodes as the service does (pybase64, SIMD): the standard library's base64
    # would add ~0.3 s to this row, on the client.
    data = pybase64.b64encode_as_string(np.ascontiguousarray(array))
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def _base64(client: httpx.Client, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    body = orjson.dumps(
        {"logits": _encoded(logits), "labels": _encoded(labels), "return_grad": True}
    )
    response = client.post(
        "/v1/losses/cross-entropy", content=body, headers={"content-type": "application/json"}
    )
    grad = orjson.loads(response.content)["grad"]
    return np.frombuffer(pybase64.b64decode(grad["data"]), np.float32).reshape(grad["shape"])


def _oip_binary(client: httpx.Client, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "logits",
                    "shape": list(logits.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": logits.nbytes},
                },
                {
                    "name": "labels",
                    "shape": list(labels.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": labels.nbytes},
                },
            ],
            "outputs": [{"name": "grad", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = client.post(
        "/v2/models/cross-entropy/infer",
        content=b"".join([header, logits.tobytes(), labels.tobytes()]),
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
        },
    )
    length = int(response.headers["inference-header-content-length"])
    shape = json.loads(response.content[:length])["outputs"][0]["shape"]
    return np.frombuffer(response.content[length:], np.float32).reshape(shape)


def _torch(logits: np.ndarray, labels: np.ndarray) -> Callable[[], object] | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    x, y = torch.from_numpy(logits), torch.from_numpy(labels)

    def step() -> object:
        leaf = x.detach().requires_grad_()
        F.cross_entropy(leaf, y).backward()
        return leaf.grad

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    labels = rng.integers(0, args.classes, size=args.rows)
    expected = reduce_loss(cross_entropy(logits, labels), "mean").grads["logits"]

    with serving() as url, httpx.Client(base_url=url, timeout=120) as client:
        runs: dict[str, Callable[[], object]] = {
            "engine in process": lambda: reduce_loss(cross_entropy(logits, labels), "mean"),
            "nested JSON": lambda: _json_lists(client, logits, labels),
            "base64 JSON": lambda: _base64(client, logits, labels),
            "OIP binary": lambda: _oip_binary(client, logits, labels),
        }
        torch_step = _torch(logits, labels)
        if torch_step is not None:
            runs["PyTorch in process"] = torch_step
        for name in ("nested JSON", "base64 JSON", "OIP binary"):  # the answers are right
            np.testing.assert_allclose(runs[name](), expected, rtol=1e-6, atol=1e-9)  # type: ignore[arg-type]
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    engine = medians["engine in process"]
    torch_time = medians.get("PyTorch in process")
    print(f"{args.rows} x {args.classes} float32, value + gradient, medians of {args.repeats}")
    print("| path | ms | / engine | / PyTorch |")
    print("|---|---|---|---|")
    for name, value in medians.items():
        versus_torch = f"{value / torch_time:.2f}x" if torch_time else "-"
        print(f"| {name} | {value * 1e3:.1f} | {value / engine:.2f}x | {versus_torch} |")


if __name__ == "__main__":
    main()
