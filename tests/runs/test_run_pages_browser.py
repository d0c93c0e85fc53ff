"""The run pages in a real headless Chromium, as /docs is tested (tests/api/test_docs_browser.py):
they render with no console error and no request off the service, and the numbers they show are
the API's, for a run with a few batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from tests.api import test_docs_browser
from tests.helpers import encoded
from tests.runs.test_run_pages import resolve
from tests.runs.test_runs_api import CALIBRATION, LOSSES, batch

pytestmark = [pytest.mark.system, pytest.mark.timeout(900), pytest.mark.slow]

# The docs' fixtures: Debian's chromium (installed when missing), and a page whose requests may
# only go to `server`, this module's, with a failed test for any other.
chromium = test_docs_browser.chromium
browser = test_docs_browser.browser
page = test_docs_browser.page


@pytest.fixture(scope="module")
def run(server: str) -> dict[str, Any]:
    """A run with three batches, as the API reports it."""
    spec = {"name": "nightly <r50>", "metadata": {"split": "val"}, "losses": LOSSES}
    with httpx.Client(base_url=server, timeout=60) as http:
        created = http.post("/v1/runs", json={**spec, "calibration": CALIBRATION})
        run_id = created.json()["id"]
        for index, n in enumerate((50, 31, 7)):
            logits, labels = batch(n)
            body = {"logits": encoded(logits.astype(np.float32)), "labels": encoded(labels)}
            added = http.put(f"/v1/runs/{run_id}/batches/b{index}", json=body)
            assert added.status_code == 201, added.text
        answer: dict[str, Any] = http.get(f"/v1/runs/{run_id}").json()
    return answer


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []

    def record(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            errors.append(f"{message.type}: {message.text}")

    page.on("console", record)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    return errors


def test_a_run_page_shows_the_apis_numbers(
    page: Page, server: str, run: dict[str, Any], tmp_path: Path
) -> None:
    errors = console_errors(page)
    page.goto(f"{server}/runs/{run['id']}")
    expect(page.locator("h1")).to_contain_text("nightly <r50>")
    diagram = page.locator("figure svg")
    expect(diagram).to_be_visible()
    box = diagram.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 300

    cells = page.locator("[data-field][data-value]")
    shown = cells.evaluate_all(
        "cells => cells.map(c => [c.dataset.field, c.dataset.value, c.innerText])"
    )
    assert len(shown) == 2 + 2 * 3 + 10 + 5 * 10
    for field, exact, text in shown:
        expected = resolve(run, field)
        if expected is None:
            assert (exact, text) == ("null", "\N{EN DASH}"), field
        elif isinstance(expected, int):
            assert (int(exact), text) == (expected, f"{expected:,}"), field
        else:
            assert float(exact) == expected, field
            assert text == f"{expected:.6g}", field
    assert page.locator('[data-field="n_samples"]').inner_text() == "88"
    for stamp in ("created_at", "updated_at"):
        assert page.locator(f'time[data-field="{stamp}"]').get_attribute("datetime") == run[stamp]
    page.screenshot(path=tmp_path / "run.png", full_page=True)
    assert (tmp_path / "run.png").stat().st_size > 10_000
    assert errors == []


def test_the_list_leads_to_the_run(page: Page, server: str, run: dict[str, Any]) -> None:
    errors = console_errors(page)
    page.goto(f"{server}/runs")
    link = page.get_by_role("link", name="nightly <r50>")
    expect(link).to_be_visible()
    link.click()
    expect(page).to_have_url(f"{server}/runs/{run['id']}")
    expect(page.locator('[data-field="n_batches"]')).to_have_text("3")
    page.goto(f"{server}/runs/00000000-0000-4000-8000-000000000000")
    expect(page.locator("h1")).to_have_text("404 Not found")
    assert [error for error in errors if "404" not in error] == []
