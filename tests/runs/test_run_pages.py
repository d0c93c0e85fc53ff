"""The run pages over HTTP: HTML with a strict policy, every number the API's, client text
escaped, errors as pages, the same API keys as /v1/runs, and no place in the OpenAPI document."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx
import pytest

from service.api.run_pages import CONTENT_SECURITY_POLICY
from tests.conftest import AsyncClientContext
from tests.live_server import free_port
from tests.runs.test_runs_api import CALIBRATION, LOSSES, batch, create, put

pytestmark = pytest.mark.anyio

HOSTILE = '<script>alert("name")</script>'
NUMBER = re.compile(r'data-field="([^"]+)" data-value="([^"]+)" title="[^"]+">([^<]*)<')
LINK = re.compile(r'href="([^"]*)"')


def resolve(answer: Any, field: str) -> Any:
    """The value at `losses[0].loss` (a page's data-field) in the API's JSON answer."""
    for name, index in re.findall(r"([A-Za-z_]+)|\[(\d+)\]", field):
        answer = answer[int(index)] if index else answer[name]
    return answer


def assert_numbers_are_the_apis(page: str, answer: dict[str, Any]) -> int:
    """Every number on the page: its exact value is the API's, and it shows 6 digits of it."""
    found = NUMBER.findall(page)
    for field, exact, shown in found:
        expected = resolve(answer, html.unescape(field))
        if expected is None:
            assert (exact, shown) == ("null", "\N{EN DASH}"), field
        elif isinstance(expected, int):
            assert (int(exact), shown) == (expected, f"{expected:,}"), field
        else:
            assert float(exact) == expected, field
            assert shown == f"{expected:.6g}", field
    return len(found)


def assert_a_page(response: httpx.Response, status: int = 200) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    text = response.text
    assert text.startswith("<!DOCTYPE html>")
    assert "<script" not in text  # nothing runs: no script of ours, none injected
    for url in LINK.findall(text):  # every link stays on the service
        assert url.startswith(("/", "#", "data:")), url
    assert not re.search(r"<[a-z][^>]*\ssrc=", text)  # no element loads anything
    return text


async def test_a_run_page_shows_the_report_with_the_apis_numbers(
    client: httpx.AsyncClient,
) -> None:
    run = await create(
        client,
        name=HOSTILE,
        metadata={"<b>key</b>": "a & b \"quoted\" <img src=x onerror='alert(1)'>"},
        calibration=CALIBRATION,
    )
    for index, n in enumerate((40, 25, 3)):
        assert (await put(client, run["id"], f"b{index}", *batch(n))).status_code == 201
    answer = (await client.get(f"/v1/runs/{run['id']}")).json()

    text = assert_a_page(await client.get(f"/runs/{run['id']}"))
    assert html.escape(HOSTILE) in text
    assert "&lt;b&gt;key&lt;/b&gt;" in text
    assert "onerror='alert" not in text and "&lt;img src=x onerror=&#x27;alert(1)&#x27;&gt;" in text
    # Every loss with its options, every metric, every bin: 3 + 9 + 1 (top-2) + 5 x 10 + 4.
    assert assert_numbers_are_the_apis(text, answer) == 2 * 3 + 10 + 5 * 10 + 2
    for field in ("calibration.ece_debiased", "calibration.classwise_ece", "losses[1].weight_sum"):
        assert f'data-field="{field}"' in text
    assert '<code title="0.05">label_smoothing=0.05</code>' in text
    assert '<code title="1.5">gamma=1.5</code>' in text
    assert '<code title="&quot;sum&quot;">reduction=&quot;sum&quot;</code>' in text
    for stamp in ("created_at", "updated_at"):
        assert f'<time datetime="{answer[stamp]}" data-field="{stamp}"' in text
    # The diagram is inline SVG: no second request, no XML prolog inside HTML.
    assert text.count("<svg") == 1
    assert '<svg role="img" aria-label="Reliability diagram"' in text
    assert "<?xml" not in text and "<metadata>" not in text


async def test_a_long_option_is_cut_and_whole_in_its_title(client: httpx.AsyncClient) -> None:
    weight = [round(0.5 + i / 7, 6) for i in range(40)]
    run = await create(client, losses=[{"name": "cross-entropy", "weight": weight}])
    text = assert_a_page(await client.get(f"/runs/{run['id']}"))
    whole = json.dumps(weight, separators=(",", ":"))
    assert f'<code title="{whole}">weight={whole[:80]}\N{HORIZONTAL ELLIPSIS}</code>' in text


async def test_runs_without_numbers_yet_say_so(client: httpx.AsyncClient) -> None:
    waiting = await create(client, calibration=CALIBRATION)
    text = assert_a_page(await client.get(f"/runs/{waiting['id']}"))
    assert "No calibration statistics yet" in text
    assert "<svg" not in text
    losses_only = await create(client, metadata={})
    await put(client, losses_only["id"], "one", *batch(4))
    text = assert_a_page(await client.get(f"/runs/{losses_only['id']}"))
    assert "computes no calibration statistics" in text
    assert "No metadata." in text
    answer = (await client.get(f"/v1/runs/{losses_only['id']}")).json()
    assert assert_numbers_are_the_apis(text, answer) == 2 + 3 * 2


async def test_the_list_links_every_run_newest_first_a_page_at_a_time(
    client: httpx.AsyncClient,
) -> None:
    ids = [(await create(client, name=f"run <{i}>"))["id"] for i in range(5)]
    seen: list[str] = []
    url: str | None = "/runs?limit=2"
    pages = 0
    while url is not None:
        text = assert_a_page(await client.get(url))
        answer = (await client.get(url.replace("/runs", "/v1/runs"))).json()
        assert assert_numbers_are_the_apis(text, answer) == 2 * len(answer["runs"])
        links = [link for link in LINK.findall(text) if re.fullmatch(r"/runs/[0-9a-f-]{36}", link)]
        seen += [link.removeprefix("/runs/") for link in links]
        assert ('href="/runs?limit=2">First page' in text) == (pages > 0)
        following = re.search(r'<a rel="next" href="([^"]+)"', text)
        url = html.unescape(following.group(1)) if following else None
        pages += 1
    assert seen == ids[::-1]
    assert pages == 3
    assert "run &lt;4&gt;" in (await client.get("/runs")).text


async def test_the_list_of_no_runs(client: httpx.AsyncClient) -> None:
    text = assert_a_page(await client.get("/runs"))
    assert "No runs here" in text


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/runs/00000000-0000-4000-8000-000000000000", 404, "no run 00000000-"),
        ("/runs/not-a-run", 422, "run_id"),
        ("/runs?cursor=not-a-cursor", 422, "cursor"),
        ("/runs?limit=0", 422, "limit"),
    ],
)
async def test_errors_are_pages_with_the_apis_status_and_words(
    client: httpx.AsyncClient, path: str, status: int, words: str
) -> None:
    response = await client.get(path)
    text = assert_a_page(response, status)
    problem = (await client.get(path.replace("/runs", "/v1/runs"))).json()
    assert problem["status"] == status
    assert f"<h1>{status} {html.escape(problem['title'])}</h1>" in text
    assert html.escape(problem["detail"]) in text
    assert words in problem["detail"]


KEY = {"X-API-Key": "k-page"}


async def test_pages_take_the_same_api_keys_as_the_runs_api() -> None:
    async with AsyncClientContext(api_keys=["k-page"]) as client:
        run = (await client.post("/v1/runs", json={"losses": LOSSES}, headers=KEY)).json()
        for path in ("/runs", f"/runs/{run['id']}"):
            refused = await client.get(path)
            text = assert_a_page(refused, 401)
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "<code>X-API-Key</code>" in text
            assert run["id"] not in text
            assert_a_page(await client.get(path, headers=KEY))
            assert_a_page(await client.get(path, headers={"Authorization": "Bearer k-page"}))
            wrong = await client.get(path, params={"api_key": "k-page"})  # never from the URL
            assert wrong.status_code == 401


async def test_a_database_that_is_down_is_a_503_page_with_retry_after() -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/runs"
    async with AsyncClientContext(database_url=url, database_connect_timeout_s=1.0) as client:
        response = await client.get("/runs")
        text = assert_a_page(response, 503)
        assert response.headers["retry-after"] == "5"
        assert "The database is unavailable" in text
        assert "nobody" not in text


async def test_pages_follow_the_root_path() -> None:
    """Behind a proxy that serves the app under a prefix, the pages' links carry it."""
    context = AsyncClientContext()
    async with context:
        transport = httpx.ASGITransport(app=context.app, root_path="/loss")
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            run = (await client.post("/loss/v1/runs", json={"losses": LOSSES})).json()
            listing = (await client.get("/loss/runs")).text
            page = (await client.get(f"/loss/runs/{run['id']}")).text
    assert f'href="/loss/runs/{run["id"]}"' in listing
    assert 'href="/loss/runs"' in page
    assert f'href="/loss/v1/runs/{run["id"]}"' in page


async def test_pages_are_not_operations_of_the_api(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/runs" not in paths and "/runs/{run_id}" not in paths
    assert "/v1/runs/{run_id}" in paths
