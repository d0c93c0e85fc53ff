"""POST /v1/calibration, /v1/calibration/merge and /v1/calibration/reliability-diagram over HTTP.

Expected values come from the recorded torchmetrics / scikit-learn fixtures, or from the engine
tests' definitions; here the concern is the wire: fields, encodings, nulls, status codes.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ClientFactory
from tests.helpers import encoded

pytestmark = pytest.mark.anyio

REPORT = "/v1/calibration"
MERGE = "/v1/calibration/merge"
DIAGRAM = "/v1/calibration/reliability-diagram"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "calibration_reference.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURES.read_text(encoding="utf-8"))["cases"]
METRICS = ("ece", "mce", "rmsce", "ece_debiased", "classwise_ece", "brier", "nll", "accuracy")


def strict_json(response: httpx.Response) -> Any:
    """The body, refusing NaN and infinities (which `response.json()` would accept)."""

    def refuse(value: str) -> None:
        raise AssertionError(f"non-JSON number {value} in the response")

    return json.loads(response.text, parse_constant=refuse)


def sample(seed: int, n: int, c: int) -> tuple[list[list[float]], list[int]]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 3.0, size=(n, 1))
    return logits.tolist(), rng.integers(0, c, size=n).tolist()


async def post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
    response = await client.post(url, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return strict_json(response)


# --- /v1/calibration ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "base64"])
async def test_report_matches_the_references(client: httpx.AsyncClient, form: str) -> None:
    case = CASES[0]  # multiclass probabilities, torchmetrics + scikit-learn values
    scores = np.array(case["scores"])
    labels = np.array(case["labels"])
    body = {
        case["input"]: scores.tolist() if form == "json" else encoded(scores),
        "labels": labels.tolist() if form == "json" else encoded(labels),
        "n_bins": case["n_bins"],
        "top_k": case["top_k"],
    }
    report = await post(client, REPORT, body)
    expected = case["expected"]
    assert report["task"] == "multiclass" and report["n"] == len(labels)
    assert report["ece"] == pytest.approx(expected["ece_float64"], rel=1e-9)
    assert report["mce"] == pytest.approx(expected["mce"], rel=1e-6)
    for name in ("classwise_ece", "ece_debiased", "brier", "nll", "accuracy"):
        assert report[name] == pytest.approx(expected[name], rel=1e-9), name
    assert report["top_k_accuracy"] == [
        {"k": k, "accuracy": pytest.approx(expected["top_k_accuracy"][str(k)], rel=1e-12)}
        for k in case["top_k"]
    ]
    assert len(report["bins"]) == case["n_bins"]
    assert set(report["bins"][0]) == {"lower", "upper", "count", "mean_confidence", "accuracy"}
    assert sum(b["count"] for b in report["bins"]) == len(labels)
    assert report["temperature"] is None and report["bootstrap"] is None
    assert report["smooth_ece"] is None and report["backend"] == "numpy"
    state = report["state"]
    assert state["version"] == 1 and state["mergeable"] is True and state["n"] == len(labels)
    assert len(state["edges"]) == case["n_bins"] + 1


async def test_binary_probabilities(client: httpx.AsyncClient) -> None:
    case = next(c for c in CASES if c["name"] == "binary-probs")
    body = {"probs": case["scores"], "labels": case["labels"], "n_bins": case["n_bins"]}
    report = await post(client, REPORT, body)
    assert report["task"] == "binary" and report["n_classes"] == 2
    for name in ("ece", "mce", "rmsce", "brier", "nll"):
        assert report[name] == pytest.approx(case["expected"][name], rel=1e-9), name


async def test_every_extra_on_request(client: httpx.AsyncClient) -> None:
    logits, labels = sample(1, 300, 4)
    body = {
        "logits": logits,
        "labels": labels,
        "fit_temperature": True,
        "n_bootstrap": 30,
        "confidence_level": 0.8,
        "seed": 5,
        "smooth_ece": True,
    }
    report = await post(client, REPORT, body)
    temperature = report["temperature"]
    assert set(temperature) == {
        "value",
        "converged",
        "iterations",
        "nll_before",
        "nll_after",
        "ece_before",
        "ece_after",
    }
    assert temperature["value"] > 1 and temperature["nll_after"] <= temperature["nll_before"]
    bootstrap = report["bootstrap"]
    assert (bootstrap["n_bootstrap"], bootstrap["confidence_level"], bootstrap["seed"]) == (
        30,
        0.8,
        5,
    )
    for name in ("ece", "mce", "brier", "nll", "accuracy"):
        assert bootstrap[name]["lower"] <= bootstrap[name]["upper"], name
    assert report["smooth_ece"]["value"] == pytest.approx(
        report["smooth_ece"]["bandwidth"], abs=1e-6
    )
    again = await post(client, REPORT, body)
    assert again["bootstrap"] == bootstrap


async def test_empty_input_answers_nulls_never_nan(client: httpx.AsyncClient) -> None:
    body = {"probs": [], "labels": [], "top_k": [1], "n_bootstrap": 5, "smooth_ece": True}
    report = await post(client, REPORT, body)
    assert report["task"] == "binary" and report["n"] == 0
    for name in (*METRICS, "mean_confidence"):
        assert report[name] is None, name
    assert report["top_k_accuracy"] == [{"k": 1, "accuracy": None}]
    assert report["bootstrap"]["ece"] is None and report["smooth_ece"] is None


async def test_bootstrap_is_capped_by_the_setting(make_client: ClientFactory) -> None:
    async with make_client(max_bootstrap=10) as client:
        body = {"probs": [0.2, 0.9], "labels": [0, 1]}
        response = await client.post(REPORT, json={**body, "n_bootstrap": 11})
        assert response.status_code == 422
        problem = response.json()
        assert problem["detail"].startswith("n_bootstrap: expected at most 10")
        assert problem["errors"][0]["field"] == "n_bootstrap"
        assert (await client.post(REPORT, json={**body, "n_bootstrap": 10})).status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"probs": [[0.5, 0.5], [0.2, 0.8]]}, "logits"),  # both logits and probs
        ({"logits": None}, "logits"),  # neither
        ({"labels": [0, 3]}, "labels"),
        ({"labels": [0]}, "labels"),
        ({"n_bins": 0}, "n_bins"),
        ({"binning": "equal"}, "binning"),
        ({"top_k": [0]}, "top_k[0]"),
        ({"confidence_level": 1.0}, "confidence_level"),
        ({"n_bootstrap": -1}, "n_bootstrap"),
        ({"seed": -3}, "seed"),
        ({"n_bins_typo": 3}, "n_bins_typo"),
    ],
)
async def test_invalid_requests_name_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    body = {"logits": [[1.0, 0.0], [0.0, 2.0]], "labels": [0, 1], **change}
    response = await client.post(REPORT, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert any(error["field"] == field for error in problem["errors"]), problem
    # Details name the field as pydantic does (`top_k.0`), `errors` also as a JSON pointer.
    assert problem["detail"].startswith(field.replace("[", ".").rstrip("]")), problem["detail"]


async def test_probabilities_must_be_distributions(client: httpx.AsyncClient) -> None:
    response = await client.post(REPORT, json={"probs": [[0.5, 0.6]], "labels": [0]})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("probs: rows must sum to 1")


async def test_too_many_classes_is_413(make_client: ClientFactory) -> None:
    async with make_client(max_classes=3) as client:
        response = await client.post(REPORT, json={"probs": [[0.25] * 4], "labels": [0]})
        assert response.status_code == 413
        assert response.json()["errors"][0]["field"] == "probs"


async def test_brier_of_two_column_scores_is_the_multiclass_sum(client: httpx.AsyncClient) -> None:
    """As documented: [N, 2] scores are multiclass, so their Brier score sums both classes and
    is twice the binary value of [N] scores (scikit-learn's brier_score_loss)."""
    p = np.array([0.9, 0.2, 0.65, 0.4])
    labels = [1, 0, 0, 1]
    binary = await post(client, REPORT, {"probs": p.tolist(), "labels": labels})
    two_columns = np.stack([1 - p, p], axis=1).tolist()
    multiclass = await post(client, REPORT, {"probs": two_columns, "labels": labels})
    assert binary["brier"] == pytest.approx(np.mean((p - labels) ** 2), rel=1e-12)
    assert multiclass["brier"] == pytest.approx(2 * binary["brier"], rel=1e-12)


# --- /v1/calibration/merge ---------------------------------------------------------------------


async def test_merge_of_shards_equals_the_union(client: httpx.AsyncClient) -> None:
    logits, labels = sample(2, 500, 5)
    options = {"n_bins": 10, "top_k": [1, 3]}
    union = await post(client, REPORT, {"logits": logits, "labels": labels, **options})
    states = []
    for a, b in ((0, 120), (120, 121), (121, 500)):
        shard = await post(
            client, REPORT, {"logits": logits[a:b], "labels": labels[a:b], **options}
        )
        states.append(shard["state"])
    merged = await post(client, MERGE, {"states": states})
    for name in METRICS:
        assert merged[name] == pytest.approx(union[name], rel=1e-9), name
    assert merged["top_k_accuracy"] == union["top_k_accuracy"]
    assert [b["count"] for b in merged["bins"]] == [b["count"] for b in union["bins"]]
    assert merged["state"]["n"] == 500
    assert merged["temperature"] is None and merged["bootstrap"] is None
    assert merged["smooth_ece"] is None
    # A merged state merges again.
    twice = await post(client, MERGE, {"states": [merged["state"], union["state"]]})
    assert twice["n"] == 1000 and twice["ece"] == pytest.approx(union["ece"], rel=1e-9)


async def test_merged_counts_past_2_to_the_53_are_a_422_naming_states(
    client: httpx.AsyncClient,
) -> None:
    """Regression: 1100 states of counts near 2^53 added up past int64 and the merged report
    answered negative counts."""
    state = (await post(client, REPORT, {"probs": [0.75], "labels": [1], "n_bins": 1}))["state"]
    near = 2**53 - 1
    state.update(n=near, n_correct=near, sum_brier=0.0, sum_nll=0.0, classwise=None)
    state["bins"] = {"count": [near], "sum_confidence": [near * 0.75], "sum_correct": [near]}
    assert (await client.post(MERGE, json={"states": [state]})).status_code == 200
    response = await client.post(MERGE, json={"states": [state] * 1100})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [error["field"] for error in problem["errors"]] == ["states"]
    assert "2^53" in problem["detail"]


async def test_incompatible_states_are_422(client: httpx.AsyncClient) -> None:
    logits, labels = sample(3, 40, 3)
    a = (await post(client, REPORT, {"logits": logits, "labels": labels}))["state"]
    b = (await post(client, REPORT, {"logits": logits, "labels": labels, "n_bins": 10}))["state"]
    q = await post(client, REPORT, {"logits": logits, "labels": labels, "binning": "quantile"})
    cases = [
        ([a, b], "states[1].n_bins"),
        ([a, q["state"]], "states[1].binning"),
        ([a, {**a, "version": 2}], "states[1].version"),
        ([a, {**a, "n": a["n"] + 1}], "states[1].bins.count"),
    ]
    for states, field in cases:
        response = await client.post(MERGE, json={"states": states})
        assert response.status_code == 422, (field, response.text)
        problem = response.json()
        assert problem["detail"].startswith(f"{field}: "), problem["detail"]
        assert problem["errors"][0]["field"] == field
    response = await client.post(MERGE, json={"states": []})
    assert response.status_code == 422
    response = await client.post(MERGE, json={"states": [{**a, "extra": 1}]})
    assert response.status_code == 422 and "states.0.extra" in response.json()["detail"]


# --- /v1/calibration/reliability-diagram -------------------------------------------------------


async def test_png_diagram_decodes_at_its_size(client: httpx.AsyncClient) -> None:
    logits, labels = sample(4, 400, 3)
    response = await client.post(DIAGRAM, json={"logits": logits, "labels": labels})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "PNG"
        assert image.size == (600, 700)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # a drawing, not a blank canvas


async def test_svg_diagram_parses_with_ece_in_the_title(client: httpx.AsyncClient) -> None:
    logits, labels = sample(5, 300, 4)
    body = {"logits": logits, "labels": labels, "n_bins": 10}
    response = await client.post(f"{DIAGRAM}?format=svg", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert (root.get("width"), root.get("height")) == ("432pt", "504pt")
    report = await post(client, REPORT, body)
    # Text stays text in the SVG (svg.fonttype: none): the title is there as written.
    assert f"ECE = {100 * report['ece']:.2f}%" in response.text


async def test_diagram_of_binary_and_empty_inputs(client: httpx.AsyncClient) -> None:
    bodies: list[dict[str, Any]] = [
        {"probs": [0.1, 0.8, 1.0], "labels": [0, 1, 1]},
        {"probs": [], "labels": []},
    ]
    for body in bodies:
        response = await client.post(DIAGRAM, json=body)
        assert response.status_code == 200
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (600, 700)


async def test_diagram_errors(client: httpx.AsyncClient) -> None:
    body = {"logits": [[0.0, 1.0]], "labels": [1]}
    response = await client.post(f"{DIAGRAM}?format=gif", json=body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "query.format"
    response = await client.post(DIAGRAM, json={**body, "fit_temperature": True})
    assert response.status_code == 422  # an option the diagram does not use is not ignored
    response = await client.post(DIAGRAM, json={**body, "labels": [2]})
    assert response.status_code == 422 and response.json()["detail"].startswith("labels: ")


async def test_diagram_bins_are_limited(make_client: ClientFactory) -> None:
    """A figure costs time per bin (1000 bins: ~10 s of matplotlib, while other figures wait)."""
    body = {"probs": [0.2, 0.9], "labels": [0, 1]}
    async with make_client(max_diagram_bins=20) as client:
        assert (await client.post(DIAGRAM, json={**body, "n_bins": 20})).status_code == 200
        response = await client.post(DIAGRAM, json={**body, "n_bins": 21})
        assert response.status_code == 413, response.text
        problem = response.json()
        assert problem["detail"] == "n_bins: 21 bins exceed max_diagram_bins = 20 for a diagram"
        assert [error["field"] for error in problem["errors"]] == ["n_bins"]
        # the report itself has no such limit
        assert (await client.post(REPORT, json={**body, "n_bins": 1000})).status_code == 200


async def test_routes_require_the_api_key(make_client: ClientFactory) -> None:
    async with make_client(api_keys="k1") as client:
        body = {"probs": [0.5], "labels": [1]}
        for url in (REPORT, DIAGRAM):
            assert (await client.post(url, json=body)).status_code == 401
        response = await client.post(REPORT, json=body, headers={"X-API-Key": "k1"})
        assert response.status_code == 200


async def test_openapi_declares_the_calibration_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    report = spec["paths"]["/v1/calibration"]["post"]
    merge = spec["paths"]["/v1/calibration/merge"]["post"]
    diagram = spec["paths"]["/v1/calibration/reliability-diagram"]["post"]
    ids = [op["operationId"] for op in (report, merge, diagram)]
    assert ids == ["calibration", "calibration_merge", "reliability_diagram"]
    for operation in (report, merge, diagram):
        assert {"200", "401", "413", "422", "500", "503"} <= set(operation["responses"])
    assert set(diagram["responses"]["200"]["content"]) == {"image/png", "image/svg+xml"}
    [parameter] = diagram["parameters"]
    assert parameter["name"] == "format" and parameter["schema"]["enum"] == ["png", "svg"]
    schemas = spec["components"]["schemas"]
    request = schemas["CalibrationRequest"]["properties"]
    assert request["n_bins"]["default"] == 15 and request["binning"]["default"] == "uniform"
    assert request["confidence_level"]["default"] == 0.95 and request["n_bootstrap"]["default"] == 0
    assert (
        request["fit_temperature"]["default"] is False and request["smooth_ece"]["default"] is False
    )
    assert schemas["CalibrationRequest"]["required"] == ["labels"]
    response = schemas["CalibrationResponse"]["properties"]
    for name in ("temperature", "bootstrap", "smooth_ece"):
        assert "Not mergeable" in response[name]["description"], name
    assert "not mergeable" in request["binning"]["description"]
