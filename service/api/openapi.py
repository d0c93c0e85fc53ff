"""The OpenAPI document: FastAPI's, plus the shared `Tensor` schema every tensor field refers to,
and an example for every operation (service.api.examples)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.api import examples
from service.api.api_keys import effective_routes
from service.api.deps import KEY_SCHEMES, requires_key
from service.api.problems import Problem, problem_responses
from service.codecs import WIRE_DTYPES
from service.core.runs.models import BatchBody
from service.schemas.common import TENSOR_REF
from service.schemas.oip import InferRequest

TENSOR_SCHEMAS: dict[str, Any] = {
    "Tensor": {
        "description": "A tensor: nested JSON arrays of numbers (row-major), or an encoded "
        "tensor object with raw little-endian bytes in base64.",
        "anyOf": [
            {"$ref": "#/components/schemas/NestedNumbers"},
            {"$ref": "#/components/schemas/EncodedTensor"},
        ],
    },
    # Not recursive (an array of NestedNumbers) on purpose: openapi-python-client, among other
    # generators, drops every operation whose body refers to a recursive schema. Two levels are
    # spelt out; deeper ones are arrays of anything, which the service checks.
    "NestedNumbers": {
        "description": "A number, or nested arrays of numbers: row-major, every level "
        "rectangular, at most 64 levels deep.",
        "anyOf": [
            {"type": "number"},
            {
                "type": "array",
                "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]},
            },
        ],
    },
    "EncodedTensor": {
        "type": "object",
        "additionalProperties": False,
        "required": ["dtype", "shape", "data"],
        "properties": {
            "dtype": {"type": "string", "enum": list(WIRE_DTYPES)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "prod(shape) * itemsize bytes, little-endian, row-major",
            },
        },
    },
}


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with a generator that adds the tensor schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(TENSOR_SCHEMAS)
            # Bodies the routes refer to by $ref without a pydantic model in their signature.
            for model in (Problem, InferRequest):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            components[BatchBody.__name__] = _tensors_only_schema(BatchBody)
            _drop_unreachable_validation_errors(schema)
            _declare_connection_refusals(schema)
            _declare_key_schemes(schema, app)
            examples.apply(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _tensors_only_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The schema of a body of tensor fields only, which pydantic cannot write on its own: each
    field refers to the `Tensor` component, which exists only in the document."""
    fields = model.model_fields
    return {
        "title": model.__name__,
        "description": model.__doc__ or "",
        "type": "object",
        "additionalProperties": False,
        "required": [name for name, info in fields.items() if info.is_required()],
        "properties": {
            name: {"allOf": [TENSOR_REF], "description": info.description or ""}
            for name, info in fields.items()
        },
    }


def _declare_connection_refusals(schema: dict[str, Any]) -> None:
    """408 and 431 come before any route: from the server's protocol (or the body-limit
    middleware) for a head over the header limits, a slow head or a stalled body. Any operation
    may get them, in the problem form."""
    refusals = problem_responses(408, 431)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in refusals.items():
                responses.setdefault(str(status), response)


def _declare_key_schemes(schema: dict[str, Any], app: FastAPI) -> None:
    """The API key schemes, either one enough, on every operation whose route requires a key."""
    protected = {
        (route.path_format, method.lower())
        for route in effective_routes(app.routes)
        if requires_key(route)
        for method in getattr(route, "methods", None) or ()
    }
    declared = False
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if (path, method) in protected:
                operation["security"] = [{name: []} for name in KEY_SCHEMES]
                declared = True
    if declared:
        schema.setdefault("components", {})["securitySchemes"] = KEY_SCHEMES


def _drop_unreachable_validation_errors(schema: dict[str, Any]) -> None:
    """Under /v2, FastAPI's automatic 422 never happens: the protocol answers 400 instead."""
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v2"):
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
    text = json.dumps(schema["paths"])
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in text:
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
