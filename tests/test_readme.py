"""The README's request examples are real: each one is sent to the app and must succeed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.anyio

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
# `curl -s <url> [-H ...] -d '<json>'`, the JSON possibly spanning lines.
EXAMPLE = re.compile(r"curl -s (\S+)(?: -H '[^']*')? (?:\\\n\s*)?-d '(.*?)'", re.DOTALL)
EXAMPLES = [
    (url.replace("$S", "/v1/losses").replace("localhost:8000", ""), body)
    for url, body in EXAMPLE.findall(README)
]


def test_the_readme_has_examples_for_every_loss() -> None:
    from service.core.registry import LOSSES

    paths = {url for url, _ in EXAMPLES}
    for spec in LOSSES:
        assert f"/v1/losses/{spec.name}" in paths, spec.name
    assert "/v1/evaluate" in paths


@pytest.mark.parametrize(("path", "body"), EXAMPLES, ids=[p for p, _ in EXAMPLES])
async def test_example_is_answered(client: httpx.AsyncClient, path: str, body: str) -> None:
    response = await client.post(path, json=json.loads(body))
    expected = 422 if '"labels": [7]' in body else 200  # the README's error example
    assert response.status_code == expected, response.text
