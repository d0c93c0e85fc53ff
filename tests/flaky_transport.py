"""httpx transports that fail on purpose, in front of a real one: what a client meets between it
and the service (a proxy without an upstream, a refused connect, an answer lost on the way).

Each request whose method is in `methods` takes the next fault of the plan (None: none):

- `"refuse"`: a connect error; nothing reaches the service;
- `"502"`, `"503"`, `"504"`: the answer of a proxy in front of the service (with
  `Retry-After: 0`); nothing reaches it;
- `"drop"`: the service gets the request and answers, and the connection drops before the
  answer is read: the client cannot know the work was done;
- `"500"`: the service's answer replaced by a 500 after it did the work (a server that fails).

`reached` counts the requests of those methods that reached the service.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

Fault = str | None


class _Plan:
    def __init__(self, faults: Iterable[Fault], methods: Iterable[str]) -> None:
        self.faults = list(faults)
        self.methods = frozenset(methods)
        self.reached = 0
        self.seen = 0

    def next(self, request: httpx.Request) -> Fault:
        if request.method not in self.methods:
            return None
        self.seen += 1
        return self.faults.pop(0) if self.faults else None

    def before(self, request: httpx.Request, fault: Fault) -> httpx.Response | None:
        """What stands in for the service, or None to send the request on."""
        if fault == "refuse":
            raise httpx.ConnectError("injected: connection refused", request=request)
        if fault in ("502", "503", "504"):
            problem = {"type": "about:blank", "title": "Injected", "status": int(fault)}
            return httpx.Response(
                int(fault), headers={"Retry-After": "0"}, json={**problem, "detail": "injected"}
            )
        if request.method in self.methods:
            self.reached += 1
        return None

    @staticmethod
    def after(request: httpx.Request, fault: Fault) -> httpx.Response | None:
        if fault == "drop":
            raise httpx.RemoteProtocolError("injected: connection dropped", request=request)
        if fault == "500":
            return httpx.Response(500, json={"title": "Injected", "detail": "the server failed"})
        return None


class FlakyTransport(httpx.BaseTransport):
    def __init__(
        self, inner: httpx.BaseTransport, faults: Iterable[Fault], methods: Iterable[str] = ("PUT",)
    ) -> None:
        self.inner = inner
        self.plan = _Plan(faults, methods)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.next(request)
        stand_in = self.plan.before(request, fault)
        if stand_in is not None:
            return stand_in
        response = self.inner.handle_request(request)
        if fault in ("drop", "500"):
            response.read()
            response.close()
        return self.plan.after(request, fault) or response

    def close(self) -> None:
        self.inner.close()


class AsyncFlakyTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        faults: Iterable[Fault],
        methods: Iterable[str] = ("PUT",),
    ) -> None:
        self.inner = inner
        self.plan = _Plan(faults, methods)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.plan.next(request)
        stand_in = self.plan.before(request, fault)
        if stand_in is not None:
            return stand_in
        response = await self.inner.handle_async_request(request)
        if fault in ("drop", "500"):
            await response.aread()
            await response.aclose()
        return self.plan.after(request, fault) or response

    async def aclose(self) -> None:
        await self.inner.aclose()
