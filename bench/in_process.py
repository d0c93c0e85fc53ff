"""Small requests in process: the service's ASGI app against `bench.minimal_app`, without sockets.

    python -m bench.in_process [--requests 2000] [--rounds 5] [--cases json-32x10 ...]
                               [--evict-mib 16]

Each request is one ASGI call on one event loop: the scope, a `receive` that hands over the body
at once, a `send` that keeps the status. No server, no network stack and no load generator share
the cores, so the figures are the applications' own cost per request, steadier than
`bench.small_requests` (which measures what a client sees) and the place to look for where a
small request's time goes. The two apps alternate, `--requests` sequential calls each, round
by round; printed: microseconds per request, medians of the rounds, and the service's rate as a
share of the minimal app's. The cases (bodies, paths) are `bench.small_requests`'.

Back to back, each call finds the previous one's code and data in the processor's caches; a
served request does not (the server, the network stack and the client ran in between), and
costs the service about twice as much. `--evict-mib 16` writes a buffer that large between
calls, outside the timing, so that both apps start each call from cold caches.

The service's requests carry what `loss-service serve`'s protocol puts in the scope (that the
server enforces the HTTP limits), so its body limit takes the path it takes when served.
uvicorn's own work (parsing, the proxy-headers middleware) is not counted for either app.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.small_requests import Case, cases

Message = MutableMapping[str, Any]
App = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


async def call(app: App, path: str, case: Case, extensions: Message) -> int:
    """One POST of the case's body to `app` in process; its response status."""
    headers = [(k.lower().encode(), v.encode()) for k, v in case.headers.items()]
    return await request(app, "POST", path, headers, case.body, extensions)


async def request(
    app: App,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    extensions: Message | None = None,
) -> int:
    """One ASGI HTTP request, as uvicorn would present it; the response status."""
    scope: Message = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "extensions": extensions or {},
    }
    delivered = False
    status = 0

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves: nothing more arrives
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


@dataclass(frozen=True)
class Calls:
    """How each app is called: `requests` calls per round, `rounds` rounds; with `evict`, that
    buffer is written between calls (outside the timing) to push the app out of the caches."""

    requests: int
    rounds: int
    evict: np.ndarray | None = None


async def per_request_us(
    app: App, path: str, case: Case, calls: Calls, extensions: Message | None = None
) -> float:
    """Microseconds per request over `calls.requests` sequential calls, each answering 200."""
    elapsed = 0.0
    for _ in range(calls.requests):
        if calls.evict is not None:
            np.add(calls.evict, 1, out=calls.evict)
        start = time.perf_counter()
        status = await call(app, path, case, extensions or {})
        elapsed += time.perf_counter() - start
        if status != 200:
            raise RuntimeError(f"{path} answered {status} for {case.name}")
    return elapsed / calls.requests * 1e6


class Lifespan:
    """An app's lifespan (startup on enter, shutdown on exit), as a server would run it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._replies: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _expect(self, reply: str) -> None:
        message = await self._replies.get()
        if message["type"] != reply:
            raise RuntimeError(f"lifespan: expected {reply}, got {message}")

    async def __aenter__(self) -> App:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.create_task(self.app(scope, self._events.get, self._replies.put))
        await self._events.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")
        return self.app

    async def __aexit__(self, *exc: object) -> None:
        await self._events.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        assert self._task is not None
        await self._task


async def until_ready(app: App, timeout_s: float = 300) -> None:
    """Until the service's `/readyz` answers 200: its kernels are loaded."""
    deadline = time.monotonic() + timeout_s
    while await request(app, "GET", "/readyz", [], b"") != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"/readyz did not answer 200 within {timeout_s} s")
        await asyncio.sleep(0.2)


async def compare(chosen: list[Case], calls: Calls, *, database: Path) -> None:
    from bench.minimal_app import app as minimal
    from service._compat.http_limits import HTTP_LIMITS
    from service.api.app import create_app, http_limits
    from service.config import Settings

    settings = Settings(database_url=f"sqlite:///{database}", device="cpu", log_level="warning")
    # What `loss-service serve`'s protocol tells the app: it enforces the HTTP limits itself.
    served = {HTTP_LIMITS: http_limits(settings)}
    async with Lifespan(create_app(settings)) as service, Lifespan(minimal) as yardstick:
        await until_ready(service)
        print("| case | service us/request | minimal us/request | ratio (requests/s) |")
        print("| --- | --- | --- | --- |")
        for case in chosen:
            a, b = await _one_case(case, service, served, yardstick, calls)
            print(f"| {case.name} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |", flush=True)


async def _one_case(
    case: Case, service: App, served: Message, yardstick: App, calls: Calls
) -> tuple[float, float]:
    """Microseconds per request of the service and of the minimal app: medians of the rounds."""
    warm_up = replace(calls, requests=max(1, calls.requests // 10))  # unmeasured: first compiles
    await per_request_us(service, case.service_path, case, warm_up, served)
    await per_request_us(yardstick, case.minimal_path, case, warm_up)
    ours, theirs = [], []
    for _ in range(calls.rounds):
        ours.append(await per_request_us(service, case.service_path, case, calls, served))
        theirs.append(await per_request_us(yardstick, case.minimal_path, case, calls))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="calls per app and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--cases", nargs="+", help="names, e.g. json-32x10 (default: all)")
    parser.add_argument(
        "--evict-mib",
        type=int,
        default=0,
        help="write a buffer of this many MiB between calls (cold caches, as when served)",
    )
    args = parser.parse_args()
    chosen = [c for c in cases() if not args.cases or c.name in args.cases]
    evict = np.ones(args.evict_mib << 17) if args.evict_mib else None  # float64: 2^17 a MiB
    calls = Calls(args.requests, args.rounds, evict)
    caches = f", {args.evict_mib} MiB written between calls" if evict is not None else ""
    print(
        f"# in process, {args.requests} requests per app and round, medians of {args.rounds}"
        f"{caches}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(compare(chosen, calls, database=Path(scratch) / "runs.db"))


if __name__ == "__main__":
    main()
