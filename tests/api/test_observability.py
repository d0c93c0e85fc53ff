"""`/metrics`, the request id and the one JSON log line per request (service.api.observe)."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api import metrics as metrics_module
from service.logs import JsonFormatter, request_id_var
from tests.helpers import encoded
from tests.live_server import running_server

pytestmark = pytest.mark.anyio

ClientFactory = Callable[..., Any]
CE = "/v1/losses/cross-entropy"
BODY = {"logits": [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], "labels": [1, 2]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, from the Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict[Any, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_requests_are_counted_per_route_template_and_status(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post(CE, json=BODY)).status_code == 200
    assert (await client.post(CE, json=BODY)).status_code == 200
    assert (await client.post(CE, json={**BODY, "labels": [1, 7]})).status_code == 422
    assert (await client.get("/no/such/route/123")).status_code == 404
    infer = {"inputs": [{"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [0, 1]}]}
    assert (await client.post("/v2/models/focal/infer", json=infer)).status_code == 400

    found = await scrape(client)
    total = "loss_service_requests_total"
    assert value(found, total, method="POST", route=CE, status="200") == 2
    assert value(found, total, method="POST", route=CE, status="422") == 1
    assert value(found, total, method="GET", route="<unmatched>", status="404") == 1
    oip = "/v2/models/{model_name}/infer"
    assert value(found, total, method="POST", route=oip, status="400") == 1
    # Templates, never raw paths: no series names the 404's path or the model.
    assert not any("no/such" in str(key) or "/v2/models/focal" in str(key) for key in found)

    latency = "loss_service_request_duration_seconds"
    assert value(found, f"{latency}_count", method="POST", route=CE, status="200") == 2
    assert value(found, f"{latency}_sum", method="POST", route=CE, status="200") > 0
    buckets = [key for key in found if key[0] == f"{latency}_bucket" and ("route", CE) in key[1]]
    assert len(buckets) >= 2 * len(metrics_module.LATENCY_BUCKETS)


async def test_made_up_methods_share_one_label(client: httpx.AsyncClient) -> None:
    for method in ("BREW", "WHEN", "PROPFIND"):
        assert (await client.request(method, CE)).status_code == 405
    found = await scrape(client)
    total = "loss_service_requests_total"
    assert value(found, total, method="other", route=CE, status="405") == 3


async def test_payload_bytes_and_elements(client: httpx.AsyncClient) -> None:
    logits = np.zeros((4, 3), dtype=np.float32)
    body = {
        "logits": encoded(logits),
        "labels": [0, 1, 2, 0],
        "weight": [1.0, 2.0, 3.0],
    }
    content = json.dumps(body).encode()
    response = await client.post(CE, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text

    found = await scrape(client)
    assert value(found, "loss_service_request_size_bytes_sum", method="POST", route=CE) == len(
        content
    )
    assert value(found, "loss_service_response_size_bytes_sum", method="POST", route=CE) == len(
        response.content
    )
    # logits 12 + labels 4 + weight 3
    assert value(found, "loss_service_elements_processed_total", route=CE) == 19


async def test_elements_of_the_binary_inference_protocol(client: httpx.AsyncClient) -> None:
    logits = np.zeros((5, 2), dtype=np.float32).tobytes()
    labels = np.zeros(5, dtype=np.int64).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "logits",
                    "shape": [5, 2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(logits)},
                },
                {
                    "name": "labels",
                    "shape": [5],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": len(labels)},
                },
            ]
        }
    ).encode()
    response = await client.post(
        "/v2/models/cross-entropy/infer",
        content=header + logits + labels,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    found = await scrape(client)
    route = "/v2/models/{model_name}/infer"
    assert value(found, "loss_service_elements_processed_total", route=route) == 15


async def test_errors_by_problem_type(client: httpx.AsyncClient) -> None:
    await client.post(CE, json={**BODY, "labels": [1, 7]})
    await client.post(CE, content=b"{not json", headers={"content-type": "application/json"})
    await client.get("/nothing")
    found = await scrape(client)
    errors = "loss_service_errors_total"
    invalid = "urn:loss-service:problem:invalid-input"
    assert value(found, errors, type=invalid, status="422") == 2
    assert value(found, errors, type="about:blank", status="404") == 1


async def test_body_limit_rejections_are_counted_on_their_route(
    make_client: ClientFactory,
) -> None:
    async with make_client(max_body_bytes=64) as client:
        response = await client.post(CE, content=b"x" * 200)
        assert response.status_code == 413
        assert response.headers["x-request-id"]
        found = await scrape(client)
    total = "loss_service_requests_total"
    assert value(found, total, method="POST", route=CE, status="413") == 1
    limit = "urn:loss-service:problem:limit-exceeded"
    assert value(found, "loss_service_errors_total", type=limit, status="413") == 1
    assert value(found, "loss_service_request_size_bytes_sum", method="POST", route=CE) == 200


async def test_backend_info_and_process_metrics(client: httpx.AsyncClient) -> None:
    found = await scrape(client)
    backends = [labels for name, labels in found if name == "loss_service_backend_info"]
    assert len(backends) == 1
    labels = dict(backends[0])
    assert labels["backend"] == "numpy"
    assert labels["device"] == "cpu"
    assert value(found, "loss_service_backend_info", **labels) == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in found)
    # The scrape itself is in progress while it is written.
    assert value(found, "loss_service_requests_in_progress") == 1


async def test_openmetrics_on_request(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_apps_do_not_share_counts(make_client: ClientFactory) -> None:
    async with make_client() as first:
        await first.post(CE, json=BODY)
    async with make_client() as second:
        found = await scrape(second)
    assert value(found, "loss_service_requests_total", method="POST", route=CE, status="200") == 0


async def test_metrics_and_health_stay_open_with_api_keys(make_client: ClientFactory) -> None:
    async with make_client(api_keys=["secret"]) as client:
        assert (await client.post(CE, json=BODY)).status_code == 401
        for path in ("/metrics", "/healthz", "/readyz"):
            assert (await client.get(path)).status_code == 200, path
        found = await scrape(client)
    unauthorized = "urn:loss-service:problem:unauthorized"
    assert value(found, "loss_service_errors_total", type=unauthorized, status="401") == 1


@pytest.mark.parametrize(
    "presented",
    ["abc-123", "0af7651916cd43dd8448eb211c80319c", "trace:1.2_3", "a" * 64],
)
async def test_request_id_is_taken_from_the_client(
    client: httpx.AsyncClient, presented: str
) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": presented})
    assert response.headers["x-request-id"] == presented


@pytest.mark.parametrize(
    "presented",
    ["", "a" * 65, "has space", "new\\nline", "<script>", "-leading-dash", "é"],
)
async def test_unsafe_request_ids_are_replaced(client: httpx.AsyncClient, presented: str) -> None:
    response = await client.get("/healthz", headers={b"X-Request-ID": presented.encode("utf-8")})
    generated = response.headers["x-request-id"]
    assert generated != presented
    assert len(generated) == 32
    assert int(generated, 16) >= 0


async def test_request_ids_are_generated_and_distinct(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


async def test_one_log_line_per_request(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    content = json.dumps(BODY).encode()
    headers = {"X-Request-ID": "req-42", "content-type": "application/json"}
    with caplog.at_level(logging.INFO, logger="service.access"):
        response = await client.post(CE, content=content, headers=headers)
    assert response.status_code == 200
    records = [r for r in caplog.records if r.name == "service.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["message"] == f"POST {CE} 200"
    assert line["level"] == "info"
    assert line["request_id"] == "req-42"
    assert line["method"] == "POST"
    assert line["route"] == CE
    assert line["path"] == CE
    assert line["status"] == 200
    assert line["duration_ms"] > 0
    assert line["request_bytes"] == len(content)
    assert line["response_bytes"] == len(response.content)
    assert line["elements"] == 8
    assert line["problem_type"] is None


async def test_probes_log_at_debug(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        await client.get("/healthz")
        await client.get("/metrics")
    assert [r for r in caplog.records if r.name == "service.access"] == []
    with caplog.at_level(logging.DEBUG, logger="service.access"):
        await client.get("/healthz")
    assert [r.levelno for r in caplog.records if r.name == "service.access"] == [logging.DEBUG]


async def test_an_unexpected_error_carries_the_request_id(
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from service.core.registry import BY_NAME

    def broken(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("a bug")

    spec = BY_NAME["cross-entropy"]
    monkeypatch.setitem(BY_NAME, "cross-entropy", dataclasses.replace(spec, function=broken))
    with caplog.at_level(logging.INFO):
        response = await client.post(CE, json=BODY, headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    assert "boom-1" in response.json()["detail"]
    access = [r for r in caplog.records if r.name == "service.access"]
    assert [r.__dict__["status"] for r in access] == [500]
    logged = [r for r in caplog.records if r.name == "service.api.problems"]
    assert json.loads(JsonFormatter().format(logged[0]))["request_id"] == "boom-1"
    found = await scrape(client)
    assert value(found, "loss_service_errors_total", type="about:blank", status="500") == 1


def test_json_formatter() -> None:
    record = logging.LogRecord(
        "service.x", logging.WARNING, __file__, 1, "hello %s", ("you",), None
    )
    record.__dict__["extra_field"] = {"a": 1}
    token = request_id_var.set("rid-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello you"
    assert line["level"] == "warning"
    assert line["logger"] == "service.x"
    assert line["request_id"] == "rid-1"
    assert line["extra_field"] == {"a": 1}
    assert line["time"].endswith("Z")
    assert "args" not in line
    assert "msg" not in line


def test_json_formatter_writes_exceptions() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "ValueError: bad" in line["exception"]
    assert "request_id" not in line


LOGGING_CHECK = """
import logging, logging.config
from service.logs import logging_config
logging.config.dictConfig(logging_config("debug", {fmt!r}))
logging.getLogger("service.x").debug("hello %s", "there", extra={{"k": 1}})
logging.getLogger("uvicorn.error").info("started", extra={{"color_message": "ansi"}})
"""


@pytest.mark.system
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_logging_config(fmt: str) -> None:
    """The configuration `serve` hands uvicorn, in a process of its own (it is global)."""
    completed = subprocess.run(
        [sys.executable, "-c", LOGGING_CHECK.format(fmt=fmt)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = completed.stderr.splitlines()
    assert len(lines) == 2, completed.stderr
    if fmt == "text":
        assert lines[0].endswith("DEBUG service.x: hello there")
        return
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "hello there"
    assert first["level"] == "debug"
    assert first["k"] == 1
    assert second["logger"] == "uvicorn.error"
    assert "color_message" not in second


@pytest.mark.system
def test_live_server_logs_json_lines_with_the_request_id(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with running_server(log) as base_url:
        response = httpx.post(
            f"{base_url}{CE}", json=BODY, headers={"X-Request-ID": "live-7"}, timeout=30
        )
        assert response.headers["x-request-id"] == "live-7"
        metrics = httpx.get(f"{base_url}/metrics", timeout=30).text
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    # Less the start's own probes: /readyz answers 503 until the kernels are ready.
    access = [
        line
        for line in lines
        if line.get("logger") == "service.access" and line.get("route") != "/readyz"
    ]
    assert [(line["request_id"], line["status"], line["route"]) for line in access] == [
        ("live-7", 200, CE)
    ]
    found = samples(metrics)
    assert value(found, "loss_service_requests_total", method="POST", route=CE, status="200") == 1


def test_metrics_are_declared_in_the_openapi_document() -> None:
    from service.api import create_app
    from service.config import Settings

    spec = create_app(Settings(device="cpu")).openapi()
    operation = spec["paths"]["/metrics"]["get"]
    assert operation["operationId"] == "metrics"
    content = operation["responses"]["200"]["content"]
    assert content["text/plain"]["schema"] == {"type": "string"}
    assert "security" not in operation
    for hidden in ("/docs", "/redoc"):
        assert hidden not in spec["paths"]
