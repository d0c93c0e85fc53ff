"""The limits and the access rules of SECURITY.md, through HTTP on the ASGI app.

Per-request elements, JSON nesting, the compute slots (`max_concurrent`, `queue_timeout_s`) and
the 503s with `Retry-After`, API keys from a file and in the OpenAPI document, CORS, wrong
content types, and regression tests for what the fuzzer (tests/openapi/test_fuzz.py) found.

Long because every limit shares the client factory and the held-engine fixtures; each section is
marked by a comment rule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pydantic
import pytest

from service import engine
from service.api.concurrency import ComputeGate, _Ticket
from service.config import Settings
from service.errors import ComputeTimeout, Overloaded
from tests.helpers import encoded, replace_engine_function

pytestmark = pytest.mark.anyio

ClientFactory = Callable[..., Any]  # the `make_client` fixture

CE = "/v1/losses/cross-entropy"
INFER = "/v2/models/cross-entropy/infer"
PROBLEM = "application/problem+json"
VALID_CE: dict[str, Any] = {"logits": [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], "labels": [1, 2]}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# --- elements per request ------------------------------------------------------------------


async def test_request_elements_count_every_tensor(make_client: ClientFactory) -> None:
    # Each tensor is under max_elements = 8; together logits (2 x 3) and labels (2) are 8.
    async with make_client(max_elements=8, max_request_elements=8) as client:
        assert (await client.post(CE, json=VALID_CE)).status_code == 200
        body = {**VALID_CE, "weight": [1.0, 1.0, 1.0]}
        found = problem(await client.post(CE, json=body), 413)
        assert found["type"].endswith("limit-exceeded")
        assert "11 elements" in found["detail"]
        assert "per request" in found["detail"]
        assert [e["field"] for e in found["errors"]] == ["weight"]


async def test_request_elements_are_counted_from_the_shape(make_client: ClientFactory) -> None:
    """An encoded tensor is refused from its declared shape, before its data is decoded."""
    async with make_client(max_elements=100, max_request_elements=120) as client:
        logits = encoded(np.zeros((10, 10), dtype=np.float32))
        labels = {"dtype": "int64", "shape": [30], "data": "not base64 at all"}
        body = {"logits": logits, "labels": labels}
        found = problem(await client.post(CE, json=body), 413)
        assert [e["field"] for e in found["errors"]] == ["labels.shape"]


async def test_request_elements_count_evaluate_options(make_client: ClientFactory) -> None:
    async with make_client(max_request_elements=11) as client:
        body: dict[str, Any] = {
            "logits": [[0.0, 1.0, 2.0]] * 2,
            "labels": [0, 1],
            "losses": [{"name": "cross-entropy", "weight": [1.0, 2.0, 3.0]}],
        }
        assert (await client.post("/v1/evaluate", json=body)).status_code == 200
        body["losses"].append({"name": "cross-entropy", "weight": [1.0, 2.0, 3.0]})
        found = problem(await client.post("/v1/evaluate", json=body), 413)
        assert [e["field"] for e in found["errors"]] == ["losses[1].weight"]


async def test_evaluate_loss_entries_are_limited(make_client: ClientFactory) -> None:
    """Regression: 1000 copies of one entry with its gradient on 1000 x 1000 logits answered
    5.3 GB to a 5 MB request."""
    body: dict[str, Any] = {"logits": [[0.0, 1.0, 2.0]] * 2, "labels": [0, 1]}
    async with make_client(max_evaluate_losses=3) as client:
        body["losses"] = [{"name": "cross-entropy"}] * 3
        assert (await client.post("/v1/evaluate", json=body)).status_code == 200
        body["losses"] = [{"name": "cross-entropy"}] * 4
        found = problem(await client.post("/v1/evaluate", json=body), 413)
        assert found["detail"] == "losses: 4 entries exceed max_evaluate_losses = 3"
        assert [e["field"] for e in found["errors"]] == ["losses"]


async def test_output_elements_are_counted_across_evaluate_entries(
    make_client: ClientFactory,
) -> None:
    body: dict[str, Any] = {"logits": [[0.0, 1.0, 2.0]] * 2, "labels": [0, 1]}
    with_grad = {"name": "cross-entropy", "return_grad": True}
    async with make_client(max_output_elements=14) as client:
        # two gradients of 6 and the per-sample losses of 2: 14
        body["losses"] = [with_grad, {**with_grad, "reduction": "none"}]
        assert (await client.post("/v1/evaluate", json=body)).status_code == 200
        body["losses"] = [with_grad, with_grad, with_grad]
        found = problem(await client.post("/v1/evaluate", json=body), 413)
        assert [e["field"] for e in found["errors"]] == ["losses[2].return_grad"]
        assert "max_output_elements" in found["detail"]


async def test_output_elements_are_counted_for_one_loss(make_client: ClientFactory) -> None:
    body = {**VALID_CE, "reduction": "none", "return_grad": True}
    async with make_client(max_output_elements=8) as client:  # per-sample 2, gradient 6
        assert (await client.post(CE, json=body)).status_code == 200
    async with make_client(max_output_elements=7) as client:
        found = problem(await client.post(CE, json=body), 413)
        assert [e["field"] for e in found["errors"]] == ["return_grad"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_head(client: httpx.AsyncClient, path: str) -> None:
    """Regression: HEAD /healthz was 405, and probes that ask with HEAD failed."""
    assert (await client.head(path)).status_code == 200


async def test_request_elements_count_calibration(make_client: ClientFactory) -> None:
    async with make_client(max_request_elements=5) as client:
        body = {"probs": [0.1, 0.8, 0.6], "labels": [0, 1, 1]}
        problem(await client.post("/v1/calibration", json=body), 413)
        small = {"probs": [0.1, 0.8], "labels": [0, 1]}
        assert (await client.post("/v1/calibration", json=small)).status_code == 200


def _infer_body(logits: list[list[float]], labels: list[int]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "logits", "shape": [len(logits), 3], "datatype": "FP64", "data": logits},
            {"name": "labels", "shape": [len(labels)], "datatype": "INT64", "data": labels},
        ]
    }


async def test_request_elements_count_oip_inputs_once(make_client: ClientFactory) -> None:
    """An OIP input declares its shape and then sends its data: counted once, not twice."""
    async with make_client(max_request_elements=8) as client:
        at_limit = _infer_body([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [1, 2])
        response = await client.post(INFER, json=at_limit)
        assert response.status_code == 200, response.text
        over = _infer_body([[1.0, 2.0, 0.5]] * 3, [1, 2, 0])
        response = await client.post(INFER, json=over)
        assert response.status_code == 413
        assert "per request" in response.json()["error"]


async def test_request_budget_is_per_request(make_client: ClientFactory) -> None:
    async with make_client(max_request_elements=8) as client:
        for _ in range(3):
            assert (await client.post(CE, json=VALID_CE)).status_code == 200


# --- JSON nesting ----------------------------------------------------------------------------

# orjson parses at most 1024 levels; tensors have at most 64 dimensions (NumPy's own limit).
DEPTHS = [65, 1000, 1024, 1025, 100_000]


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    ("path", "template"),
    [
        pytest.param(CE, '{"logits": %s, "labels": [0]}', id="tensor"),
        pytest.param(CE, '{"logits": [[0.0]], "labels": [0], "z_loss": %s}', id="option"),
        pytest.param(CE, '{"logits": [[0.0]], "labels": [0], "unknown": %s}', id="unknown"),
        pytest.param(CE, "%s", id="whole-body"),
        pytest.param(
            "/v1/evaluate",
            '{"logits": [[0.0]], "labels": [0], "losses": [{"name": "focal", "alpha": %s}]}',
            id="evaluate",
        ),
        pytest.param("/v1/calibration", '{"probs": %s, "labels": [0]}', id="calibration"),
        pytest.param(
            INFER,
            '{"inputs": [{"name": "logits", "shape": [1], "datatype": "FP32", "data": %s}]}',
            id="oip-data",
        ),
        pytest.param(INFER, '{"inputs": [], "parameters": {"reduction": %s}}', id="oip-parameters"),
    ],
)
async def test_deep_nesting_is_a_client_error(
    client: httpx.AsyncClient, path: str, template: str, depth: int
) -> None:
    raw = template.replace("%s", _nested(depth))
    response = await client.post(path, content=raw, headers={"content-type": "application/json"})
    if path.startswith("/v2"):
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"}
    else:
        problem(response, 422)
    if depth > 1024:
        assert "depth limit" in response.text or "JSON" in response.text


async def test_the_effective_nesting_limits(client: httpx.AsyncClient) -> None:
    """A body parses up to 1024 levels, its own object included, and the codec then refuses
    tensors of more than 64 dimensions. The numbers SECURITY.md states."""
    for depth, expected in [
        (64, "shape"),  # a 64-d tensor of one element: a shape error for cross-entropy, 422
        (65, "more than 64 levels deep"),
        (1023, "more than 64 levels deep"),  # 1024 levels with the body's object
        (1024, "not valid JSON: depth limit exceeded"),
    ]:
        raw = f'{{"logits": {_nested(depth, "0.5")}, "labels": [0]}}'
        response = await client.post(CE, content=raw, headers={"content-type": "application/json"})
        found = problem(response, 422)
        assert expected in found["detail"], (depth, found["detail"])


# --- wrong content types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/xml"],
)
async def test_wrong_content_type_is_422(client: httpx.AsyncClient, content_type: str) -> None:
    raw = b'{"logits": [[0.0, 1.0]], "labels": [0]}'
    response = await client.post(CE, content=raw, headers={"content-type": content_type})
    problem(response, 422)


# --- compute slots and 503s ----------------------------------------------------------------


# A held engine call must run on a worker thread, as every computation on a larger body does:
# one on the event loop (a small body's, service.api.deps) would hold the test's loop too.
ON_THREADS = {"inline_compute_bytes": 0}


@pytest.fixture
def gated_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Cross-entropy blocks until the returned event is set (at teardown at the latest)."""
    release = threading.Event()
    original: Callable[..., Any] = engine.cross_entropy

    def slow(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=10)
        return original(*args, **kwargs)

    replace_engine_function(monkeypatch, "cross-entropy", slow)
    yield release
    release.set()


async def test_compute_timeout_is_503_with_retry_after(
    make_client: ClientFactory, gated_engine: threading.Event
) -> None:
    async with make_client(request_timeout_s=0.05, retry_after_s=7, **ON_THREADS) as client:
        response = await client.post(CE, json=VALID_CE)
        found = problem(response, 503)
        assert found["type"].endswith("timeout")
        assert response.headers["retry-after"] == "7"


async def test_a_busy_service_queues_then_answers_503_overloaded(
    make_client: ClientFactory, gated_engine: threading.Event
) -> None:
    async with (
        make_client(max_concurrent=1, queue_timeout_s=0.2, retry_after_s=3, **ON_THREADS) as client,
        anyio.create_task_group() as tasks,
    ):
        first: list[httpx.Response] = []

        async def hold_the_slot() -> None:
            first.append(await client.post(CE, json=VALID_CE))

        tasks.start_soon(hold_the_slot)
        await anyio.sleep(0.05)
        started = time.monotonic()
        response = await client.post(CE, json=VALID_CE)
        waited = time.monotonic() - started
        found = problem(response, 503)
        assert found["type"].endswith("overloaded")
        assert "max_concurrent" in found["detail"]
        assert response.headers["retry-after"] == "3"
        assert waited > 0.15, waited  # it waited its queue_timeout_s
        assert not first  # and no more: the slot's holder is still computing
        # The slot's holder is not disturbed, and answers once its computation ends.
        gated_engine.set()
    assert first[0].status_code == 200, first[0].text


async def test_a_queued_request_gets_the_slot_when_it_frees(
    make_client: ClientFactory, gated_engine: threading.Event
) -> None:
    async with make_client(max_concurrent=1, queue_timeout_s=10, **ON_THREADS) as client:
        responses: list[httpx.Response] = []

        async def post() -> None:
            responses.append(await client.post(CE, json=VALID_CE))

        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(post)
            await anyio.sleep(0.1)
            assert not responses  # all three wait: one on the engine, two for the slot
            gated_engine.set()
        assert [r.status_code for r in responses] == [200, 200, 200]


async def test_an_abandoned_computation_keeps_its_slot_until_it_ends(
    make_client: ClientFactory, gated_engine: threading.Event
) -> None:
    """Past its timeout a computation runs on in its thread: a retry must not start another
    one beside it (that is how a burst of slow requests would exhaust memory)."""
    settings = {"max_concurrent": 1, "request_timeout_s": 0.1, "queue_timeout_s": 0.1, **ON_THREADS}
    async with make_client(**settings) as client:
        problem(await client.post(CE, json=VALID_CE), 503)  # timed out, still computing
        retry = problem(await client.post(CE, json=VALID_CE), 503)
        assert retry["type"].endswith("overloaded")
        gated_engine.set()  # the abandoned computation ends and frees its slot
        for _ in range(50):
            response = await client.post(CE, json=VALID_CE)
            if response.status_code == 200:
                break
            await anyio.sleep(0.05)
        assert response.status_code == 200, response.text


async def test_the_gate_never_runs_more_than_max_concurrent() -> None:
    gate = ComputeGate(3, queue_timeout_s=30, retry_after_s=1)
    lock = threading.Lock()
    running = peak = 0

    def work(seconds: float) -> float:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(seconds)
        with lock:
            running -= 1
        return seconds

    results: list[float] = []

    async def one(index: int) -> None:
        results.append(await gate.run(work, 0.01 * (index % 4), timeout_s=30))

    async with anyio.create_task_group() as tasks:
        for index in range(20):
            tasks.start_soon(one, index)
    assert len(results) == 20
    assert peak == 3
    assert gate.busy == 0


async def test_cancelled_requests_give_their_slots_back() -> None:
    """A request cancelled (its client gone) while it waits for a slot, or while its work runs,
    leaves every slot free once the work is over."""
    gate = ComputeGate(1, queue_timeout_s=30, retry_after_s=1)
    release = threading.Event()
    with anyio.move_on_after(0.2):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: gate.run(release.wait, 5, timeout_s=30))
            tasks.start_soon(lambda: gate.run(release.wait, 5, timeout_s=30))
            await anyio.sleep(30)
    assert gate.busy == 1  # the abandoned first computation still runs
    release.set()
    for _ in range(100):
        if gate.busy == 0:
            break
        await anyio.sleep(0.01)
    assert gate.busy == 0
    assert await gate.run(lambda: 42, timeout_s=5) == 42


async def test_gate_errors_carry_retry_after() -> None:
    gate = ComputeGate(1, queue_timeout_s=0, retry_after_s=9)
    release = threading.Event()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: gate.run(release.wait, 5, timeout_s=30))
        await anyio.sleep(0.05)
        with pytest.raises(Overloaded) as overloaded:
            await gate.run(lambda: None, timeout_s=5)
        assert overloaded.value.retry_after_s == 9
        release.set()
    with pytest.raises(ComputeTimeout) as timeout:
        await gate.run(time.sleep, 0.5, timeout_s=0.01)
    assert timeout.value.retry_after_s == 9


@pytest.mark.parametrize(
    ("events", "releases"),
    [
        (["start", "end", "leave"], "request"),  # the usual case
        (["start", "leave", "end"], "worker"),  # timed out, or the client went away
        (["leave", "start"], "request"),  # cancelled before a thread took the work
    ],
)
def test_a_slot_is_given_back_by_exactly_one_side(events: list[str], releases: str) -> None:
    ticket = _Ticket()
    givers = []
    for event in events:
        result = getattr(ticket, event)()
        if event == "start":
            assert result == ("leave" not in events[: events.index("start")])
        elif result:
            givers.append("worker" if event == "end" else "request")
    assert givers == [releases]


# --- API keys ----------------------------------------------------------------------------------


def test_api_keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# rotated 2024-06\nalpha\n\n  beta  \n", encoding="utf-8")
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS", "gamma")
    assert Settings().api_keys == ["gamma", "alpha", "beta"]


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_an_unusable_api_keys_file_stops_the_service(tmp_path: Path, content: str | None) -> None:
    """Configured but empty or unreadable: refusing to start beats starting open."""
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content, encoding="utf-8")
    with pytest.raises(pydantic.ValidationError, match="api_keys_file"):
        Settings(api_keys_file=keys)


def test_settings_errors_do_not_echo_api_keys() -> None:
    with pytest.raises(pydantic.ValidationError) as error:
        Settings(api_keys="s3cret-key,bad key")
    assert "s3cret" not in str(error.value)
    assert "bad key" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_output_elements", 0),
        ("max_evaluate_losses", 0),
        ("max_oip_outputs", 0),
        ("max_diagram_bins", 0),
        ("max_header_bytes", 100),  # a request line must fit
        ("max_header_count", 0),
        ("header_timeout_s", 0),
        ("body_timeout_s", -1),
    ],
)
def test_limits_that_would_refuse_everything_stop_the_service(name: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=name):
        Settings(**{name: value})  # type: ignore[arg-type]


async def test_keys_from_a_file_open_the_api(make_client: ClientFactory, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alpha\n", encoding="utf-8")
    async with make_client(api_keys_file=keys) as client:
        problem(await client.post(CE, json=VALID_CE), 401)
        ok = await client.post(CE, json=VALID_CE, headers={"x-api-key": "alpha"})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-api-key", "\xe9t\xe9".encode("latin-1"))],
        [(b"authorization", b"Bearer \xff\xfe")],
        [(b"x-api-key", "alph\xe0".encode())],
    ],
)
async def test_non_ascii_keys_are_401_not_500(
    make_client: ClientFactory, headers: list[tuple[bytes, bytes]]
) -> None:
    """Regression: hmac.compare_digest raised TypeError on non-ASCII text, a 500."""
    async with make_client(api_keys=["alpha"]) as client:
        response = await client.post(CE, json=VALID_CE, headers=headers)
        problem(response, 401)


OPEN_OPERATIONS = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
}


async def test_openapi_declares_the_key_schemes_on_protected_operations_only(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerAuth"]["description"],
    }
    assert schemes["apiKeyAuth"]["type"] == "apiKey"
    assert schemes["apiKeyAuth"]["in"] == "header"
    assert schemes["apiKeyAuth"]["name"] == "X-API-Key"
    either: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
    protected = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (method, path) in OPEN_OPERATIONS or path == "/metrics":
                assert "security" not in operation, (method, path)
            else:
                assert sorted(operation.get("security", []), key=str) == sorted(either, key=str), (
                    method,
                    path,
                )
                protected += 1
    assert protected >= 20
    assert {(m, p) for p, ops in document["paths"].items() for m in ops} >= OPEN_OPERATIONS


async def test_every_protected_operation_refuses_a_request_without_a_key(
    make_client: ClientFactory,
) -> None:
    """Each operation that declares the key schemes answers 401 before reading its body."""
    async with make_client(api_keys=["alpha"]) as client:
        document = (await client.get("/openapi.json")).json()
        checked = []
        for path, operations in document["paths"].items():
            url = path.replace("{model_name}", "cross-entropy").replace("{model_version}", "1")
            for method, operation in operations.items():
                if "security" not in operation:
                    continue
                for headers in ({}, {"x-api-key": "beta"}, {"authorization": "Bearer beta"}):
                    response = await client.request(method, url, json={}, headers=headers)
                    if path.startswith("/v2"):
                        assert response.status_code == 401, (method, path, response.text)
                    else:
                        problem(response, 401)
                keyed = await client.request(method, url, json={}, headers={"x-api-key": "alpha"})
                assert keyed.status_code != 401, (method, path)
                checked.append((method, path))
        assert len(checked) >= 20


async def test_a_request_without_a_key_is_refused_before_its_body_is_read(
    make_client: ClientFactory,
) -> None:
    """Regression: /v1 read and parsed a whole body (57 MB) before its 401, and uvicorn said
    `100 Continue` to the client first (it does so on the app's first `receive()`). Every
    protected operation answers 401 without asking for the body."""
    context = make_client(api_keys=["alpha"])
    async with context as client:
        document = (await client.get("/openapi.json")).json()
        checked = []
        for path, operations in document["paths"].items():
            url = path.replace("{model_name}", "cross-entropy").replace("{model_version}", "1")
            for method, operation in operations.items():
                if "security" not in operation:
                    continue
                received: list[Any] = []
                sent: list[Any] = []

                async def receive(into: list[Any] = received) -> dict[str, Any]:
                    into.append(True)
                    return {"type": "http.request", "body": b"{}", "more_body": False}

                async def send(message: dict[str, Any], into: list[Any] = sent) -> None:
                    into.append(message)

                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": method.upper(),
                    "scheme": "http",
                    "path": url,
                    "raw_path": url.encode(),
                    "root_path": "",
                    "query_string": b"",
                    "headers": [
                        (b"host", b"testserver"),
                        (b"content-type", b"application/json"),
                        (b"content-length", b"60000000"),
                        (b"expect", b"100-continue"),
                        (b"x-api-key", b"beta"),
                    ],
                    "client": ("127.0.0.1", 1),
                    "server": ("testserver", 80),
                    "state": {},
                }
                await context.app(scope, receive, send)
                assert not received, (method, path)
                assert sent[0]["status"] == 401, (method, path)
                assert (b"connection", b"close") in sent[0]["headers"], (method, path)
                checked.append((method, path))
        assert len(checked) >= 20


async def test_either_credential_is_enough(make_client: ClientFactory) -> None:
    async with make_client(api_keys=["alpha"]) as client:
        for headers in (
            {"authorization": "Bearer wrong", "x-api-key": "alpha"},
            {"authorization": "Bearer alpha", "x-api-key": "wrong"},
            {"authorization": "Basic alpha", "x-api-key": "alpha"},
        ):
            response = await client.post(CE, json=VALID_CE, headers=headers)
            assert response.status_code == 200, (headers, response.text)


async def test_503_answers_document_retry_after(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    answer = document["paths"]["/v1/losses/cross-entropy"]["post"]["responses"]["503"]
    assert answer["headers"]["Retry-After"]["schema"]["type"] == "integer"


# --- CORS --------------------------------------------------------------------------------------


async def test_no_cors_by_default(client: httpx.AsyncClient) -> None:
    headers = {"origin": "https://evil.example", "access-control-request-method": "POST"}
    preflight = await client.options(CE, headers=headers)
    assert "access-control-allow-origin" not in preflight.headers
    response = await client.post(CE, json=VALID_CE, headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_the_configured_origins_only(make_client: ClientFactory) -> None:
    async with make_client(cors_origins=["https://notebooks.example"]) as client:
        allowed = await client.post(
            CE, json=VALID_CE, headers={"origin": "https://notebooks.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://notebooks.example"
        other = await client.post(CE, json=VALID_CE, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


# --- what the fuzzer found ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (CE, {"logits": [[0.0]], "labels": None}, "labels"),
        ("/v1/losses/kl-divergence", {"logits": None, "target_probs": [[1.0]]}, "logits"),
        ("/v1/losses/bradley-terry", {"chosen": [0.0], "rejected": None}, "rejected"),
        (
            "/v1/losses/forward-corrected-cross-entropy",
            {"logits": [[0.0]], "labels": [0], "transition_matrix": None},
            "transition_matrix",
        ),
        ("/v1/evaluate", {"logits": None, "labels": [0], "losses": []}, "logits"),
        ("/v1/calibration", {"probs": [0.5], "labels": None}, "labels"),
        ("/v1/calibration/reliability-diagram", {"probs": [0.5], "labels": None}, "labels"),
    ],
)
async def test_a_null_required_tensor_is_422(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    """Regression: `null` passed validation and the engine was called without the tensor, a
    TypeError and a 500."""
    found = problem(await client.post(path, json=body), 422)
    assert [e["field"] for e in found["errors"]] == [field]


async def test_a_non_ascii_digit_header_length_is_400(client: httpx.AsyncClient) -> None:
    """Regression (found by tests/codecs/test_codecs_properties.py): the header byte 0xB2 reads
    as "²", a digit to str.isdigit but not to int(): a ValueError and a 500."""
    headers = [(b"inference-header-content-length", b"\xb2"), (b"content-type", b"text/plain")]
    response = await client.post(INFER, content=b'{"inputs": []}', headers=headers)
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]


@pytest.mark.parametrize("output_encoding", ["json", "base64"])
async def test_a_scalar_gradient_is_answered(
    client: httpx.AsyncClient, output_encoding: str
) -> None:
    """Regression: the gradient of 0-d logits is a 0-d array, which orjson does not write (500)."""
    body = {
        "logits": 0.0,
        "labels": 1.0,
        "return_grad": True,
        "output_encoding": output_encoding,
    }
    response = await client.post("/v1/losses/binary-cross-entropy", json=body)
    assert response.status_code == 200, response.text
    grad = response.json()["grad"]
    assert grad == -0.5 if output_encoding == "json" else grad["shape"] == []


async def test_evaluate_with_no_classes_is_422(client: httpx.AsyncClient) -> None:
    """Regression: logits [N, 0] broke the shared softmax's reshape before any check (500)."""
    logits = encoded(np.zeros((2, 0), dtype=np.float32))
    body = {"logits": logits, "labels": [0, 0], "losses": [{"name": "cross-entropy"}]}
    found = problem(await client.post("/v1/evaluate", json=body), 422)
    assert "class axis" in found["detail"]
    empty = {"logits": encoded(np.zeros((0,), dtype=np.float32)), "labels": 0, "losses": []}
    response = await client.post("/v1/evaluate", json=empty)
    assert response.status_code == 200, response.text
    assert response.json()["losses"] == []
