"""`/docs` and `/redoc` load only files the package ships (service/api/static/), no CDN."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from service.api.docs import EMPTY_IMAGE, REDOC_BUNDLE_PATH, REDOC_LOGO_URL, STATIC_DIR

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
ASSETS = {
    "swagger-ui/swagger-ui-bundle.js": "javascript",
    "swagger-ui/swagger-ui.css": "text/css",
    "swagger-ui/favicon-32x32.png": "image/png",
    "redoc/redoc.standalone.js": "javascript",
}
URL = re.compile(r"""(?:src|href|url)\s*[:=]\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_pages_refer_only_to_local_urls(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = URL.findall(response.text)
    assert urls, response.text
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        assert (await client.get(url)).status_code == 200, url
    assert "http://" not in response.text
    assert "https://" not in response.text


@pytest.mark.parametrize(("asset", "media_type"), ASSETS.items())
async def test_assets_are_served(client: httpx.AsyncClient, asset: str, media_type: str) -> None:
    response = await client.get(f"/static/{asset}")
    assert response.status_code == 200
    assert media_type in response.headers["content-type"]
    assert response.content == (STATIC_DIR / asset).read_bytes()


async def test_pages_follow_the_root_path(make_client: object) -> None:
    """Behind a proxy that serves the app under a prefix, the pages' links carry it."""
    from service.api import create_app
    from service.config import Settings

    app = create_app(Settings(device="cpu"))
    transport = httpx.ASGITransport(app=app, root_path="/loss")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        page = (await client.get("/loss/docs")).text
    assert "/loss/static/swagger-ui/swagger-ui-bundle.js" in page
    assert "'/loss/openapi.json'" in page


async def test_no_asset_from_outside_the_static_folder(client: httpx.AsyncClient) -> None:
    for path in ("/static/../docs.py", "/static/%2e%2e/docs.py", "/static/"):
        assert (await client.get(path)).status_code == 404, path


def test_versions_note_lists_what_is_shipped() -> None:
    note = (STATIC_DIR / "VERSIONS").read_text(encoding="utf-8")
    assert re.search(r"^swagger-ui-dist \d+\.\d+\.\d+ ", note, re.MULTILINE)
    assert re.search(r"^redoc \d+\.\d+\.\d+ ", note, re.MULTILINE)
    shipped = {path.relative_to(STATIC_DIR).as_posix() for path in STATIC_DIR.rglob("*")}
    assert set(ASSETS) <= shipped
    assert {"swagger-ui/LICENSE", "redoc/LICENSE"} <= shipped


def test_package_data_includes_the_assets() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["service.api"]
    shipped = [p.relative_to(STATIC_DIR.parent) for p in STATIC_DIR.rglob("*") if p.is_file()]
    for path in shipped:
        assert any(path.match(pattern) for pattern in patterns), path


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_ships_the_assets(tmp_path: Path) -> None:
    """The wheel `pip` builds from this tree (as the image does) carries the docs' files."""
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path, ROOT],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    (wheel,) = tmp_path.glob("loss_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in (*ASSETS, "VERSIONS"):
        assert f"service/api/static/{asset}" in names, asset


async def test_redoc_is_served_without_its_cdn_logo(client: httpx.AsyncClient) -> None:
    """ReDoc's bundle draws a logo from Redocly's CDN; /redoc gets it with that address inlined."""
    assert REDOC_BUNDLE_PATH in (await client.get("/redoc")).text
    response = await client.get(REDOC_BUNDLE_PATH)
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    shipped = (STATIC_DIR / "redoc" / "redoc.standalone.js").read_bytes()
    assert b"https://cdn.redoc.ly/" in shipped
    assert b"https://cdn.redoc.ly/" not in response.content
    assert response.content.replace(EMPTY_IMAGE, REDOC_LOGO_URL) == shipped


async def test_the_root_redirects_to_the_docs(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"
    assert "/" not in (await client.get("/openapi.json")).json()["paths"]  # pages are left out
    from service.api import create_app
    from service.config import Settings

    transport = httpx.ASGITransport(app=create_app(Settings(device="cpu")), root_path="/loss")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as proxied:
        assert (await proxied.get("/loss/")).headers["location"] == "/loss/docs"
