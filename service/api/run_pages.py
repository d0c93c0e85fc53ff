"""`GET /runs` and `GET /runs/{id}`: evaluation runs as pages for people (`service.api.run_html`).

The pages show what `GET /v1/runs` and `GET /v1/runs/{id}` answer, so they take the same API
keys, checked by the same dependency (`Authorization: Bearer` or `X-API-Key`). A browser sends
neither header by itself: where keys are configured, the pages are for browsers behind a proxy
(or with an extension) that adds the header, and answer 401 with a page that says so otherwise.
Keys are never read from the URL, which access logs, browser history and Referer headers keep.

An error is the API's problem (the same status, headers and words: the app's own handler makes
it) shown as a page. Like `/docs`, the pages are not operations of the API: they stay out of the
OpenAPI document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from service.api.deps import ComputeDep, DrawDep, RunStoreDep, require_api_key
from service.api.docs import root_path
from service.api.routes.runs import RunId
from service.api.run_html import error_page, run_page, runs_page
from service.core.calibration import draw_diagram
from service.core.runs import usecases
from service.errors import LossServiceError

# Nothing runs and nothing loads: the CSS is inline (the diagram's SVG styles with attributes),
# the favicon a data: URL so that the browser asks the service for none.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
_PASSED_ON = ("retry-after", "www-authenticate")
_KEY_ADVICE = (
    "<p>This service is configured with API keys, and its run pages hold the same data as "
    "<code>/v1/runs</code>: they need a key too, sent as the <code>X-API-Key</code> header (or "
    "<code>Authorization: Bearer</code>). A browser sends it when a proxy in front of the "
    "service, or a browser extension that sets request headers, adds it. Keys are not taken "
    "from the URL.</p>"
)


class PageRoute(APIRoute):
    """A page's errors, its dependencies' included, answer as a page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except (LossServiceError, RequestValidationError) as error:
                return await _error(request, error)

        return page_handler


router = APIRouter(
    route_class=PageRoute, include_in_schema=False, dependencies=[Depends(require_api_key)]
)


@router.get("/runs", name="runs_page")
async def list_page(
    request: Request,
    compute: ComputeDep,
    store: RunStoreDep,
    limit: Annotated[int, Query(ge=1, le=usecases.MAX_PAGE)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> HTMLResponse:
    runs = await compute.run_io(usecases.list_runs, store, limit, cursor)
    return _page(runs_page(runs, root=root_path(request), limit=limit, cursor=cursor))


@router.get("/runs/{run_id}", name="run_page")
async def report_page(
    request: Request, run_id: RunId, compute: ComputeDep, draw: DrawDep, store: RunStoreDep
) -> HTMLResponse:
    run, metrics = await compute.run_io(usecases.run_with_metrics, store, run_id)
    diagram = None
    # Drawn in the drawing slot's queue, as the diagram routes draw; past max_diagram_bins
    # the page shows the tables without the figure.
    if metrics is not None and metrics.n_bins <= compute.ctx.settings.max_diagram_bins:
        diagram = (await draw.run(draw_diagram, metrics, "svg")).decode()
    return _page(run_page(run, diagram, root=root_path(request)))


def _page(text: str, status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    page = HTMLResponse(text, status_code=status_code, headers=headers)
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Cache-Control"] = "no-store"  # a run changes with every batch
    return page


async def _error(request: Request, error: Exception) -> HTMLResponse:
    handlers = request.app.exception_handlers
    handler = next(handlers[cls] for cls in type(error).__mro__ if cls in handlers)
    problem: Response = await handler(request, error)
    body = json.loads(bytes(problem.body))
    status = problem.status_code
    text = error_page(
        status,
        str(body["title"]),
        str(body["detail"]),
        root=root_path(request),
        advice=_KEY_ADVICE if status == 401 else "",
    )
    passed_on = {name: problem.headers[name] for name in _PASSED_ON if name in problem.headers}
    return _page(text, status, passed_on)
