"""Every operation of the OpenAPI document carries an example, and every example works: sent as
the document describes it, it gets the operation's documented success status. The operations are
read from the generated document, so a new one without an example fails here."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from service.api import create_app, examples
from service.config import Settings

SPEC: dict[str, Any] = json.loads(json.dumps(create_app(Settings(device="cpu")).openapi()))
JSON = "application/json"


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in SPEC["paths"].items()
        for method, operation in methods.items()
    ]


def _success(operation: dict[str, Any]) -> str:
    """The documented success: the one 2xx, or 201 where a replay answers 200 (a batch)."""
    statuses = [status for status in operation["responses"] if status.startswith("2")]
    return "201" if "201" in statuses else statuses[0]


def _requests() -> list[Any]:
    """(method, url, body or None, the documented success status) for every example."""
    cases = []
    for method, path, operation in _operations():
        values = {p["name"]: p.get("example") for p in operation.get("parameters", [])}
        url = path.format(**values)
        bodies = operation.get("requestBody", {}).get("content", {}).get(JSON, {}).get("examples")
        named = [(name, example["value"]) for name, example in (bodies or {}).items()]
        for name, body in named or [("no body", None)]:
            case = (method, url, body, _success(operation))
            cases.append(pytest.param(*case, id=f"{operation['operationId']}-{name}"))
    return cases


@pytest.mark.parametrize(
    ("method", "path", "operation"), _operations(), ids=lambda value: str(value)[:40]
)
def test_every_operation_has_an_example(method: str, path: str, operation: dict[str, Any]) -> None:
    where = f"{method.upper()} {path}: add it to service/api/examples.py"
    inputs = False
    for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
        if media_type == JSON:  # binary bodies (OIP's) have no JSON example to give
            assert content.get("examples"), f"no example body: {where}"
            inputs = True
    for parameter in operation.get("parameters", []):
        if parameter["required"]:
            assert "example" in parameter, f"no example of {parameter['name']}: {where}"
            inputs = True
    if not inputs:  # nothing to fill in: the answer is the example
        content = operation["responses"][_success(operation)]["content"]
        assert any("example" in media for media in content.values()), f"no example: {where}"


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "url", "body", "status"), _requests())
async def test_every_example_gets_the_documented_success(
    client: httpx.AsyncClient, method: str, url: str, body: Any, status: str
) -> None:
    if examples.RUN_ID in url:
        url = url.replace(examples.RUN_ID, await _example_run(client, with_batch=method != "put"))
    response = await client.request(method, url, json=body)
    assert response.status_code == int(status), response.text


async def _example_run(client: httpx.AsyncClient, *, with_batch: bool) -> str:
    """The run the run operations' examples stand for (the service makes its id), with the
    example batch unless the operation is the one that adds it."""
    run = await client.post("/v1/runs", json=examples.RUN_SPEC)
    run_id: str = run.json()["id"]
    if with_batch:
        add = SPEC["paths"]["/v1/runs/{run_id}/batches/{batch_id}"]["put"]
        (batch,) = add["requestBody"]["content"][JSON]["examples"].values()
        path = f"/v1/runs/{run_id}/batches/{examples.BATCH_ID}"
        assert (await client.put(path, json=batch["value"])).status_code == 201
    return run_id


@pytest.mark.anyio
async def test_answers_shown_as_examples_have_the_real_answers_form(
    client: httpx.AsyncClient,
) -> None:
    checked = 0
    for method, path, operation in _operations():
        answers = operation["responses"][_success(operation)].get("content", {})
        for media_type, content in answers.items():
            if "example" not in content:
                continue
            answer = await client.request(method, path, headers={"Accept": media_type})
            example = content["example"]
            if media_type == JSON:
                assert set(answer.json()) == set(example), path
            else:  # the Prometheus text: the same metric families, declared the same way
                declared = {line for line in example.splitlines() if line.startswith("# TYPE")}
                assert declared <= set(answer.text.splitlines()), path
            checked += 1
    assert checked >= 7
