"""The offline docs in a real headless Chromium: /docs runs a cross-entropy request from the page.

The browser is Debian's `chromium` package, driven through Playwright's Python package with
`executable_path` (Playwright's own browser download is never used). When it is missing, the
module installs it with `scripts/install_browser.sh` (apt-get, as root), with `libatomic1`, which
Playwright's driver needs and a minimal Debian lacks; the tests are skipped, with the script's
own words as the reason, only where that cannot be done. Every request the pages make is checked
to stay on the service: a request elsewhere (a CDN) is aborted and fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from service.api.examples import LOSS_BODIES
from tests.live_server import running_server

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install_browser.sh"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)  # the pages render slowly on a busy 2-core machine

# apt-get may take minutes the first time.
pytestmark = [pytest.mark.timeout(900), pytest.mark.system, pytest.mark.slow]


def _runs(executable: str) -> bool:
    try:
        subprocess.run([executable, "--version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser, after the install script has added what is missing (nothing, mostly):
    chromium itself, or the library Playwright's driver needs even where chromium runs."""
    completed = subprocess.run(
        ["bash", str(INSTALL)],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    if completed.returncode != 0 or not _runs(CHROMIUM):
        reason = (completed.stderr.strip() or completed.stdout.strip())[-500:]
        pytest.skip(f"chromium is missing and could not be installed ({INSTALL.name}): {reason}")
    return CHROMIUM


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("docs-server") / "server.log"
    with running_server(log) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh page whose requests may only go to the service."""
    context = browser.new_context(viewport={"width": 1280, "height": 1600})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    outside: list[str] = []

    def only_the_service(route: Route) -> None:
        url = route.request.url
        if url.startswith(server) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_the_service)
    yield page
    context.close()
    assert outside == [], f"the page tried to load from outside the service: {outside}"


def test_swagger_ui_executes_the_offered_cross_entropy_request(
    page: Page, server: str, tmp_path: Path
) -> None:
    """ "Try it out" as a new user meets it: the body Swagger UI offers, executed unchanged."""
    page.goto(f"{server}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Loss service")
    # The operations are listed: one per loss, the health probes, /metrics, /v2.
    operation = page.locator("#operations-losses-cross_entropy")
    expect(operation).to_be_visible()
    expect(page.locator("#operations-health-readyz")).to_be_visible()
    expect(page.locator("#operations-observability-metrics")).to_be_visible()
    assert page.locator(".opblock").count() >= 20

    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    offered = json.loads(operation.locator("textarea.body-param__text").input_value())
    example = LOSS_BODIES["cross-entropy"]["class_indices"]["value"]
    assert offered == example
    operation.get_by_role("button", name="Execute").click()

    live = operation.locator(".live-responses-table .response")
    expect(live.locator(".response-col_status")).to_contain_text("200")
    answer = live.locator(".response-col_description pre").first
    expect(answer).to_contain_text('"loss"')
    result = json.loads(answer.inner_text())
    logits, labels = np.array(example["logits"]), np.array(example["labels"])
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    smoothing, n_classes = example["label_smoothing"], logits.shape[1]
    target = np.full(logits.shape, smoothing / n_classes)
    target[np.arange(len(labels)), labels] += 1 - smoothing
    assert result["name"] == "cross-entropy"
    assert result["loss"] == pytest.approx(float(-(target * log_p).sum(axis=1).mean()), rel=1e-12)
    assert result["n_valid"] == len(labels)
    assert np.array(result["grad"]).shape == logits.shape
    page.screenshot(path=tmp_path / "docs.png", full_page=True)
    assert (tmp_path / "docs.png").stat().st_size > 10_000


def test_swagger_ui_shows_a_problem(page: Page, server: str) -> None:
    page.goto(f"{server}/docs#/losses/cross_entropy")
    operation = page.locator("#operations-losses-cross_entropy")
    expect(operation.get_by_role("button", name="Try it out")).to_be_visible()
    operation.get_by_role("button", name="Try it out").click()
    editor = operation.locator("textarea.body-param__text")
    editor.fill(json.dumps({"logits": [[1.0, 2.0]], "labels": [7]}))
    operation.get_by_role("button", name="Execute").click()
    live = operation.locator(".live-responses-table .response")
    expect(live.locator(".response-col_status")).to_contain_text("422")
    expect(live.locator(".response-col_description pre").first).to_contain_text("is outside [0, 2)")


def test_redoc_renders_the_operations(page: Page, server: str, tmp_path: Path) -> None:
    """ReDoc draws every operation with its example, without a console error (its bundle's
    logo on Redocly's CDN was one, blocked by the page's policy) or a request elsewhere (the
    `page` fixture)."""
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/redoc")
    expect(page.locator(".api-info h1")).to_contain_text("Loss service")
    heading = page.locator("h2", has_text="Softmax cross-entropy with class weights")
    expect(heading).to_be_visible()
    expect(page.locator("h2", has_text="Prometheus metrics")).to_be_visible()
    # The request sample is the example, not a body made up from the schema ("logits": [[]]).
    section = page.locator('[data-section-id="tag/losses/operation/cross_entropy"]')
    expect(section).to_contain_text('"label_smoothing": 0.1')
    expect(page.get_by_text("API docs by Redocly")).to_be_attached()  # the footer, drawn
    page.screenshot(path=tmp_path / "redoc.png")
    assert errors == []
