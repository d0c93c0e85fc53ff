"""Small requests: the service against the smallest FastAPI endpoint that validates the same body.

    python -m bench.small_requests [--duration 10] [--connections 8] [--rounds 3]
                                   [--workers 1 [2 ...]] [--cases json-32x10 ...]
                                   [--setting LOSS_SERVICE_NAME=VALUE ...]

Starts `loss-service serve` and `bench.minimal_app` (the same uvicorn, httptools and uvloop, one
process each unless `--workers`) on loopback and loads each with `wrk` (Debian's `wrk` package:
`apt-get install wrk`), one thread and `--connections` connections, interleaved round by round.
Cases: cross-entropy without the gradient on 32 x 10 and 256 x 100 logits as nested JSON and as
base64 tensors, and 32 x 10 as an Open Inference Protocol binary body. Prints requests/s with
p50/p99 latency for both and the service's share of the yardstick's requests/s; quote ratios,
not times: the load generator shares the machine's cores with the servers.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.transport import serving

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    service_path: str
    minimal_path: str
    body: bytes
    headers: dict[str, str]


def cases(seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    found = []
    for rows, classes in ((32, 10), (256, 100)):
        logits = rng.standard_normal((rows, classes)).astype(np.float32)
        labels = rng.integers(0, classes, rows)
        shape = f"{rows}x{classes}"
        plain = {"logits": logits.tolist(), "labels": labels.tolist()}
        encoded = {"logits": _encoded(logits), "labels": _encoded(labels)}
        for form, body in (("json", plain), ("base64", encoded)):
            found.append(
                Case(
                    f"{form}-{shape}",
                    "/v1/losses/cross-entropy",
                    f"/{form}",
                    json.dumps(body).encode(),
                    {"Content-Type": "application/json"},
                )
            )
        if rows == 32:
            found.append(_binary_case(shape, logits, labels))
    return found


def _encoded(array: np.ndarray) -> dict[str, object]:
    data = base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}


def _binary_case(shape: str, logits: np.ndarray, labels: np.ndarray) -> Case:
    inputs = [
        {"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "array": logits},
        {"name": "labels", "shape": list(labels.shape), "datatype": "INT64", "array": labels},
    ]
    header = {
        "inputs": [
            {
                "name": item["name"],
                "shape": item["shape"],
                "datatype": item["datatype"],
                "parameters": {"binary_data_size": item["array"].nbytes},  # type: ignore[attr-defined]
            }
            for item in inputs
        ]
    }
    head = json.dumps(header).encode()
    tensors = b"".join(item["array"].tobytes() for item in inputs)  # type: ignore[attr-defined]
    return Case(
        f"oip-binary-{shape}",
        "/v2/models/cross-entropy/infer",
        "/binary",
        head + tensors,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )


@contextmanager
def minimal_server(workers: int) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.minimal_app:app",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the minimal app did not start")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]  # wrk's kinds: non-2xx, connect, read, write, timeout


def load(url: str, case: Case, *, duration_s: int, connections: int, scratch: Path) -> Load:
    """`wrk` against `url + path` with the case's body: requests/s and latency percentiles."""
    body_file = scratch / f"{case.name}.body"
    body_file.write_bytes(case.body)
    script = scratch / f"{case.name}.lua"
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in case.headers.items())
    script.write_text(
        f'wrk.method = "POST"\nlocal f = io.open("{body_file}", "rb")\n'
        f'wrk.body = f:read("*a")\nf:close()\n{headers}\n'
    )
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = done.stdout
    errors = {kind: int(n) for kind, n in re.findall(r"(connect|read|write|timeout) (\d+)", out)}
    errors.update(("non-2xx", int(n)) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    return Load(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_percentile(out, "50"),
        p99_ms=_percentile(out, "99"),
        errors=errors,
    )


def _percentile(out: str, which: str) -> float:
    value, unit = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per case")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--cases", nargs="+", help="names, e.g. json-32x10 (default: all)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="LOSS_SERVICE_NAME=VALUE",
        help="a server setting (repeatable), e.g. LOSS_SERVICE_INLINE_COMPUTE_BYTES=0",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench.small_requests needs wrk (Debian: apt-get install wrk)")
    chosen = [c for c in cases() if not args.cases or c.name in args.cases]
    print(
        f"# {os.cpu_count()} CPUs; wrk -t1 -c{args.connections} -d{args.duration:g}s, medians "
        f"of {args.rounds} interleaved rounds"
    )
    print(
        "| case | workers | service req/s | p50 / p99 ms | minimal req/s | p50 / p99 ms | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for workers in args.workers:
            settings = {"LOSS_SERVICE_WORKERS": str(workers), "LOSS_SERVICE_LOG_LEVEL": "warning"}
            settings.update(item.split("=", 1) for item in args.setting)
            with serving(settings) as service, minimal_server(workers) as minimal:
                ready(service, workers)
                for case in chosen:
                    ours, theirs = [], []
                    for _ in range(args.rounds):
                        for url, path, results in (
                            (service, case.service_path, ours),
                            (minimal, case.minimal_path, theirs),
                        ):
                            results.append(
                                load(
                                    url + path,
                                    case,
                                    duration_s=args.duration,
                                    connections=args.connections,
                                    scratch=Path(scratch),
                                )
                            )
                    a, b = _median(ours), _median(theirs)
                    print(
                        f"| {case.name} | {workers} | {a.requests_per_s:,.0f} | "
                        f"{a.p50_ms:.2f} / {a.p99_ms:.2f} | {b.requests_per_s:,.0f} | "
                        f"{b.p50_ms:.2f} / {b.p99_ms:.2f} | "
                        f"{a.requests_per_s / b.requests_per_s:.2f}x |",
                        flush=True,
                    )
                    if any(a.errors.values()) or any(b.errors.values()):
                        # timeouts: a request took over wrk's 2 s (a kernel compiling, say)
                        print(f"#   errors: service {_kinds(a)}, minimal {_kinds(b)}")


def ready(url: str, workers: int, timeout_s: float = 300) -> None:
    """Until `/readyz` says 200 on many fresh connections in a row: each worker process loads
    the kernels on its own (a request before that waits for them, and loads measured then
    measured the start, not the service)."""
    deadline, in_a_row = time.monotonic() + timeout_s, 0
    while in_a_row < 8 * workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout_s} s")
        ok = httpx.get(f"{url}/readyz", timeout=5, trust_env=False).status_code == 200
        in_a_row = in_a_row + 1 if ok else 0
        if not ok:
            time.sleep(0.2)


def _median(loads: list[Load]) -> Load:
    errors = sum((Counter(x.errors) for x in loads), Counter())
    return Load(
        requests_per_s=statistics.median(x.requests_per_s for x in loads),
        p50_ms=statistics.median(x.p50_ms for x in loads),
        p99_ms=statistics.median(x.p99_ms for x in loads),
        errors=dict(errors),
    )


def _kinds(load: Load) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in load.errors.items() if n) or "none"


if __name__ == "__main__":
    main()
