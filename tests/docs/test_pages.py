"""README.md is an entry point that lists every endpoint; docs/ pages link to what exists and
cover every setting."""

from __future__ import annotations

import re

from service.api import create_app
from service.config import Settings
from service.core.registry import LOSSES
from tests.docs.blocks import PAGES, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
# Pages the app serves outside its OpenAPI document.
PAGES_OUTSIDE_OPENAPI = {("GET", p) for p in ("/runs", "/runs/{run_id}", "/docs", "/redoc")} | {
    ("GET", "/openapi.json")
}


def _readme_endpoints() -> set[tuple[str, str]]:
    found = set()
    for row in re.findall(r"^\| (GET|POST|PUT|DELETE) \| (.*?) \|", README, re.MULTILINE):
        method, paths = row
        found |= {(method, path) for path in re.findall(r"`(/[^`]*)`", paths)}
    return found


def _as_in_readme(path: str) -> str:
    path = path.replace("{model_name}", "{name}").replace("{model_version}", "1")
    return re.sub(r"^/v1/losses/[a-z0-9-]+$", "/v1/losses/{name}", path)


def test_the_readme_lists_every_endpoint() -> None:
    document = create_app(Settings(device="cpu")).openapi()
    served = {
        (method.upper(), _as_in_readme(path))
        for path, operations in document["paths"].items()
        for method in operations
    }
    listed = _readme_endpoints()
    assert served | PAGES_OUTSIDE_OPENAPI <= listed, sorted(served | PAGES_OUTSIDE_OPENAPI - listed)
    assert listed <= served | PAGES_OUTSIDE_OPENAPI, sorted(listed - served - PAGES_OUTSIDE_OPENAPI)
    for spec in LOSSES:
        assert f"`{spec.name}`" in README, spec.name


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 200


def test_links_lead_to_files_that_exist() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_every_setting_is_documented() -> None:
    settings = (ROOT / "docs" / "limits.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`LOSS_SERVICE_{name.upper()}`" in settings, name


def test_the_pages_cite_only_the_repository() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for word in ("DESIGN.md", "PERF-NOTES", "STYLE.md", "/home/", "/work/"):
            assert word not in text, f"{page.name}: {word}"


def test_named_repository_files_exist() -> None:
    """A file the pages name in backticks (a test module, a script, a fixture) is where they say:
    moving one without its mention fails here."""
    for page in [*PAGES, ROOT / "SECURITY.md"]:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"`((?:tests|scripts|bench|service|deploy)/[\w./-]+\.\w+)`", text):
            assert (ROOT / path).exists(), f"{page.name}: {path}"
