"""Every loss of the catalogue over HTTP, `GET /v1/losses`, and `POST /v1/evaluate`.

The engine functions are checked against outside references in the engine tests; here the point
is the plumbing: every option reaches the engine, every endpoint is served and described, and
/v1/evaluate gives exactly the numbers of the individual endpoints.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from service.core.registry import BY_NAME, LOSSES
from service.engine import reduce_loss
from tests.helpers import encoded

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(5)
LOGITS = (RNG.normal(size=(6, 4)) * 2).round(3)
LABELS = [0, 3, 1, -100, 2, 2]
TRANSITION = (np.full((4, 4), 0.1) + np.eye(4) * 0.6).tolist()

# Per softmax-family loss: options that differ from the defaults, so that dropping one would
# change the answer.
OPTIONS: dict[str, dict[str, Any]] = {
    "cross-entropy": {"label_smoothing": 0.15, "z_loss": 0.01, "weight": [1.0, 2.0, 0.5, 1.5]},
    "focal": {"gamma": 1.5, "alpha": [0.25, 0.5, 0.75, 1.0]},
    "poly1": {"epsilon": 2.5},
    "symmetric-cross-entropy": {"alpha": 0.3, "beta": 0.7, "log_zero": -6.0},
    "generalized-cross-entropy": {"q": 0.4},
    "forward-corrected-cross-entropy": {"transition_matrix": TRANSITION},
    "logit-adjusted-cross-entropy": {"class_counts": [100.0, 10.0, 5.0, 1.0], "tau": 0.8},
}


def engine_reference(name: str, options: dict[str, Any], reduction: str = "mean") -> Any:
    arrays = {k: np.asarray(v) if isinstance(v, list) else v for k, v in options.items()}
    result = BY_NAME[name].function(LOGITS, np.array(LABELS), **arrays)
    return reduce_loss(result, reduction)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(OPTIONS))
async def test_each_endpoint_passes_every_option(client: httpx.AsyncClient, name: str) -> None:
    body = {"logits": LOGITS.tolist(), "labels": LABELS, "return_grad": True, **OPTIONS[name]}
    response = await client.post(f"/v1/losses/{name}", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = engine_reference(name, OPTIONS[name])
    assert result["name"] == name
    assert result["loss"] == expected.loss
    np.testing.assert_array_equal(result["grad"], expected.grads["logits"])
    assert result["n_valid"] == 5
    # And the options matter: the defaults give another value.
    defaults = await client.post(
        f"/v1/losses/{name}",
        json={"logits": LOGITS.tolist(), "labels": LABELS, **_required_only(name)},
    )
    assert defaults.json()["loss"] != result["loss"]


def _required_only(name: str) -> dict[str, Any]:
    if name == "forward-corrected-cross-entropy":
        return {"transition_matrix": np.eye(4).tolist()}
    if name == "logit-adjusted-cross-entropy":
        return {"class_counts": [1.0, 1.0, 1.0, 1.0]}
    return {}


async def test_class_balanced_weights_over_http(client: httpx.AsyncClient) -> None:
    body = {"logits": LOGITS.tolist(), "labels": LABELS, "class_counts": [50, 20, 5, 1]}
    response = await client.post("/v1/losses/cross-entropy", json=body)
    assert response.status_code == 200, response.text
    expected = engine_reference("cross-entropy", {"class_counts": [50.0, 20.0, 5.0, 1.0]})
    assert response.json()["loss"] == expected.loss
    both = await client.post("/v1/losses/cross-entropy", json={**body, "weight": [1, 1, 1, 1]})
    assert both.status_code == 422
    assert both.json()["errors"][0]["field"] == "weight"


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("focal", {"gamma": -1}, "gamma"),
        ("generalized-cross-entropy", {"q": 0}, "q"),
        (
            "forward-corrected-cross-entropy",
            {"transition_matrix": [[1.0, 0.0]]},
            "transition_matrix",
        ),
        ("logit-adjusted-cross-entropy", {}, "class_prior"),
        ("poly1", {"labels": [0, 9, 1, 1, 1, 1]}, "labels"),
    ],
)
async def test_bad_options_are_422_naming_the_field(
    client: httpx.AsyncClient, name: str, options: dict[str, Any], field: str
) -> None:
    body = {"logits": LOGITS.tolist(), "labels": LABELS, **options}
    response = await client.post(f"/v1/losses/{name}", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field


async def test_catalogue_lists_every_loss_with_its_options(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/losses")
    assert response.status_code == 200
    catalogue = response.json()
    entries = {entry["name"]: entry for entry in catalogue["losses"]}
    assert list(entries) == [spec.name for spec in LOSSES]
    for spec in LOSSES:
        entry = entries[spec.name]
        assert entry["path"] == f"/v1/losses/{spec.name}"
        assert entry["reference"] == spec.reference
        required = {i["name"] for i in entry["inputs"] if i["required"]}
        assert required == {
            name for name, info in spec.request.model_fields.items() if info.is_required()
        }
        assert entry["inputs"][0]["required"]
    focal = {option["name"]: option for option in entries["focal"]["options"]}
    assert focal["gamma"]["default"] == 2.0
    assert focal["gamma"]["json_schema"]["minimum"] == 0.0
    gce = {option["name"]: option for option in entries["generalized-cross-entropy"]["options"]}
    assert gce["q"]["json_schema"]["exclusiveMinimum"] == 0.0
    assert {o["name"] for o in catalogue["common_options"]} >= {"reduction", "return_grad"}


# --- /v1/evaluate ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["json", "base64"])
async def test_evaluate_equals_the_individual_endpoints(
    client: httpx.AsyncClient, form: str
) -> None:
    logits: Any = LOGITS.tolist() if form == "json" else encoded(LOGITS.astype(np.float32))
    items = [
        {"name": name, **options, "return_grad": True, "reduction": reduction}
        for (name, options), reduction in zip(
            OPTIONS.items(), ["mean", "sum", "none", "mean", "sum", "none", "mean"], strict=True
        )
    ]
    items.append({"name": "binary-cross-entropy", "reduction": "sum"})
    labels: Any = LABELS
    response = await client.post(
        "/v1/evaluate", json={"logits": logits, "labels": labels, "losses": items[:-1]}
    )
    assert response.status_code == 200, response.text
    answers = response.json()["losses"]
    assert [a["name"] for a in answers] == [item["name"] for item in items[:-1]]
    for item, answer in zip(items[:-1], answers, strict=True):
        name = item["name"]
        single = await client.post(
            f"/v1/losses/{name}",
            json={
                "logits": logits,
                "labels": labels,
                **{k: v for k, v in item.items() if k != "name"},
            },
        )
        assert single.status_code == 200, single.text
        assert answer == single.json(), name
    # BCE takes the upload too, when the labels have the logits' shape.
    targets = (RNG.uniform(size=LOGITS.shape) > 0.5).astype(float).tolist()
    bce = await client.post(
        "/v1/evaluate", json={"logits": logits, "labels": targets, "losses": items[-1:]}
    )
    alone = await client.post(
        "/v1/losses/binary-cross-entropy",
        json={"logits": logits, "labels": targets, "reduction": "sum"},
    )
    assert bce.json()["losses"][0] == alone.json()


async def test_evaluate_errors_point_into_the_losses_list(client: httpx.AsyncClient) -> None:
    base = {"logits": LOGITS.tolist(), "labels": LABELS}
    bad_weight = await client.post(
        "/v1/evaluate",
        json={
            **base,
            "losses": [{"name": "poly1"}, {"name": "cross-entropy", "weight": [1, -1, 1, 1]}],
        },
    )
    assert bad_weight.status_code == 422
    assert bad_weight.json()["errors"][0]["pointer"] == "#/losses/1/weight"
    unknown = await client.post("/v1/evaluate", json={**base, "losses": [{"name": "hinge"}]})
    assert unknown.status_code == 422
    assert "cross-entropy" in unknown.json()["detail"]
    engine_option = await client.post(
        "/v1/evaluate",
        json={**base, "losses": [{"name": "logit-adjusted-cross-entropy"}]},
    )
    assert engine_option.status_code == 422
    assert engine_option.json()["errors"][0]["pointer"] == "#/losses/0/class_prior"
    stray = await client.post(
        "/v1/evaluate", json={**base, "losses": [{"name": "poly1", "gamma": 2}]}
    )
    assert stray.status_code == 422


async def test_evaluate_calibration_equals_the_calibration_endpoint(
    client: httpx.AsyncClient,
) -> None:
    labels = [0, 3, 1, 1, 2, 2]
    options = {"n_bins": 5, "top_k": [2], "fit_temperature": True}
    body = {"logits": LOGITS.tolist(), "labels": labels, "calibration": options}
    response = await client.post("/v1/evaluate", json={**body, "losses": [{"name": "poly1"}]})
    assert response.status_code == 200, response.text
    alone = await client.post(
        "/v1/calibration", json={"logits": LOGITS.tolist(), "labels": labels, **options}
    )
    assert response.json()["calibration"] == alone.json()
    bad = await client.post("/v1/evaluate", json={**body, "calibration": {"n_bins": 0}})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["pointer"] == "#/calibration/n_bins"


async def test_evaluate_with_no_losses_answers_an_empty_list(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/evaluate", json={"logits": LOGITS.tolist(), "labels": LABELS})
    assert response.status_code == 200
    assert response.json() == {"losses": [], "calibration": None}


# --- losses whose inputs are not (logits, class labels) ---------------------------------------

VECTORS = RNG.normal(size=(4, 3)).round(3)
OTHER_BODIES: dict[str, dict[str, Any]] = {
    "sigmoid-focal": {
        "logits": LOGITS.tolist(),
        "labels": (RNG.uniform(size=LOGITS.shape) > 0.5).astype(float).tolist(),
        "alpha": 0.4,
        "gamma": 1.0,
    },
    "kl-divergence": {
        "logits": LOGITS.tolist(),
        "target_logits": (LOGITS[::-1] * 0.5).tolist(),
        "temperature": 2.0,
    },
    "bradley-terry": {
        "chosen": [1.0, 0.5, -0.2],
        "rejected": [0.2, 0.7, -1.0],
        "ref_chosen": [0.1, 0.1, 0.0],
        "ref_rejected": [0.0, 0.3, -0.5],
        "beta": 0.5,
        "margin": 0.1,
    },
    "info-nce": {
        "query": VECTORS.tolist(),
        "keys": VECTORS[::-1].tolist(),
        "labels": [3, 2, 1, 0],
        "temperature": 0.5,
    },
    "triplet-margin": {
        "anchor": VECTORS.tolist(),
        "positive": (VECTORS + 0.3).tolist(),
        "negative": (VECTORS[::-1]).tolist(),
        "margin": 2.0,
        "swap": True,
    },
    "mse": {"predictions": VECTORS.tolist(), "targets": VECTORS[::-1].tolist()},
    "mae": {"predictions": VECTORS.tolist(), "targets": VECTORS[::-1].tolist()},
    "huber": {"predictions": VECTORS.tolist(), "targets": VECTORS[::-1].tolist(), "delta": 0.5},
}


@pytest.mark.parametrize("name", sorted(OTHER_BODIES))
async def test_other_endpoints_answer_what_the_engine_computes(
    client: httpx.AsyncClient, name: str
) -> None:
    body = OTHER_BODIES[name]
    response = await client.post(f"/v1/losses/{name}", json={**body, "return_grad": True})
    assert response.status_code == 200, response.text
    result = response.json()
    arrays = {k: np.asarray(v) if isinstance(v, list) else v for k, v in body.items()}
    expected = reduce_loss(BY_NAME[name].function(**arrays), "mean")
    assert result["loss"] == expected.loss
    for input_name, grad in expected.grads.items():
        returned = result["grad"] if input_name == "logits" else result["grads"][input_name]
        np.testing.assert_array_equal(returned, grad)
    if "logits" not in expected.grads:
        assert result["grad"] is None
        assert set(result["grads"]) == set(expected.grads)


def test_every_loss_route_is_on_the_apps_own_router() -> None:
    """The path of small requests: each loss's POST route is matched directly, not through an
    included router (whose context FastAPI 0.165 resolves on every request first)."""
    from service.api import create_app
    from service.api.routes.losses import LossRoute
    from service.config import Settings

    app = create_app(Settings())
    direct = {
        route.path
        for route in app.router.routes
        if isinstance(route, LossRoute) and route.methods == {"POST"}
    }
    assert direct == {f"/v1/losses/{spec.name}" for spec in LOSSES}
