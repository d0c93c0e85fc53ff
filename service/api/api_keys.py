"""API keys, checked before anything of a request's body is read.

`require_api_key` (a route dependency) marks the routes whose OpenAPI operations declare the key
schemes, and checks the key, but FastAPI solves dependencies only after it has read and parsed
the body: a client without a key could have 500 MB read and parsed before its 401, and was told
`100 Continue` first. `ApiKeyMiddleware` refuses such a request before the app sees it: it
never calls `receive()`, so uvicorn neither reads the body for it nor answers `100 Continue`.

The routes it guards are the ones that declare `require_api_key`, found in the app's routes
once: the OpenAPI document and the check cannot disagree. Paths that match no protected route
(health, metrics, the documentation, unknown paths) go on to the app, which reads no body there.

A route of a `KeyCheckedByMiddleware` class requires a key too, and the middleware is its only
check, for every method: the routes on the path of small requests (`/v1/losses`), where solving
the dependency on every request cost 5% of the answer's time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import fastapi.routing
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import problem_response
from service.errors import Unauthorized

# Methods whose routes take no body: a request of theirs that sends none goes on to the route,
# whose own dependency refuses it in the route's form (an HTML page for the run pages).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})
MISSING_KEY = "send a configured API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`"


class KeyCheckedByMiddleware:
    """A route class mixin: the route requires an API key, which `ApiKeyMiddleware` checks for
    every request to it, bodiless ones included (no `require_api_key` dependency)."""

    key_checked_by_middleware: ClassVar[bool] = True


def key_checked_by_middleware(route: object) -> bool:
    """Whether `route` (or the route a FastAPI `RouteContext` stands for) is of a
    `KeyCheckedByMiddleware` class."""
    original = getattr(route, "original_route", route)
    return bool(getattr(original, "key_checked_by_middleware", False))


def key_matches(presented: Iterable[str | None], keys: Sequence[str]) -> bool:
    """Whether one of the `presented` credentials is one of `keys`.

    Bytes, not str: compare_digest refuses non-ASCII text, which any client can send. Each
    candidate is compared with every key: the time taken does not tell which prefix matched.
    """
    matches = [
        hmac.compare_digest(candidate.encode(), key.encode())
        for candidate in presented
        if candidate
        for key in keys
    ]
    return any(matches)


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The credentials of `Authorization: Bearer <key>` and `X-API-Key: <key>`, read as
    Starlette and FastAPI's security classes read them (latin-1, the scheme in any case)."""
    found = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                found.append(credentials)
        elif name == b"x-api-key":
            found.append(value.decode("latin-1"))
    return found


def _declares_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or name == b"expect":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False


def effective_routes(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every route with the dependencies it runs. FastAPI from 0.165 keeps an included router as
    one entry and resolves its routes lazily (`iter_route_contexts` lists them, each with its
    router's dependencies); before, `include_router` copied them into the list."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(iterate(routes)) if iterate is not None else list(routes)


class ApiKeyMiddleware:
    """401 for a request to a route that requires a key when it carries none of `api_keys`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Sequence[str],
        routes: Callable[[], Sequence[BaseRoute]],
        requires_key: Callable[[Any], bool],
    ) -> None:
        self.app = app
        self.api_keys = api_keys
        self._routes = routes
        self._requires_key = requires_key
        self._protected: list[Any] | None = None

    def _is_protected(self, scope: Scope, *, bodiless: bool) -> bool:
        """Whether the request's route requires a key to be checked here: any protected one,
        or, for a request without a body, one whose key only this middleware checks."""
        if self._protected is None:  # every route is in place by the first request
            routes = effective_routes(self._routes())
            self._protected = [route for route in routes if self._requires_key(route)]
        # PARTIAL: the path of a protected route with another method (a 405 to come)
        return any(
            route.matches(scope)[0] != Match.NONE
            for route in self._protected
            if not bodiless or key_checked_by_middleware(route)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or key_matches(presented_keys(scope["headers"]), self.api_keys)
            or not self._is_protected(
                scope,
                bodiless=scope["method"] in _BODILESS and not _declares_body(scope["headers"]),
            )
        ):
            await self.app(scope, receive, send)
            return
        headers = {"WWW-Authenticate": "Bearer"}
        if any(
            name == b"expect" and value.lower() == b"100-continue"
            for name, value in scope["headers"]
        ):
            # The client waits for a 100 that will not come, and will not send its body: the
            # connection cannot carry another request.
            headers["Connection"] = "close"
        response = problem_response(
            401,
            detail=MISSING_KEY,
            slug=Unauthorized.slug,
            title=Unauthorized.title,
            headers=headers,
            path=scope.get("path", ""),
        )
        await response(scope, receive, send)
