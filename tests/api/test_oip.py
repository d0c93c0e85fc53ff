"""The Open Inference Protocol v2 under /v2, through the real `tritonclient.http` package
against a real server (JSON and binary tensors), and its error format through the ASGI app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.core.registry import BY_NAME, LOSSES
from service.engine import reduce_loss

RNG = np.random.default_rng(9)
LOGITS = (RNG.normal(size=(8, 5)) * 2).astype(np.float32)
LABELS = np.array([0, 4, 1, 1, -100, 3, 2, 0], dtype=np.int64)


@pytest.fixture
def client(server: str) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url=server.removeprefix("http://"))
    yield connection
    connection.close()


def _inputs(binary: bool) -> list[triton.InferInput]:
    logits = triton.InferInput("logits", list(LOGITS.shape), "FP32")
    logits.set_data_from_numpy(LOGITS, binary_data=binary)
    labels = triton.InferInput("labels", list(LABELS.shape), "INT64")
    labels.set_data_from_numpy(LABELS, binary_data=binary)
    return [logits, labels]


def _expected(reduction: str = "mean", **options: Any) -> Any:
    result = BY_NAME["cross-entropy"].function(LOGITS, LABELS, **options)
    return reduce_loss(result, reduction)  # type: ignore[arg-type]


@pytest.mark.system
def test_server_and_models_are_live_and_described(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "loss-service"
    assert "binary_tensor_data" in metadata["extensions"]
    for spec in LOSSES:
        assert client.is_model_ready(spec.name)
    model = client.get_model_metadata("cross-entropy")
    assert [i["name"] for i in model["inputs"]][:2] == ["logits", "labels"]
    assert {o["name"] for o in model["outputs"]} == {"loss", "per_sample", "grad"}
    info = client.get_model_metadata("info-nce")
    assert {o["name"] for o in info["outputs"]} >= {"grad_query", "grad_keys"}


@pytest.mark.system
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_engine(client: triton.InferenceServerClient, binary: bool) -> None:
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("loss", "per_sample", "grad")
    ]
    result = client.infer(
        "cross-entropy",
        _inputs(binary),
        outputs=outputs,
        parameters={"reduction": "none", "label_smoothing": 0.1},
    )
    expected = _expected("none", label_smoothing=0.1)
    np.testing.assert_allclose(result.as_numpy("loss"), [expected.loss], rtol=1e-12)
    np.testing.assert_array_equal(result.as_numpy("per_sample"), expected.per_sample)
    np.testing.assert_array_equal(result.as_numpy("grad"), expected.grads["logits"])
    assert result.as_numpy("grad").dtype == np.float32
    assert result.get_response()["model_name"] == "cross-entropy"


@pytest.mark.system
def test_default_outputs_follow_return_grad(client: triton.InferenceServerClient) -> None:
    plain = client.infer("cross-entropy", _inputs(True))
    assert plain.as_numpy("loss")[0] == pytest.approx(_expected().loss, rel=1e-12)
    assert plain.as_numpy("grad") is None
    with_grad = client.infer("cross-entropy", _inputs(True), parameters={"return_grad": True})
    np.testing.assert_array_equal(with_grad.as_numpy("grad"), _expected().grads["logits"])


@pytest.mark.system
def test_other_inputs_and_their_gradients(client: triton.InferenceServerClient) -> None:
    chosen = np.array([1.0, 0.5, -0.3])
    rejected = np.array([0.2, 0.9, -1.0])
    inputs = []
    for name, values in (("chosen", chosen), ("rejected", rejected)):
        tensor = triton.InferInput(name, [3], "FP64")
        tensor.set_data_from_numpy(values, binary_data=True)
        inputs.append(tensor)
    result = client.infer(
        "bradley-terry",
        inputs,
        outputs=[triton.InferRequestedOutput(n) for n in ("loss", "grad_chosen", "grad_rejected")],
        parameters={"beta": 0.5},
    )
    expected = reduce_loss(BY_NAME["bradley-terry"].function(chosen, rejected, beta=0.5), "mean")
    assert result.as_numpy("loss")[0] == expected.loss
    np.testing.assert_array_equal(result.as_numpy("grad_chosen"), expected.grads["chosen"])
    np.testing.assert_array_equal(result.as_numpy("grad_rejected"), expected.grads["rejected"])


@pytest.mark.system
@pytest.mark.parametrize(
    ("model", "parameters", "fragment"),
    [
        ("no-such-loss", {}, "unknown model"),
        ("cross-entropy", {"label_smothing": 0.1}, "label_smothing"),
        ("cross-entropy", {"label_smoothing": 2}, "label_smoothing"),
    ],
)
def test_errors_reach_the_client(
    client: triton.InferenceServerClient, model: str, parameters: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InferenceServerException, match=fragment):
        client.infer(model, _inputs(True), parameters=parameters)


# --- the protocol's error format, through the ASGI app ----------------------------------------

INFER = "/v2/models/cross-entropy/infer"


def _json_input(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}


LOGITS_IN = _json_input("logits", LOGITS, "FP32")
LABELS_IN = _json_input("labels", LABELS, "INT64")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": [LOGITS_IN]}, 400, "inputs.labels: Field required"),
        (
            {"inputs": [{**LOGITS_IN, "datatype": "STRING"}, LABELS_IN]},
            400,
            "datatype",
        ),
        (
            {"inputs": [LOGITS_IN, {**LABELS_IN, "shape": [3]}]},
            400,
            "needs 3",
        ),
        ({"inputs": [LOGITS_IN, LABELS_IN], "outputs": [{"name": "nope"}]}, 400, "available"),
        ({"inputs": "x"}, 400, "inputs"),
        (
            {"inputs": [LOGITS_IN, LABELS_IN], "parameters": {"weight": [1, 2, 3, 4, 5]}},
            400,
            "send it as an input",
        ),
    ],
)
async def test_errors_are_oip_errors(
    client_asgi: httpx.AsyncClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = await client_asgi.post(INFER, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error"}
    assert fragment in error["error"]


@pytest.mark.anyio
async def test_unknown_model_is_404(client_asgi: httpx.AsyncClient) -> None:
    response = await client_asgi.get("/v2/models/nope")
    assert response.status_code == 404
    assert "unknown model" in response.json()["error"]


@pytest.mark.anyio
async def test_binary_header_length_is_checked(client_asgi: httpx.AsyncClient) -> None:
    header = json.dumps({"inputs": []}).encode()
    response = await client_asgi.post(
        INFER, content=header, headers={"Inference-Header-Content-Length": "999"}
    )
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [False]])
@pytest.mark.parametrize("where", ["request", "output"])
async def test_binary_flags_must_be_booleans(
    client_asgi: httpx.AsyncClient, where: str, value: object
) -> None:
    """Regression: `binary_data_output: "false"` (a string) was taken as true, and a JSON client
    got binary tensors it could not read."""
    body: dict[str, Any] = {"inputs": [LOGITS_IN, LABELS_IN]}
    if where == "request":
        body["parameters"] = {"binary_data_output": value}
        field = "parameters.binary_data_output"
    else:
        body["outputs"] = [{"name": "loss", "parameters": {"binary_data": value}}]
        field = "outputs.0.parameters.binary_data"
    response = await client_asgi.post(INFER, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"{field}: expected true or false")


@pytest.mark.anyio
async def test_binary_flags_choose_the_form(client_asgi: httpx.AsyncClient) -> None:
    for flag, media_type in ((False, "application/json"), (True, "application/octet-stream")):
        body = {"inputs": [LOGITS_IN, LABELS_IN], "parameters": {"binary_data_output": flag}}
        response = await client_asgi.post(INFER, json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == media_type


@pytest.mark.anyio
async def test_an_output_is_asked_for_once(client_asgi: httpx.AsyncClient) -> None:
    """Regression: `outputs` naming `grad` 300 times answered 300 copies (0.4 MB in, 629 MB
    out)."""
    outputs = [{"name": "loss"}, {"name": "grad"}, {"name": "grad"}]
    response = await client_asgi.post(
        INFER, json={"inputs": [LOGITS_IN, LABELS_IN], "outputs": outputs}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("outputs.2.name: 'grad' is asked for twice")


@pytest.mark.anyio
async def test_the_number_of_outputs_is_limited(make_client: Any) -> None:
    outputs = [{"name": f"out{i}"} for i in range(3)]
    async with make_client(max_oip_outputs=2) as client:
        body = {"inputs": [LOGITS_IN, LABELS_IN], "outputs": outputs}
        response = await client.post(INFER, json=body)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "outputs: 3 entries exceed max_oip_outputs = 2"


@pytest.mark.anyio
async def test_output_elements_are_counted(make_client: Any) -> None:
    body = {"inputs": [LOGITS_IN, LABELS_IN], "outputs": [{"name": "loss"}, {"name": "grad"}]}
    async with make_client(max_output_elements=LOGITS.size + 1) as client:
        assert (await client.post(INFER, json=body)).status_code == 200
    async with make_client(max_output_elements=LOGITS.size) as client:
        response = await client.post(INFER, json=body)
    assert response.status_code == 413, response.text
    assert response.json()["error"].startswith("outputs.1: with this output the answer holds 41")


@pytest.mark.anyio
async def test_a_model_version_that_does_not_exist_is_404(client_asgi: httpx.AsyncClient) -> None:
    """Regression: any version was answered as version 1."""
    body = {"inputs": [LOGITS_IN, LABELS_IN]}
    versioned = "/v2/models/cross-entropy/versions/{}/infer"
    assert (await client_asgi.post(versioned.format(1), json=body)).status_code == 200
    for version in ("2", "latest", "0"):
        response = await client_asgi.post(versioned.format(version), json=body)
        assert response.status_code == 404, response.text
        assert set(response.json()) == {"error"}
        assert f"no version '{version}'" in response.json()["error"]
    response = await client_asgi.post("/v2/models/nope/versions/1/infer", json=body)
    assert response.status_code == 404
    assert "unknown model" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
async def test_health_answers_head(client_asgi: httpx.AsyncClient, path: str) -> None:
    assert (await client_asgi.head(path)).status_code == 200


@pytest.fixture
async def client_asgi(make_client: Any) -> Any:
    async with make_client() as http:
        yield http


def test_openapi_documents_the_protocol(tmp_path: Path) -> None:
    from service.api import create_app
    from service.config import Settings

    spec = create_app(Settings(device="cpu")).openapi()
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert "InferRequest" in spec["components"]["schemas"]


@pytest.mark.system
def test_half_precision_in_half_precision_gradient_out(
    client: triton.InferenceServerClient,
) -> None:
    logits = triton.InferInput("logits", list(LOGITS.shape), "FP16")
    logits.set_data_from_numpy(LOGITS.astype(np.float16), binary_data=True)
    labels = triton.InferInput("labels", list(LABELS.shape), "INT64")
    labels.set_data_from_numpy(LABELS, binary_data=True)
    result = client.infer(
        "cross-entropy",
        [logits, labels],
        outputs=[triton.InferRequestedOutput("grad", binary_data=True)],
        parameters={"grad_dtype": "input"},
    )
    grad = result.as_numpy("grad")
    assert grad.dtype == np.float16
    expected = _expected_from(LOGITS.astype(np.float16))
    np.testing.assert_array_equal(grad, expected.grads["logits"].astype(np.float16))


def _expected_from(logits: np.ndarray) -> Any:
    result = BY_NAME["cross-entropy"].function(logits, LABELS)
    return reduce_loss(result, "mean")
