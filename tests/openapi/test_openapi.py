"""The OpenAPI document: the committed copy is current, and it declares what clients rely on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api import create_app
from service.config import Settings
from service.core.registry import LOSSES

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
PROBLEM = "application/problem+json"
TENSOR_REF = "#/components/schemas/Tensor"


# Building the document fails while schemas.py refers to `Tensor` from a required field with a
# description: pydantic looks the $ref up among its own definitions and raises KeyError.
def build_spec() -> dict[str, Any]:
    """The document as the app generates it, through a JSON round trip like the file's."""
    spec: dict[str, Any] = json.loads(json.dumps(create_app(Settings(device="cpu")).openapi()))
    return spec


def operations(spec: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (method, path, operation)."""
    found = {}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            found[operation["operationId"]] = (method, path, operation)
    return found


def refs(node: object) -> list[str]:
    """Every `$ref` anywhere under `node`."""
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def refers_to_tensor(schema: dict[str, Any]) -> bool:
    """A field schema that is the Tensor ref: bare, wrapped in allOf, or optional (anyOf)."""
    options = [schema, *schema.get("allOf", []), *schema.get("anyOf", [])]
    return any(option.get("$ref") == TENSOR_REF for option in options)


def test_committed_document_is_current() -> None:
    spec = build_spec()
    assert COMMITTED.is_file(), f"{COMMITTED.name} is missing: run `make openapi`"
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed == spec, "openapi/openapi.json is out of date: run `make openapi`"


def test_operation_ids() -> None:
    found = operations(build_spec())
    for spec in LOSSES:  # one stable, snake_case id per loss, at the loss's own path
        assert found[spec.name.replace("-", "_")][:2] == ("post", f"/v1/losses/{spec.name}")
    assert found["list_losses"][:2] == ("get", "/v1/losses")
    assert found["evaluate"][:2] == ("post", "/v1/evaluate")
    assert found["healthz"][:2] == ("get", "/healthz")
    assert found["readyz"][:2] == ("get", "/readyz")
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", operation_id) for operation_id in found)


def test_every_post_declares_its_problems() -> None:
    posts = [
        op
        for method, path, op in operations(build_spec()).values()
        if method == "post" and path.startswith("/v1/")
    ]
    assert len(posts) >= len(LOSSES) + 1
    for operation in posts:
        responses = operation["responses"]
        for status in ("401", "413", "422", "500", "503"):
            assert status in responses, (operation["operationId"], status)
            schema = responses[status]["content"][PROBLEM]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}
        success = "201" if operation["operationId"] == "create_run" else "200"
        media_types = set(responses[success]["content"])
        if operation["operationId"] == "reliability_diagram":  # the one image answer
            assert media_types == {"image/png", "image/svg+xml"}
        else:
            assert "application/json" in media_types


def test_components() -> None:
    schemas = build_spec()["components"]["schemas"]
    for name in ("Tensor", "NestedNumbers", "EncodedTensor", "Problem", "FieldError"):
        assert name in schemas, name
    # FastAPI's own 422 body is replaced by Problem, so its schemas must not appear.
    assert "HTTPValidationError" not in schemas
    assert set(schemas["Problem"]["properties"]) == {"type", "title", "status", "detail", "errors"}
    encoded = schemas["EncodedTensor"]
    assert encoded["required"] == ["dtype", "shape", "data"]
    assert "bfloat16" in encoded["properties"]["dtype"]["enum"]


def test_every_ref_resolves() -> None:
    spec = build_spec()
    schemas = spec["components"]["schemas"]
    prefix = "#/components/schemas/"
    for ref in refs(spec):
        assert ref.startswith(prefix), ref
        assert ref.removeprefix(prefix) in schemas, ref


def test_tensor_fields_refer_to_tensor() -> None:
    schemas = build_spec()["components"]["schemas"]
    tensor_fields = {
        "CrossEntropyRequest": ("logits", "labels", "weight"),
        "BinaryCrossEntropyRequest": ("logits", "labels", "weight", "pos_weight"),
        "LossResponse": ("per_sample", "grad"),
    }
    for model, fields in tensor_fields.items():
        properties = schemas[model]["properties"]
        for field in fields:
            assert refers_to_tensor(properties[field]), (model, field, properties[field])
    for model in ("CrossEntropyRequest", "BinaryCrossEntropyRequest"):
        assert set(schemas[model]["required"]) == {"logits", "labels"}
        assert schemas[model]["additionalProperties"] is False


def test_option_defaults() -> None:
    schemas = build_spec()["components"]["schemas"]
    ce = schemas["CrossEntropyRequest"]["properties"]
    assert ce["ignore_index"]["default"] == -100
    assert ce["label_smoothing"]["default"] == 0
    assert ce["z_loss"]["default"] == 0
    assert ce["reduction"]["default"] == "mean"
    assert ce["reduction"]["enum"] == ["mean", "sum", "none"]
    assert ce["return_grad"]["default"] is False
    assert ce["empty"]["default"] == "zero"
    bce = schemas["BinaryCrossEntropyRequest"]["properties"]
    assert bce["reduction"]["default"] == "mean"


@pytest.mark.anyio
async def test_served_document_equals_generated(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.json() == build_spec()


def test_the_document_is_the_same_on_every_python() -> None:
    """Python 3.13 renamed the reason phrases of 413 and 422 (RFC 9110's names); the document
    uses RFC 9110's on every interpreter, so the committed copy is current on all of them."""
    descriptions: dict[str, set[str]] = {"413": set(), "422": set()}
    for _, _, operation in operations(build_spec()).values():
        for status, response in operation["responses"].items():
            if status in descriptions:
                descriptions[status].add(response["description"])
    assert descriptions["413"] == {"Content Too Large"}
    assert descriptions["422"] <= {"Unprocessable Content", "Validation Error"}
