"""End to end over loopback: one cross-entropy request with its gradient, per transport.

    python -m bench.transport [--rows 8192] [--classes 1000] [--repeats 5]
                              [--setting LOSS_SERVICE_RETAIN_FREED_BYTES=0 ...]

Starts `loss-service serve` on a free loopback port and times, interleaved, the whole round trip
as a client sees it (encode, send, compute, receive, decode the gradient) for nested JSON lists,
base64 tensors in JSON, and the Open Inference Protocol's binary tensors; beside them, the same
computation in this process with the engine alone and with PyTorch (when importable). Prints
medians and ratios; quote ratios, not times.

The base64 and OIP rows go through the project's own client (`service.client.LossClient`), which
streams request bodies in pieces and reads answers into one buffer; the nested JSON row writes
and reads its lists with orjson over plain httpx, the fastest a client can do that form.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx
import numpy as np
import orjson

from bench.engine import torch_step
from bench.server import serving
from service.client import LossClient
from service.engine import cross_entropy, reduce_loss


def _json_lists(client: httpx.Client, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    body = orjson.dumps(
        {"logits": logits, "labels": labels, "return_grad": True},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    response = client.post(
        "/v1/losses/cross-entropy", content=body, headers={"content-type": "application/json"}
    )
    return np.asarray(orjson.loads(response.content)["grad"], dtype=np.float32)


def _base64(client: LossClient, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    result = client.loss("cross-entropy", logits=logits, labels=labels, return_grad=True)
    assert result.grad is not None
    return result.grad


def _oip_binary(client: LossClient, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    result = client.infer("cross-entropy", logits=logits, labels=labels, return_grad=True)
    assert result.grad is not None
    return result.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="LOSS_SERVICE_NAME=VALUE",
        help="a server setting (repeatable), e.g. LOSS_SERVICE_RETAIN_FREED_BYTES=0",
    )
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((args.rows, args.classes), dtype=np.float32)
    labels = rng.integers(0, args.classes, size=args.rows)
    expected = reduce_loss(cross_entropy(logits, labels), "mean").grads["logits"]

    with (
        serving(settings) as url,
        httpx.Client(base_url=url, timeout=120) as http,
        LossClient(url, timeout=120) as client,
    ):
        runs: dict[str, Callable[[], object]] = {
            "engine in process": lambda: reduce_loss(cross_entropy(logits, labels), "mean"),
            "nested JSON": lambda: _json_lists(http, logits, labels),
            "base64 JSON": lambda: _base64(client, logits, labels),
            "OIP binary": lambda: _oip_binary(client, logits, labels),
        }
        torch = torch_step("cross_entropy", logits, labels)
        if torch is not None:
            runs["PyTorch in process"] = torch
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
