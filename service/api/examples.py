"""An example for every operation of the OpenAPI document, keyed by operation id.

Swagger UI fills "Try it out" with them and ReDoc shows them as samples; without them both make
bodies up from the schemas (`"logits": []`), which the service rejects. Each example is a request
the service answers with the operation's documented success status
(tests/openapi/test_examples.py sends every one), so the numbers are small and realistic:

- `REQUEST_BODIES`: named JSON bodies (OpenAPI Example objects) of the operations with a body;
- `PARAMETERS`: a value for each required path parameter;
- `RESPONSES`: for the operations that take no input, an answer to show instead.

`apply` writes them into the generated document (service.api.openapi), so the routes stay as
they are: a new operation needs an entry here, and the test fails until it has one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service import __version__
from service.api.inference import MODEL_VERSION, server_metadata
from service.core.registry import BY_NAME
from service.engine import calibration
from service.schemas import LossCatalogue, common_options, describe_loss

LOGITS = [[2.0, 0.5, -1.0], [0.1, 3.0, 0.2]]
LABELS = [0, 2]
BINARY_LOGITS = [[1.5, -0.5], [0.3, 2.0]]
BINARY_LABELS = [[1.0, 0.0], [0.0, 1.0]]
# Four samples of three classes, one of them misclassified with some confidence.
CALIBRATION_LOGITS = [[2.0, 0.5, -1.0], [0.1, 3.0, 0.2], [1.0, 1.2, 0.9], [4.0, 0.0, 0.0]]
CALIBRATION_LABELS = [0, 2, 1, 0]


def _named(summary: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "value": value}


LOSS_BODIES: dict[str, dict[str, dict[str, Any]]] = {
    "cross-entropy": {
        "class_indices": _named(
            "Class indices, label smoothing and the gradient of the mean",
            {"logits": LOGITS, "labels": LABELS, "label_smoothing": 0.1, "return_grad": True},
        ),
        "probabilities": _named(
            "Probability labels, a value per sample",
            {"logits": LOGITS, "labels": [[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]], "reduction": "none"},
        ),
    },
    "binary-cross-entropy": {
        "multi_label": _named(
            "Two labels per sample, positives weighted",
            {"logits": BINARY_LOGITS, "labels": BINARY_LABELS, "pos_weight": [2.0, 1.0]},
        )
    },
    "focal": {
        "alpha": _named(
            "gamma 2 with a factor per class",
            {"logits": LOGITS, "labels": LABELS, "gamma": 2.0, "alpha": [0.25, 0.5, 0.25]},
        )
    },
    "poly1": {"default": _named("epsilon 1", {"logits": LOGITS, "labels": LABELS, "epsilon": 1.0})},
    "symmetric-cross-entropy": {
        "default": _named(
            "alpha 0.1, beta 1", {"logits": LOGITS, "labels": LABELS, "alpha": 0.1, "beta": 1.0}
        )
    },
    "generalized-cross-entropy": {
        "default": _named("q 0.7", {"logits": LOGITS, "labels": LABELS, "q": 0.7})
    },
    "forward-corrected-cross-entropy": {
        "default": _named(
            "A known noise transition matrix (rows: clean class)",
            {
                "logits": [[2.0, 0.5], [0.3, 1.2]],
                "labels": [0, 1],
                "transition_matrix": [[0.9, 0.1], [0.2, 0.8]],
            },
        )
    },
    "logit-adjusted-cross-entropy": {
        "default": _named(
            "A long-tailed class prior",
            {"logits": [[2.0, 0.5], [0.3, 1.2]], "labels": [0, 1], "class_prior": [0.9, 0.1]},
        )
    },
    "sigmoid-focal": {
        "default": _named(
            "torchvision's defaults",
            {"logits": BINARY_LOGITS, "labels": BINARY_LABELS, "alpha": 0.25, "gamma": 2.0},
        )
    },
    "kl-divergence": {
        "distillation": _named(
            "Distillation at temperature 2",
            {
                "logits": LOGITS,
                "target_logits": [[1.0, 1.0, 0.0], [0.0, 2.0, 0.5]],
                "temperature": 2,
            },
        )
    },
    "bradley-terry": {
        "dpo": _named(
            "DPO: policy and reference scores of chosen and rejected responses",
            {
                "chosen": [1.2, 0.3],
                "rejected": [0.4, 0.5],
                "ref_chosen": [1.0, 0.2],
                "ref_rejected": [0.5, 0.4],
                "beta": 0.1,
                "return_grad": True,
            },
        )
    },
    "info-nce": {
        "default": _named(
            "Two queries, each with its positive key",
            {
                "query": [[1.0, 0.0], [0.0, 1.0]],
                "keys": [[0.9, 0.1], [0.1, 0.9]],
                "labels": [0, 1],
                "temperature": 0.07,
            },
        )
    },
    "triplet-margin": {
        "default": _named(
            "One triplet",
            {"anchor": [[0.0, 0.0]], "positive": [[0.1, 0.0]], "negative": [[1.0, 1.0]]},
        )
    },
    "mse": {
        "default": _named("Two predictions", {"predictions": [1.0, 2.0], "targets": [1.5, 1.0]})
    },
    "mae": {
        "default": _named("Two predictions", {"predictions": [1.0, 2.0], "targets": [1.5, 1.0]})
    },
    "huber": {
        "default": _named(
            "One error below delta, one above",
            {"predictions": [1.0, 4.0], "targets": [1.5, 1.0], "delta": 1.0},
        )
    },
}


def _shard_state(logits: list[list[float]], labels: list[int]) -> dict[str, Any]:
    """What `/v1/calibration` answers as `state` for one shard, with 5 bins; its sums rounded to
    6 digits, so that the committed document does not change with the last bit of `exp`."""
    report = calibration.calibration_report(
        logits=np.array(logits), labels=np.array(labels), n_bins=5
    )
    return _rounded(report.state.to_dict())  # type: ignore[no-any-return]


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


# An evaluation run and a batch of it: the run operations' examples name them; the example test
# creates both first (their ids are made by the service).
RUN_SPEC = {
    "name": "nightly-resnet50",
    "metadata": {"model": "resnet50", "split": "validation"},
    "losses": [{"name": "cross-entropy"}, {"name": "focal", "gamma": 2.0}],
    "calibration": {"n_bins": 10, "top_k": [2]},
}
RUN_ID = "0b7a4a5e-6a38-4c55-9a1f-5d1c2f0e8a11"
BATCH_ID = "shard-00001"

REQUEST_BODIES: dict[str, dict[str, dict[str, Any]]] = {
    **{BY_NAME[name].operation_id: bodies for name, bodies in LOSS_BODIES.items()},
    "evaluate": {
        "default": _named(
            "Three losses and the calibration report from one upload",
            {
                "logits": LOGITS,
                "labels": LABELS,
                "losses": [
                    {"name": "cross-entropy", "label_smoothing": 0.1},
                    {"name": "focal", "gamma": 2, "return_grad": True},
                    {"name": "generalized-cross-entropy", "q": 0.5, "reduction": "none"},
                ],
                "calibration": {"n_bins": 10},
            },
        )
    },
    "calibration": {
        "default": _named(
            "Multiclass logits, 10 bins, top-2 accuracy and a temperature fit",
            {
                "logits": CALIBRATION_LOGITS,
                "labels": CALIBRATION_LABELS,
                "n_bins": 10,
                "top_k": [2],
                "fit_temperature": True,
            },
        ),
        "binary": _named(
            "Binary: the positive class's probability per sample",
            {"probs": [0.9, 0.2, 0.65, 0.4], "labels": [1, 0, 0, 1], "n_bins": 5},
        ),
    },
    "calibration_merge": {
        "two_shards": _named(
            "The states of two shards, as /v1/calibration answered them",
            {
                "states": [
                    _shard_state(CALIBRATION_LOGITS[:2], CALIBRATION_LABELS[:2]),
                    _shard_state(CALIBRATION_LOGITS[2:], CALIBRATION_LABELS[2:]),
                ]
            },
        )
    },
    "reliability_diagram": {
        "default": _named(
            "Multiclass logits in 5 bins",
            {"logits": CALIBRATION_LOGITS, "labels": CALIBRATION_LABELS, "n_bins": 5},
        )
    },
    "create_run": {
        "default": _named(
            "A nightly evaluation: two losses and the calibration over every batch",
            RUN_SPEC,
        )
    },
    "add_batch": {
        "json": _named(
            "Logits and labels of one batch; -100 rows count for the losses only",
            {"logits": CALIBRATION_LOGITS, "labels": [0, 2, 1, -100]},
        )
    },
    "label_noise": {
        "default": _named(
            "Out-of-sample probabilities of six rows, one label likely wrong",
            {
                "probs": [
                    [0.9, 0.05, 0.05],
                    [0.1, 0.8, 0.1],
                    [0.05, 0.05, 0.9],
                    [0.85, 0.1, 0.05],
                    [0.1, 0.85, 0.05],
                    [0.05, 0.1, 0.85],
                ],
                "labels": [0, 1, 2, 0, 1, 0],
            },
        )
    },
    **{
        operation_id: {
            "json": _named(
                "Cross-entropy with JSON tensors; options in `parameters`",
                {
                    "inputs": [
                        {"name": "logits", "shape": [2, 3], "datatype": "FP64", "data": LOGITS},
                        {"name": "labels", "shape": [2], "datatype": "INT64", "data": LABELS},
                    ],
                    "parameters": {"label_smoothing": 0.1},
                    "outputs": [{"name": "loss"}, {"name": "grad"}],
                },
            )
        }
        for operation_id in ("oip_infer", "oip_infer_version")
    },
}

PARAMETERS: dict[str, dict[str, str]] = {
    "oip_model_metadata": {"model_name": "cross-entropy"},
    "oip_model_ready": {"model_name": "cross-entropy"},
    "oip_infer": {"model_name": "cross-entropy"},
    "oip_infer_version": {"model_name": "cross-entropy", "model_version": MODEL_VERSION},
    **{
        operation_id: {"run_id": RUN_ID}
        for operation_id in ("get_run", "delete_run", "close_run", "run_reliability_diagram")
    },
    **{
        operation_id: {"run_id": RUN_ID, "batch_id": BATCH_ID}
        for operation_id in ("add_batch", "get_batch")
    },
}

RESPONSES: dict[str, dict[str, Any]] = {
    "healthz": {"application/json": {"status": "ok"}},
    "readyz": {
        "application/json": {
            "status": "ready",
            "backend": "numpy",
            "device": "cpu",
            "engine": "fused",
            "database": "ok",
            "version": __version__,
        }
    },
    "metrics": {
        "text/plain": "# HELP loss_service_requests_total HTTP requests answered\n"
        "# TYPE loss_service_requests_total counter\n"
        'loss_service_requests_total{method="POST",route="/v1/losses/cross-entropy",'
        'status="200"} 42.0\n'
        "# HELP loss_service_requests_in_progress HTTP requests being served\n"
        "# TYPE loss_service_requests_in_progress gauge\n"
        "loss_service_requests_in_progress 1.0\n"
    },
    "list_losses": {
        "application/json": LossCatalogue(
            losses=[
                describe_loss(spec.name, spec.summary, spec.reference, spec.request)
                for spec in [BY_NAME["cross-entropy"]]
            ],
            common_options=common_options(),
        ).model_dump(mode="json")
    },
    "oip_server_metadata": {"application/json": server_metadata().model_dump(mode="json")},
    "oip_server_live": {"application/json": {"live": True}},
    "oip_server_ready": {"application/json": {"ready": True}},
    "list_runs": {
        "application/json": {
            "runs": [
                {
                    "id": RUN_ID,
                    "name": "nightly-resnet50",
                    "metadata": {"model": "resnet50", "split": "validation"},
                    "status": "open",
                    "created_at": "2026-12-01T22:00:00Z",
                    "updated_at": "2026-12-01T23:41:07Z",
                    "n_batches": 250,
                    "n_samples": 50000,
                }
            ],
            "next_cursor": None,
        }
    },
}


def apply(document: dict[str, Any]) -> None:
    """Write the examples into the generated document, where Swagger UI and ReDoc read them."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation_id = operation.get("operationId")
            bodies = REQUEST_BODIES.get(operation_id)
            if bodies is not None:
                content = operation["requestBody"]["content"]["application/json"]
                content["examples"] = bodies
            values = PARAMETERS.get(operation_id, {})
            for parameter in operation.get("parameters", []):
                if parameter["name"] in values:
                    parameter["example"] = values[parameter["name"]]
            answers = RESPONSES.get(operation_id, {})
            success = next(
                (status for status in operation.get("responses", {}) if status.startswith("2")),
                None,
            )
            for media_type, example in answers.items():
                operation["responses"][success]["content"][media_type]["example"] = example
