"""`/docs` (Swagger UI) and `/redoc`, served from files shipped in the package: no CDN; `/`
redirects to `/docs`.

The files under `static/` are the npm packages `swagger-ui-dist` and `redoc`, byte for byte
(`scripts/update_docs_assets.sh` fetches them; `static/VERSIONS` says which). The pages are
FastAPI's own, pointed at those files, with Swagger UI's online validator badge and ReDoc's Google
Fonts turned off, so that a browser with no network sees the same pages.

Both pages carry a Content-Security-Policy that keeps the browser on the service. ReDoc 2's
sidebar footer draws the Redocly logo from Redocly's CDN whatever its options say, which the
policy blocks with an error in the browser's console: `/redoc` is served a copy of the bundle
with that one address replaced by an empty inline image (`redoc_bundle`), so that it asks for
nothing outside the service.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"
REDOC_BUNDLE_PATH = "/redoc/redoc.standalone.js"
REDOC_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"

router = APIRouter(include_in_schema=False)

# 'unsafe-inline' scripts: Swagger UI's page starts it from an inline script (FastAPI's page);
# inline styles: both UIs style with them; blob: workers: ReDoc's search index.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ]
)


def root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (`--root-path`), so the pages' links work there."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


@router.get("/")
async def root(request: Request) -> RedirectResponse:
    """The address alone, typed into a browser, leads to the docs. Left out of the OpenAPI
    document (as the pages are): a client has nothing to call there."""
    return RedirectResponse(f"{root_path(request)}/docs", status_code=307)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = root_path(request)
    assets = f"{root}{STATIC_PATH}/swagger-ui"
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        # null: no badge fetched from validator.swagger.io
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = root_path(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{REDOC_BUNDLE_PATH}",
        redoc_favicon_url=f"{root}{STATIC_PATH}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@functools.cache
def redoc_bundle() -> bytes:
    """ReDoc's bundle as published, less its one request outside the service (the logo)."""
    bundle = (STATIC_DIR / "redoc" / "redoc.standalone.js").read_bytes()
    if bundle.count(REDOC_LOGO_URL) != 1:  # another ReDoc version: look at its footer again
        raise RuntimeError(f"ReDoc's bundle does not name {REDOC_LOGO_URL.decode()} once")
    return bundle.replace(REDOC_LOGO_URL, EMPTY_IMAGE)


@router.get(REDOC_BUNDLE_PATH)
async def redoc_script() -> Response:
    return Response(redoc_bundle(), media_type="text/javascript")


def install(app: FastAPI) -> None:
    """The two pages and the static files they load (create the app with `docs_url=None`)."""
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
