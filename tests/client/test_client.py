"""`service.client`: the hand-written client, on the ASGI app (async) and a live server (sync)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import pytest

import service.client
from service.client import (
    APIError,
    AsyncLossClient,
    InvalidInputError,
    LossClient,
    LossResult,
    LossServiceError,
    NotFoundError,
    ResponseError,
    UnauthorizedError,
)
from service.core.registry import LOSSES

ClientFactory = Callable[..., Any]

RNG = np.random.default_rng(7)
LOGITS = RNG.standard_normal((6, 4)).astype(np.float32)
LABELS = np.array([0, 3, 1, -100, 2, 2])


def reference_ce(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the labels that are not -100, and its gradient, in float64."""
    x = logits.astype(np.float64)
    valid = labels != -100
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rows = np.flatnonzero(valid)
    loss = -np.log(p[rows, labels[rows]]).mean()
    grad = np.where(valid[:, None], p, 0.0)
    grad[rows, labels[rows]] -= 1
    return float(loss), grad / valid.sum()


# --- the package's surface ---------------------------------------------------------------------


def test_all_is_complete_and_sorted() -> None:
    """As httpx's test_exported_members: every public name is exported, in order."""
    public = [name for name in vars(service.client) if not name.startswith("_")]
    assert service.client.__all__ == sorted(public, key=str.casefold)


def test_exported_classes_say_they_live_in_the_package() -> None:
    for name in service.client.__all__:
        member = getattr(service.client, name)
        if isinstance(member, type) and member.__module__.startswith("service.client"):
            assert member.__module__ == "service.client", name


def test_errors_form_one_tree() -> None:
    for name in service.client.__all__:
        member = getattr(service.client, name)
        if isinstance(member, type) and issubclass(member, Exception):
            assert issubclass(member, LossServiceError), name


# --- async, on the ASGI app --------------------------------------------------------------------


@pytest.fixture
async def async_client(make_client: ClientFactory) -> AsyncIterator[AsyncLossClient]:
    async with make_client() as http, AsyncLossClient(http_client=http) as client:
        yield client


@pytest.mark.anyio
async def test_async_loss_base64(async_client: AsyncLossClient) -> None:
    result = await async_client.loss(
        "cross-entropy", logits=LOGITS, labels=LABELS, return_grad=True
    )
    loss, grad = reference_ce(LOGITS, LABELS)
    assert isinstance(result, LossResult)
    assert result.name == "cross-entropy"
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert result.n_valid == 5
    assert result.weight_sum == 5
    assert result.dtype == "float32"
    assert result.grad is not None
    assert result.grad.dtype == np.float32  # base64 outputs keep their dtype
    assert result.grad.shape == LOGITS.shape
    np.testing.assert_allclose(result.grad, grad, atol=1e-6)
    assert result.per_sample is None
    assert result.grads is None


@pytest.mark.anyio
async def test_async_loss_json_encoding(make_client: ClientFactory) -> None:
    async with make_client() as http, AsyncLossClient(http_client=http, encoding="json") as client:
        result = await client.loss(
            "cross-entropy",
            logits=LOGITS.astype(np.float64),
            labels=LABELS,
            reduction="none",
            label_smoothing=np.float64(0.1),  # a NumPy scalar is an option, not a tensor
        )
    assert result.per_sample is not None
    assert result.per_sample.shape == (6,)
    assert result.per_sample[3] == 0  # the ignored label
    assert result.loss == pytest.approx(float(result.per_sample.sum()), rel=1e-12)
    assert result.dtype == "float64"


@pytest.mark.anyio
async def test_async_grads_of_losses_without_logits(async_client: AsyncLossClient) -> None:
    query = RNG.standard_normal((3, 5)).astype(np.float32)
    keys = RNG.standard_normal((4, 5)).astype(np.float32)
    result = await async_client.loss(
        "info-nce", query=query, keys=keys, labels=np.array([0, 1, 3]), return_grad=True
    )
    assert result.grad is None
    assert result.grads is not None
    assert set(result.grads) == {"query", "keys"}
    assert result.grads["query"].shape == (3, 5)
    assert result.grads["keys"].shape == (4, 5)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
@pytest.mark.anyio
async def test_async_dtypes(async_client: AsyncLossClient, dtype: Any) -> None:
    logits = LOGITS.astype(dtype)
    result = await async_client.loss(
        "cross-entropy", logits=logits, labels=LABELS, return_grad=True, grad_dtype="input"
    )
    assert result.grad is not None
    assert result.grad.dtype == np.dtype(dtype)
    loss, _ = reference_ce(logits.astype(np.float64), LABELS)
    assert result.loss == pytest.approx(loss, rel=1e-6)


@pytest.mark.anyio
async def test_async_array_likes(async_client: AsyncLossClient) -> None:
    class TensorLike:
        """Anything with __array__, as a CPU torch tensor."""

        def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
            return LOGITS

    from_object = await async_client.loss("cross-entropy", logits=TensorLike(), labels=LABELS)
    from_lists = await async_client.loss(
        "cross-entropy", logits=LOGITS.tolist(), labels=LABELS.tolist()
    )
    expected, _ = reference_ce(LOGITS, LABELS)
    assert from_object.loss == pytest.approx(expected, rel=1e-6)
    assert from_lists.loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.anyio
async def test_async_evaluate(async_client: AsyncLossClient) -> None:
    result = await async_client.evaluate(
        LOGITS,
        LABELS,
        ["cross-entropy", {"name": "focal", "gamma": 2.0, "alpha": np.full(4, 0.25)}],
    )
    assert [r.name for r in result.losses] == ["cross-entropy", "focal"]
    single = await async_client.loss("focal", logits=LOGITS, labels=LABELS, alpha=[0.25] * 4)
    assert result["focal"].loss == pytest.approx(single.loss, rel=1e-12)
    with pytest.raises(KeyError):
        result["poly1"]


@pytest.mark.anyio
async def test_async_list_losses_and_probes(async_client: AsyncLossClient) -> None:
    losses = await async_client.list_losses()
    assert [info.name for info in losses] == [spec.name for spec in LOSSES]
    ce = losses[0]
    assert ce.path == "/v1/losses/cross-entropy"
    assert [i.name for i in ce.inputs if i.required] == ["logits", "labels"]
    assert "label_smoothing" in {option.name for option in ce.options}
    assert (await async_client.healthz()).status == "ok"
    ready = await async_client.readyz()
    assert (ready.backend, ready.device) == ("numpy", "cpu")


@pytest.mark.anyio
async def test_async_infer_binary(async_client: AsyncLossClient) -> None:
    native = await async_client.loss(
        "cross-entropy", logits=LOGITS, labels=LABELS, return_grad=True
    )
    result = await async_client.infer(
        "cross-entropy", logits=LOGITS, labels=LABELS, return_grad=True
    )
    assert result.model_name == "cross-entropy"
    assert result.loss == native.loss
    assert result.grad is not None
    assert result.grad.dtype == np.float32
    np.testing.assert_array_equal(result.grad, native.grad)
    assert result.per_sample is None


@pytest.mark.anyio
async def test_async_infer_named_json_outputs(async_client: AsyncLossClient) -> None:
    result = await async_client.infer(
        "cross-entropy",
        logits=LOGITS,
        labels=LABELS,
        reduction="none",
        outputs=["per_sample"],
        binary_output=False,
    )
    assert set(result.outputs) == {"per_sample"}
    assert result.per_sample is not None
    assert result.per_sample.shape == (6,)


@pytest.mark.anyio
async def test_async_problem_details(async_client: AsyncLossClient) -> None:
    with pytest.raises(InvalidInputError) as raised:
        await async_client.loss("cross-entropy", logits=LOGITS, labels=LABELS + 10)
    error = raised.value
    assert error.status == 422
    assert error.type == "urn:loss-service:problem:invalid-input"
    assert error.title == "Invalid input"
    assert "outside [0, 4)" in error.detail
    assert error.fields == ["labels"]
    assert error.errors[0]["pointer"] == "#/labels"
    assert error.response is not None
    assert error.problem["status"] == 422
    assert isinstance(error, APIError)

    with pytest.raises(InvalidInputError) as raised:
        await async_client.loss("cross-entropy", logits=LOGITS, labels=LABELS, label_smothing=0.1)
    assert raised.value.fields == ["label_smothing"]

    with pytest.raises(NotFoundError):
        await async_client.loss("no-such-loss", logits=LOGITS, labels=LABELS)

    with pytest.raises(InvalidInputError) as raised:  # under /v2: 400 and {"error": ...}
        await async_client.infer("cross-entropy", logits=LOGITS, labels=LABELS + 10)
    assert raised.value.status == 400
    assert raised.value.type is None
    assert "outside [0, 4)" in raised.value.detail


@pytest.mark.anyio
async def test_async_api_key(make_client: ClientFactory) -> None:
    async with make_client(api_keys=["k1"]) as http:
        anonymous = AsyncLossClient(http_client=http)
        with pytest.raises(UnauthorizedError) as raised:
            await anonymous.loss("cross-entropy", logits=LOGITS, labels=LABELS)
        assert raised.value.status == 401
        assert (await anonymous.healthz()).status == "ok"  # health stays open
        keyed = AsyncLossClient(http_client=http, api_key="k1")
        assert (await keyed.loss("cross-entropy", logits=LOGITS, labels=LABELS)).n_valid == 5


# --- edge cases, on a mock transport -----------------------------------------------------------


def mock(handler: Callable[[httpx.Request], httpx.Response]) -> LossClient:
    return LossClient("http://mock", transport=httpx.MockTransport(handler))


def test_unsupported_dtype_is_refused_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with mock(handler) as client, pytest.raises(TypeError, match="complex128"):
        client.loss("cross-entropy", logits=np.zeros((2, 2), dtype=complex), labels=[0, 1])


def test_what_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "name": "cross-entropy",
                "loss": None,
                "n_valid": 0,
                "weight_sum": 0.0,
                "backend": "numpy",
                "dtype": "float64",
            },
        )

    with LossClient(
        "http://mock", api_key="s3cret", transport=httpx.MockTransport(handler)
    ) as client:
        result = client.loss("cross-entropy", logits=np.zeros((0, 3)), labels=[], empty="nan")
    assert math.isnan(result.loss)  # null is NaN
    (request,) = seen
    assert request.url.path == "/v1/losses/cross-entropy"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["user-agent"].startswith("loss-service-client/")
    import json

    body = json.loads(request.content)
    assert body["logits"] == {"dtype": "float64", "shape": [0, 3], "data": ""}
    assert body["labels"] == []
    assert body["output_encoding"] == "base64"
    assert body["empty"] == "nan"


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (200, b"not json", ResponseError),
        (200, b'{"unexpected": 1}', ResponseError),
        (502, b"<html>bad gateway</html>", APIError),
    ],
)
def test_unreadable_answers(status: int, content: bytes, expected: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content)

    with mock(handler) as client, pytest.raises(expected) as raised:
        client.loss("cross-entropy", logits=LOGITS, labels=LABELS)
    if isinstance(raised.value, APIError):
        assert raised.value.status == 502
        assert "bad gateway" in raised.value.detail


def test_encoding_is_checked() -> None:
    with pytest.raises(ValueError, match="encoding"):
        LossClient(encoding="xml")  # type: ignore[arg-type]


# --- sync, on a live server --------------------------------------------------------------------


@pytest.mark.system
def test_sync_client_on_a_live_server(server: str) -> None:
    with LossClient(server) as client:
        assert client.healthz().status == "ok"
        assert client.readyz().backend == "numpy"
        result = client.loss("cross-entropy", logits=LOGITS, labels=LABELS, return_grad=True)
        loss, grad = reference_ce(LOGITS, LABELS)
        assert result.loss == pytest.approx(loss, rel=1e-6)
        assert result.grad is not None
        np.testing.assert_allclose(result.grad, grad, atol=1e-6)

        evaluated = client.evaluate(LOGITS, LABELS, ["cross-entropy", "poly1"])
        assert evaluated["cross-entropy"].loss == result.loss
        assert len(client.list_losses()) == len(LOSSES)

        with pytest.raises(InvalidInputError) as raised:
            client.loss("cross-entropy", logits=LOGITS, labels=LABELS[:3])
        assert raised.value.status == 422


@pytest.mark.system
def test_sync_infer_large_arrays_on_a_live_server(server: str) -> None:
    logits = RNG.standard_normal((4096, 1000)).astype(np.float32)
    labels = RNG.integers(0, 1000, 4096)
    with LossClient(server) as client:
        binary = client.infer("cross-entropy", logits=logits, labels=labels, return_grad=True)
        native = client.loss("cross-entropy", logits=logits, labels=labels, return_grad=True)
    assert binary.loss == native.loss
    assert binary.grad is not None
    np.testing.assert_array_equal(binary.grad, native.grad)


@pytest.mark.system
def test_the_readme_example_runs(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Clients") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")].replace("http://127.0.0.1:8000", server)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith("float32 (512, 10)")
    assert printed[-1].startswith("422 ['labels']")


@pytest.mark.anyio
async def test_async_infer_sends_tensor_options_as_inputs(async_client: AsyncLossClient) -> None:
    """`weight` is a tensor: it travels as an input (the protocol's parameters are scalars)."""
    weight = np.array([5.0, 0.1, 1.0, 2.0])
    native = await async_client.loss("cross-entropy", logits=LOGITS, labels=LABELS, weight=weight)
    binary = await async_client.infer("cross-entropy", logits=LOGITS, labels=LABELS, weight=weight)
    unweighted = await async_client.loss("cross-entropy", logits=LOGITS, labels=LABELS)
    assert binary.loss == native.loss
    assert binary.loss != unweighted.loss
