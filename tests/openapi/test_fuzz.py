"""Schemathesis over every operation of the OpenAPI document, with valid and invalid data.

Each operation gets the schema's examples, schemathesis' coverage cases (boundary values,
missing and null fields, wrong types) and `MAX_EXAMPLES` generated bodies in each of the
positive and negative modes. Every answer must be documented for its operation (status, content
type, body schema) and none may be a 5xx. Generation is derandomized, so a run is reproducible;
`FUZZ_EXAMPLES=200 pytest tests/openapi/test_fuzz.py` searches deeper.

What this found, and the fixes, are pinned as plain tests in tests/api/test_limits.py.
"""

from __future__ import annotations

import os
from typing import Any, cast

import pytest
import schemathesis
import schemathesis.python.asgi
from hypothesis import HealthCheck, settings
from requests.structures import CaseInsensitiveDict
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import ASGIApp
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from service.api import create_app
from service.config import Settings

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
# Per example; a generous bound that a hang or a quadratic blow-up still exceeds.
DEADLINE_MS = 10_000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# Small limits keep every generated request cheap; the limits' own answers (413) are part of
# what the document declares.
LIMITS = {"max_elements": 4096, "max_request_elements": 8192, "max_bootstrap": 20}
APP = create_app(Settings(device="cpu", **LIMITS))  # type: ignore[arg-type]
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
)

# The same service with an API key: generated credentials (any header value) must get 401, and
# every operation that declares the key schemes must refuse a request without the key or with
# a wrong one (`ignored_auth` replays each successful request so).
KEY = "fuzz-key-0123"
KEYED_APP = create_app(Settings(device="cpu", api_keys=[KEY], **LIMITS))  # type: ignore[arg-type]
keyed_schema = schemathesis.openapi.from_asgi("/openapi.json", KEYED_APP)
keyed_schema.config.generation.update(modes=[GenerationMode.POSITIVE], max_examples=3)
keyed_schema.config.phases.update(phases=["examples", "fuzzing"])


def _warm_up() -> None:
    """The first plot pays matplotlib's start-up (its font cache on a fresh machine), which
    would otherwise count against the first example's deadline. The kernels' warm-up ends here
    too: every later app of this process is ready at once, and /readyz never answers 503."""
    body: dict[str, Any] = {"probs": [0.2, 0.9], "labels": [0, 1]}
    # Its ASGI type names dict where Starlette's (the app's) names MutableMapping.
    with schemathesis.python.asgi.get_client(cast("ASGIApp", APP)) as client:
        response = client.post("/v1/calibration/reliability-diagram?format=svg", json=body)
        assert APP.state.warm_up.wait(300)
    assert response.status_code == 200, response.text


_warm_up()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=DEADLINE_MS,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms_and_never_fails(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)


@keyed_schema.parametrize()
@settings(max_examples=3, deadline=DEADLINE_MS, derandomize=True, database=None)
def test_keys_are_enforced_where_declared(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(checks=CHECKS)  # whatever credentials were generated
    if case.operation.definition.raw.get("security"):
        generated = {"authorization", "x-api-key"}
        kept = {k: v for k, v in (case.headers or {}).items() if k.lower() not in generated}
        case.headers = CaseInsensitiveDict(kept)
        case.call_and_validate(headers={"X-API-Key": KEY}, checks=[*CHECKS, ignored_auth])
