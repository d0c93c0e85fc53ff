"""Every error path of the loss routes: an RFC 9457 problem+json body naming the field.

The last test posts a few hundred malformed bodies, generated deterministically, and checks that
none of them makes the service answer 500.

Long because it is the catalogue of error paths, one short case each, sharing the problem+json
checks.
"""

from __future__ import annotations

import base64
import json
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from service import engine
from tests.helpers import encoded, replace_engine_function

pytestmark = pytest.mark.anyio

ClientFactory = Callable[..., Any]  # the `make_client` fixture

CE = "/v1/losses/cross-entropy"
BCE = "/v1/losses/binary-cross-entropy"
PROBLEM = "application/problem+json"
JSON_HEADERS = {"content-type": "application/json"}
# The engine function as the route module calls it (`engine.cross_entropy`).
VALID_CE: dict[str, Any] = {"logits": [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], "labels": [1, 2]}
VALID_BCE: dict[str, Any] = {"logits": [[1.0, -2.0]], "labels": [[1.0, 0.0]]}


def assert_problem(
    response: httpx.Response, status: int, *, field: str | None = None, pointer: str | None = None
) -> dict[str, Any]:
    """The response is a problem+json body with `status`, naming `field` when one is given."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert set(problem) == {"type", "title", "status", "detail", "errors"}
    assert problem["status"] == status
    assert isinstance(problem["type"], str)
    assert problem["type"]
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    assert isinstance(problem["errors"], list)
    for error in problem["errors"]:
        assert set(error) == {"pointer", "field", "detail"}
        assert error["pointer"].startswith("#")
    if field is not None:
        located = [(e["field"], e["pointer"]) for e in problem["errors"]]
        expected_pointer = pointer if pointer is not None else "#/" + field.replace(".", "/")
        assert (field, expected_pointer) in located, located
    return problem


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def with_fields(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**base, **fields}


# --- codec errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits", "field"),
    [
        pytest.param([[1.0, 2.0, 0.5], [0.0, 1.0]], "logits", id="ragged"),
        pytest.param([[1.0, "2.0", 0.5], [0.0, 1.0, 2.0]], "logits", id="string-leaf"),
        pytest.param([[1.0, None, 0.5], [0.0, 1.0, 2.0]], "logits", id="null-leaf"),
        pytest.param([[1.0, True, 0.5], [0.0, 1.0, 2.0]], "logits", id="bool-leaf"),
        pytest.param("not a tensor", "logits", id="string"),
        pytest.param(
            {"dtype": "complex64", "shape": [2, 3], "data": b64(bytes(48))},
            "logits.dtype",
            id="bad-dtype",
        ),
        pytest.param(
            {"dtype": "float32", "shape": [2, 3], "data": "not base64!"},
            "logits.data",
            id="bad-base64",
        ),
        pytest.param(
            {"dtype": "float32", "shape": [2, 3], "data": b64(bytes(20))},
            "logits.data",
            id="wrong-byte-length",
        ),
        pytest.param(
            {"dtype": "float32", "shape": [2, -3], "data": ""}, "logits.shape", id="negative-dim"
        ),
        pytest.param(
            {"dtype": "float32", "shape": [2, 3], "data": b64(bytes(24)), "order": "C"},
            "logits.order",
            id="unknown-key",
        ),
        pytest.param({"dtype": "float32", "shape": [2, 3]}, "logits.data", id="missing-data"),
        pytest.param(
            {
                "dtype": "float32",
                "shape": [2, 3],
                "data": b64(np.array([1, 2, np.inf, 0, 0, 0], "<f4").tobytes()),
            },
            "logits",
            id="encoded-plus-inf",
        ),
        pytest.param(
            {
                "dtype": "float32",
                "shape": [2, 3],
                "data": b64(np.array([1, 2, np.nan, 0, 0, 0], "<f4").tobytes()),
            },
            "logits",
            id="encoded-nan",
        ),
    ],
)
async def test_codec_errors(client: httpx.AsyncClient, logits: object, field: str) -> None:
    response = await client.post(CE, json=with_fields(VALID_CE, logits=logits))
    problem = assert_problem(response, 422, field=field)
    assert problem["detail"].startswith(field)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize("field", ["logits", "weight"])
async def test_non_finite_json_numbers_are_invalid_json(
    client: httpx.AsyncClient, literal: str, field: str
) -> None:
    # Bodies are strict JSON (orjson): NaN, Infinity and numbers past float64 are not JSON
    # numbers. Encoded tensors carry NaN and inf, and are checked by the codec (above).
    values = {"logits": "[[1.0, 2.0, 0.5], [0.0, 1.0, 2.0]]", "weight": "[1.0, 1.0, 1.0]"}
    values[field] = values[field].replace("2.0", literal, 1).replace("1.0, 1.0", f"1.0, {literal}")
    raw = f'{{"logits": {values["logits"]}, "labels": [1, 2], "weight": {values["weight"]}}}'
    response = await client.post(CE, content=raw, headers=JSON_HEADERS)
    problem = assert_problem(response, 422)
    assert "not valid JSON" in problem["detail"]


async def test_labels_codec_error_names_labels(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, json=with_fields(VALID_CE, labels=[[1], 2]))
    assert_problem(response, 422, field="labels")


# --- engine errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field", "phrase"),
    [
        pytest.param(
            CE, with_fields(VALID_CE, labels=[1, 3]), "labels", "outside [0, 3)", id="label-range"
        ),
        pytest.param(
            CE, with_fields(VALID_CE, labels=[1, -1]), "labels", "outside", id="label-negative"
        ),
        pytest.param(
            CE, with_fields(VALID_CE, labels=[1, 2, 0]), "labels", "shape", id="shape-mismatch"
        ),
        pytest.param(
            CE,
            with_fields(VALID_CE, weight=[1.0, -0.5, 1.0]),
            "weight",
            ">= 0",
            id="negative-weight",
        ),
        pytest.param(
            CE, with_fields(VALID_CE, weight=[1.0, 1.0]), "weight", "shape", id="weight-shape"
        ),
        pytest.param(
            CE,
            with_fields(VALID_CE, labels=[[0.5, 0.2, 0.2], [0.0, 0.0, 1.0]]),
            "labels",
            "sum to 1",
            id="probabilities-not-summing-to-1",
        ),
        pytest.param(
            CE,
            with_fields(VALID_CE, labels=[[1.5, -0.5, 0.0], [0.0, 0.0, 1.0]]),
            "labels",
            "[0, 1]",
            id="probabilities-outside-unit-interval",
        ),
        pytest.param(
            CE, with_fields(VALID_CE, logits=3.0, labels=0), "logits", "scalar", id="scalar-logits"
        ),
        pytest.param(
            CE, with_fields(VALID_CE, logits=[[]], labels=[0]), "logits", "empty", id="no-classes"
        ),
        pytest.param(
            BCE, with_fields(VALID_BCE, labels=[[1.0, 2.0]]), "labels", "[0, 1]", id="bce-range"
        ),
        pytest.param(
            BCE, with_fields(VALID_BCE, labels=[1.0, 0.0]), "labels", "shape", id="bce-shape"
        ),
        pytest.param(
            BCE,
            with_fields(VALID_BCE, pos_weight=[1.0, -1.0]),
            "pos_weight",
            ">= 0",
            id="bce-negative-pos-weight",
        ),
        pytest.param(
            BCE,
            with_fields(VALID_BCE, weight=[1.0, 1.0, 1.0]),
            "weight",
            "broadcast",
            id="bce-weight-shape",
        ),
    ],
)
async def test_engine_errors(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], field: str, phrase: str
) -> None:
    problem = assert_problem(await client.post(path, json=body), 422, field=field)
    assert problem["type"].endswith("invalid-input")
    assert phrase in problem["detail"]


async def test_target_on_masked_class_is_rejected(client: httpx.AsyncClient) -> None:
    logits = np.array([[0.0, -np.inf, 1.0]], dtype=np.float32)
    response = await client.post(CE, json={"logits": encoded(logits), "labels": [1]})
    problem = assert_problem(response, 422, field="logits")
    assert "-inf" in problem["detail"]


# --- request validation (pydantic) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(with_fields(VALID_CE, label_smothing=0.1), "label_smothing", id="unknown"),
        pytest.param(with_fields(VALID_CE, reduction="avg"), "reduction", id="reduction"),
        pytest.param(with_fields(VALID_CE, label_smoothing=2), "label_smoothing", id="smoothing"),
        pytest.param(with_fields(VALID_CE, z_loss=-1), "z_loss", id="z_loss"),
        pytest.param(with_fields(VALID_CE, ignore_index=1.5), "ignore_index", id="ignore_index"),
        pytest.param(with_fields(VALID_CE, output_encoding="hex"), "output_encoding", id="enc"),
        pytest.param(with_fields(VALID_CE, empty="inf"), "empty", id="empty"),
        pytest.param(with_fields(VALID_CE, compute_dtype="float16"), "compute_dtype", id="dtype"),
        pytest.param(with_fields(VALID_CE, return_grad="maybe"), "return_grad", id="return_grad"),
        pytest.param({"logits": VALID_CE["logits"]}, "labels", id="missing-labels"),
        pytest.param({"labels": VALID_CE["labels"]}, "logits", id="missing-logits"),
    ],
)
async def test_validation_errors(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await client.post(CE, json=body), 422, field=field)
    assert problem["type"].endswith("invalid-input")
    assert field in problem["detail"]


async def test_several_validation_errors_are_all_reported(client: httpx.AsyncClient) -> None:
    body = {"logits": VALID_CE["logits"], "reduction": "avg", "label_smothing": 0.1}
    problem = assert_problem(await client.post(CE, json=body), 422)
    assert {e["field"] for e in problem["errors"]} == {"labels", "reduction", "label_smothing"}


async def test_pos_weight_is_not_a_cross_entropy_option(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, json=with_fields(VALID_CE, pos_weight=[1.0, 1.0, 1.0]))
    assert_problem(response, 422, field="pos_weight")


async def test_invalid_json_body(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, content=b'{"logits": [[1.0, 2.0]', headers=JSON_HEADERS)
    problem = assert_problem(response, 422)
    assert "not valid JSON" in problem["detail"]
    assert [e["pointer"] for e in problem["errors"]] == ["#"]


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"logits"', b"3", b"null", b"true"])
async def test_non_object_json_body(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(CE, content=raw, headers=JSON_HEADERS)
    problem = assert_problem(response, 422)
    assert [e["pointer"] for e in problem["errors"]] == ["#"]


async def test_empty_body(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post(CE, content=b"", headers=JSON_HEADERS), 422)


async def test_json_nested_past_the_recursion_limit_is_422(client: httpx.AsyncClient) -> None:
    depth = 100_000
    raw = '{"logits": ' + "[" * depth + "]" * depth + ', "labels": [0]}'
    response = await client.post(CE, content=raw, headers=JSON_HEADERS)
    assert_problem(response, 422)


async def test_body_that_is_not_utf8_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, content=b'{"logits": "\xff\xfe"}', headers=JSON_HEADERS)
    assert_problem(response, 422)


# --- routing -----------------------------------------------------------------------------------


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.post("/v1/losses/hinge", json=VALID_CE), 404)
    assert "/v1/losses/hinge" in problem["detail"]
    assert_problem(await client.get("/nowhere"), 404)


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    response = await client.get(CE)
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"
    assert_problem(await client.post("/healthz"), 405)


# --- limits ------------------------------------------------------------------------------------


async def test_body_too_large_by_content_length(make_client: ClientFactory) -> None:
    async with make_client(max_body_bytes=200) as client:
        body = with_fields(VALID_CE, logits=[[1.0, 2.0, 3.0]] * 20, labels=[0] * 20)
        response = await client.post(CE, json=body)
        assert int(response.request.headers["content-length"]) > 200
        problem = assert_problem(response, 413)
        assert problem["type"].endswith("limit-exceeded")
        assert "max_body_bytes" in problem["detail"]
        # A body under the limit on the same client passes.
        ok = await client.post(CE, json=VALID_CE)
        assert ok.status_code == 200, ok.text


async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_chunked_body_under_the_limit_is_read(make_client: ClientFactory) -> None:
    raw = json.dumps(VALID_CE).encode()
    async with make_client(max_body_bytes=200) as client:
        response = await client.post(CE, content=chunks([raw[:10], raw[10:]]), headers=JSON_HEADERS)
        assert "content-length" not in response.request.headers
        assert response.status_code == 200, response.text


async def test_body_too_large_chunked(make_client: ClientFactory) -> None:
    raw = json.dumps(with_fields(VALID_CE, logits=[[1.0, 2.0, 3.0]] * 20, labels=[0] * 20))
    parts = [raw[i : i + 50].encode() for i in range(0, len(raw), 50)]
    async with make_client(max_body_bytes=200) as client:
        response = await client.post(CE, content=chunks(parts), headers=JSON_HEADERS)
        assert "content-length" not in response.request.headers
        problem = assert_problem(response, 413)
        assert "max_body_bytes" in problem["detail"]


@pytest.mark.parametrize("path", [CE, BCE])
async def test_element_limit_json(make_client: ClientFactory, path: str) -> None:
    async with make_client(max_elements=8) as client:
        labels: object = [0] * 3 if path == CE else [[0.0] * 3] * 3
        body = {"logits": [[0.0] * 3] * 3, "labels": labels}
        problem = assert_problem(await client.post(path, json=body), 413, field="logits")
        assert "9 elements" in problem["detail"]
        assert problem["type"].endswith("limit-exceeded")


async def test_element_limit_applies_to_labels(make_client: ClientFactory) -> None:
    async with make_client(max_elements=8) as client:
        body: dict[str, Any] = {"logits": [[0.0] * 2] * 4, "labels": [[0.5, 0.5]] * 4}
        assert (await client.post(CE, json=body)).status_code == 200
        body = {"logits": [[0.0] * 2] * 4, "labels": [0] * 9}
        assert_problem(await client.post(CE, json=body), 413, field="labels")


@pytest.mark.parametrize("path", [CE, BCE])
async def test_element_limit_base64(make_client: ClientFactory, path: str) -> None:
    async with make_client(max_elements=1000) as client:
        # The shape alone is over the limit: refused before the (absent) data is looked at.
        logits = {"dtype": "float32", "shape": [100, 100], "data": ""}
        body = {"logits": logits, "labels": [0] * 100}
        problem = assert_problem(await client.post(path, json=body), 413, field="logits.shape")
        assert "10000 elements" in problem["detail"]
        huge = {"dtype": "float32", "shape": [2**62, 2**62], "data": ""}
        body = {"logits": huge, "labels": [0]}
        assert_problem(await client.post(path, json=body), 413, field="logits.shape")


async def test_max_classes(make_client: ClientFactory) -> None:
    async with make_client(max_classes=4) as client:
        body = {"logits": [[0.0] * 5], "labels": [0]}
        problem = assert_problem(await client.post(CE, json=body), 413, field="logits")
        assert "max_classes" in problem["detail"]
        body = {"logits": [[0.0] * 4], "labels": [0]}
        assert (await client.post(CE, json=body)).status_code == 200


# --- API keys ----------------------------------------------------------------------------------


async def test_api_keys(make_client: ClientFactory) -> None:
    async with make_client(api_keys=["alpha", "beta"]) as client:
        missing = await client.post(CE, json=VALID_CE)
        problem = assert_problem(missing, 401)
        assert problem["type"].endswith("unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        for headers in (
            {"x-api-key": "gamma"},
            {"authorization": "Bearer gamma"},
            {"authorization": "Basic alpha"},
            {"authorization": "Bearer "},
            {"x-api-key": ""},
        ):
            assert_problem(await client.post(CE, json=VALID_CE, headers=headers), 401)
        for headers in (
            {"authorization": "Bearer alpha"},
            {"authorization": "bearer beta"},
            {"x-api-key": "beta"},
        ):
            response = await client.post(CE, json=VALID_CE, headers=headers)
            assert response.status_code == 200, (headers, response.text)
        bce = await client.post(BCE, json=VALID_BCE, headers={"x-api-key": "alpha"})
        assert bce.status_code == 200
        assert_problem(await client.post(BCE, json=VALID_BCE), 401)
        # A bad body without a key is refused for the key, not parsed.
        assert_problem(await client.post(CE, json={"bogus": 1}), 401)
        for probe in ("/healthz", "/readyz"):
            response = await client.get(probe)
            assert response.status_code == 200, probe


async def test_routes_whose_key_only_the_middleware_checks_refuse_bodiless_requests(
    make_client: ClientFactory,
) -> None:
    """The loss routes declare no key dependency (`KeyCheckedByMiddleware`): the middleware
    refuses a request without a key to them whatever its method, a GET without a body too."""
    async with make_client(api_keys=["alpha"]) as client:
        problem = assert_problem(await client.get("/v1/losses"), 401)
        assert problem["type"].endswith("unauthorized")
        assert (await client.get("/v1/losses", headers={"x-api-key": "alpha"})).status_code == 200
        assert_problem(await client.get(CE), 401)  # a method the route lacks: the key first
        keyed = await client.get(CE, headers={"x-api-key": "alpha"})
        assert keyed.status_code == 405


async def test_api_keys_are_not_required_by_default(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, json=VALID_CE, headers={"x-api-key": "anything"})
    assert response.status_code == 200


# --- timeout and unexpected errors -------------------------------------------------------------


class HeldEngine(threading.Event):
    """Set to release the held computation; `finished` is set once it has returned."""

    def __init__(self) -> None:
        super().__init__()
        self.finished = threading.Event()


@pytest.fixture
def blocking_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldEngine]:
    """Make the route's cross-entropy block until the returned event is set (at teardown)."""
    release = HeldEngine()
    original: Callable[..., Any] = engine.cross_entropy

    def slow(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=10)
        release.finished.set()
        return original(*args, **kwargs)

    replace_engine_function(monkeypatch, "cross-entropy", slow)
    yield release
    release.set()  # let the abandoned worker thread finish


async def test_timeout_is_503(make_client: ClientFactory, blocking_engine: HeldEngine) -> None:
    # On a worker thread, as a larger body's computation: one on the event loop (a small
    # body's) has no timeout, and the held engine would hold the test's loop too.
    async with make_client(request_timeout_s=0.05, inline_compute_bytes=0) as client:
        response = await client.post(CE, json=VALID_CE)
        problem = assert_problem(response, 503)
        assert problem["type"].endswith("timeout")
        assert "request_timeout_s" in problem["detail"]
        # Answered at the timeout, while the computation is still held, not when it returned.
        assert not blocking_engine.finished.is_set()


async def test_unexpected_exception_is_a_generic_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "secret-token-1234 in /srv/internal/module.py"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    replace_engine_function(monkeypatch, "cross-entropy", broken)
    response = await client.post(CE, json=VALID_CE)
    problem = assert_problem(response, 500)
    assert problem["errors"] == []
    for leaked in ("secret-token-1234", "RuntimeError", "Traceback", "module.py", "broken"):
        assert leaked not in response.text
    # Other routes are unaffected.
    assert (await client.post(BCE, json=VALID_BCE)).status_code == 200


# --- floating-point edge cases -----------------------------------------------------------------


async def test_huge_finite_logits_do_not_warn(client: httpx.AsyncClient) -> None:
    raw = '{"logits": [[1e308, -1e308]], "labels": [0], "return_grad": true}'
    response = await client.post(CE, content=raw, headers=JSON_HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["loss"] == 0.0
    assert response.json()["grad"] == [[0.0, 0.0]]


async def test_overflowing_z_loss_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(CE, json=with_fields(VALID_CE, z_loss=1e308))
    problem = assert_problem(response, 422)
    assert "-inf" not in problem["detail"]


# --- robustness --------------------------------------------------------------------------------


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


WRONG_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    7,
    2.5,
    -1e300,
    1e300,
    10**30,
    -(10**30),
    "",
    "mean",
    "1.0",
    "NaN",
    [],
    [[]],
    [[], []],
    [[[]]],
    [None],
    [True, False],
    ["a", "b"],
    [[1, 2], [3]],
    [[1.0, 2.0], 3.0],
    [1, [2]],
    [{}],
    {},
    {"a": 1},
    {"dtype": "float32"},
    {"dtype": "float32", "shape": [-1], "data": ""},
    {"dtype": "float32", "shape": [1.5], "data": ""},
    {"dtype": "float32", "shape": "2", "data": ""},
    {"dtype": "float32", "shape": [2], "data": 5},
    {"dtype": "float32", "shape": [2], "data": "@@@@"},
    {"dtype": "float32", "shape": [2], "data": "AAAA"},
    {"dtype": "bool", "shape": [2], "data": b64(b"\x00\x07")},
    {"dtype": "int64", "shape": [10**30], "data": ""},
    {"dtype": "float16", "shape": [0, 3], "data": ""},
    {"dtype": "float32", "shape": [], "data": b64(b"\x00\x00\x80\x7f")},
    {"dtype": "float32", "shape": [1] * 70, "data": b64(bytes(4))},
    {"dtype": ["float32"], "shape": [1], "data": b64(bytes(4))},
    _nested(65, 1.0),
    _nested(200, 0),
    _nested(30, []),
]

FIELDS = {
    CE: [
        "logits",
        "labels",
        "weight",
        "ignore_index",
        "label_smoothing",
        "z_loss",
        "reduction",
        "return_grad",
        "output_encoding",
        "empty",
        "compute_dtype",
    ],
    BCE: [
        "logits",
        "labels",
        "weight",
        "pos_weight",
        "reduction",
        "return_grad",
        "output_encoding",
        "empty",
        "compute_dtype",
    ],
}


def _malformed_bodies(seed: int, count: int) -> list[bytes]:
    """`count` request bodies, each wrong in some way, the same for every run."""
    rng = random.Random(seed)
    ce_fields = FIELDS[CE]
    bodies: list[bytes] = []

    def dump(value: object) -> bytes:
        return json.dumps(value).encode()

    kinds = ["wrong-type", "two-wrong", "truncated", "raw-number", "shape", "big", "not-object"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        base = dict(rng.choice([VALID_CE, VALID_BCE]))
        if kind == "wrong-type":
            base[rng.choice(ce_fields)] = rng.choice(WRONG_VALUES)
            bodies.append(dump(base))
        elif kind == "two-wrong":
            for field in rng.sample(ce_fields, 2):
                base[field] = rng.choice(WRONG_VALUES)
            if rng.random() < 0.3:
                base[rng.choice(["labels_", "Logits", "reduce", ""])] = 1
            bodies.append(dump(base))
        elif kind == "truncated":
            raw = dump(with_fields(base, return_grad=True, reduction="none"))
            bodies.append(raw[: rng.randrange(len(raw))])
        elif kind == "raw-number":
            number = rng.choice(
                ["1e400", "-1e400", "1e-400", "123456789" * 5, "-0", "0.0e0", "1E+2", "Infinity"]
            )
            field = rng.choice(["logits", "labels", "weight", "label_smoothing", "z_loss"])
            text = dump({k: v for k, v in base.items() if k != field}).decode()
            value = f"[[{number}, 1.0]]" if field == "logits" else number
            if field in ("labels", "weight") and rng.random() < 0.5:
                value = f"[{number}, 1]"
            bodies.append(f'{{"{field}": {value}, {text[1:]}'.encode())
        elif kind == "shape":
            n, c = rng.randint(0, 4), rng.randint(0, 4)
            logits = [[rng.uniform(-5, 5) for _ in range(c)] for _ in range(n)]
            labels: object = rng.choice(
                [
                    [rng.randint(-3, 5) for _ in range(rng.randint(0, 5))],
                    [[rng.randint(0, 2) for _ in range(c)] for _ in range(n)],
                    [[rng.random() for _ in range(c + 1)] for _ in range(n)],
                    rng.randint(0, 3),
                    [],
                    [[]],
                ]
            )
            bodies.append(dump(with_fields(base, logits=logits, labels=labels)))
        elif kind == "big":
            # Over max_elements (4096) or max_classes (512) of the client below.
            rows, classes = rng.choice([(100, 50), (1, 600), (5000, 1), (2, 2)])
            field = rng.choice(["logits", "labels", "weight"])
            if rng.random() < 0.5:
                dims = [rows, classes] if rows * classes > 4 else [2**40, 2**40]
                tensor: object = {"dtype": "float32", "shape": dims, "data": ""}
            else:
                tensor = [[0.5] * classes] * rows
            bodies.append(dump(with_fields(base, **{field: tensor})))
        else:
            bodies.append(
                rng.choice([b"[]", b"[{}]", b'"x"', b"0", b"null", b"{}", b"{", b"", b"  "])
            )
    return bodies


MALFORMED = _malformed_bodies(seed=20240607, count=210)


async def test_malformed_bodies_never_give_500(make_client: ClientFactory) -> None:
    assert len(set(MALFORMED)) > 150  # the generator really varies its output
    statuses: dict[int, int] = {}
    async with make_client(max_elements=4096, max_classes=512) as client:
        for raw in MALFORMED:
            for path in (CE, BCE):
                response = await client.post(path, content=raw, headers=JSON_HEADERS)
                status = response.status_code
                statuses[status] = statuses.get(status, 0) + 1
                assert status in {200, 413, 422}, (path, raw[:300], response.text)
                if status == 200:
                    assert response.headers["content-type"] == "application/json"
                    assert set(response.json()) >= {"loss", "n_valid"}
                else:
                    assert_problem(response, status)
    # Most of these bodies are wrong, and some are too big: the corpus does not pass by accident.
    assert statuses.get(422, 0) > len(MALFORMED)
    assert statuses.get(413, 0) > 10
