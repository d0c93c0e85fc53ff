"""The JSON request examples of README.md and docs/ are real: each is sent to the app in process and
must be answered as its `# -> NNN` comment says (a 2xx without one), and every loss has one.

tests/docs/test_commands.py runs the same examples with curl against a live server; this test
needs no server and names the failing body."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest

from tests.docs.blocks import SHELL, Curl, blocks, curls

pytestmark = pytest.mark.anyio

# Requests whose URL holds a value an earlier answer gave (`$RUN`) run only in test_commands.
EXAMPLES = [
    curl
    for block in blocks()
    if block.lang in SHELL
    for curl in curls(block)
    if curl.body is not None and "$" not in curl.url and ":8000" in curl.url
]


def _path(curl: Curl) -> str:
    parts = urlsplit(curl.url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def test_there_is_an_example_for_every_loss() -> None:
    from service.core.registry import LOSSES

    answered = {_path(curl) for curl in EXAMPLES if curl.expected is None}
    for spec in LOSSES:
        assert f"/v1/losses/{spec.name}" in answered, spec.name
    for path in ("/v1/evaluate", "/v1/calibration", "/v1/calibration/merge", "/v1/label-noise"):
        assert path in answered, path


@pytest.mark.parametrize("curl", EXAMPLES, ids=[f"{c.block.where}:{_path(c)}" for c in EXAMPLES])
async def test_example_is_answered(client: httpx.AsyncClient, curl: Curl) -> None:
    assert curl.body is not None
    response = await client.request(curl.method, _path(curl), json=json.loads(curl.body))
    if curl.expected is not None:
        assert response.status_code == curl.expected, response.text
    else:
        assert 200 <= response.status_code < 300, response.text
