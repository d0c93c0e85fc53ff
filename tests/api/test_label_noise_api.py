"""`POST /v1/label-noise` over HTTP: cleanlab's answers, every tensor form, the errors, and the
round trip into `forward-corrected-cross-entropy`."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from cleanlab import count, rank
from cleanlab import filter as cleanlab_filter

from tests.helpers import decoded, encoded

pytestmark = pytest.mark.anyio
PATH = "/v1/label-noise"


def noisy_dataset(n: int = 300, classes: int = 4, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample-like probabilities of a model right 80% of the time, labels 15% flipped."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    logits = rng.standard_normal((n, classes))
    logits[np.arange(n), truth] += 2.5
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = truth.copy()
    flip = rng.random(n) < 0.15
    labels[flip] = rng.integers(0, classes, int(flip.sum()))
    return probs, labels


async def test_the_answer_is_cleanlabs(client: httpx.AsyncClient) -> None:
    probs, labels = noisy_dataset()
    body = {"probs": probs.tolist(), "labels": labels.tolist(), "rank_by": "normalized_margin"}
    response = await client.post(PATH, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = cleanlab_filter.find_label_issues(
        labels, probs, return_indices_ranked_by="normalized_margin", n_jobs=1
    )
    assert answer["label_issues"] == expected.tolist()
    assert answer["n_issues"] == len(expected)
    quality = rank.get_label_quality_scores(labels, probs, method="normalized_margin")
    np.testing.assert_allclose(answer["label_quality"], quality, rtol=0, atol=1e-12)
    joint = count.compute_confident_joint(labels, probs, calibrate=True)
    assert answer["confident_joint"] == joint.tolist()
    _, noise_matrix, _ = count.estimate_latent(joint, labels)
    np.testing.assert_allclose(answer["transition_matrix"], noise_matrix.T, atol=1e-12)
    assert answer["n"] == 300 and answer["n_classes"] == 4


async def test_logits_and_base64_in_base64_out(client: httpx.AsyncClient) -> None:
    probs, labels = noisy_dataset(seed=4)
    logits = np.log(probs).astype(np.float32)
    body = {"logits": encoded(logits), "labels": encoded(labels), "max_issues": 5}
    response = await client.post(PATH, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    issues = decoded(answer["label_issues"])
    assert issues.dtype == np.int64 and len(issues) == min(5, answer["n_issues"])
    matrix = decoded(answer["transition_matrix"])
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-12)


async def test_the_matrix_goes_into_forward_correction_as_it_is(client: httpx.AsyncClient) -> None:
    """Find the noise, then train with it: the answer's matrix is the loss's option unchanged."""
    probs, labels = noisy_dataset(seed=5)
    found = await client.post(PATH, json={"probs": probs.tolist(), "labels": labels.tolist()})
    matrix = np.asarray(found.json()["transition_matrix"])
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 4))
    targets = labels[:8]
    loss = await client.post(
        "/v1/losses/forward-corrected-cross-entropy",
        json={
            "logits": logits.tolist(),
            "labels": targets.tolist(),
            "transition_matrix": found.json()["transition_matrix"],
        },
    )
    assert loss.status_code == 200, loss.text
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.log((softmax @ matrix)[np.arange(8), targets]).mean()
    assert loss.json()["loss"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"logits": [[0.0, 1.0]] * 4}, "logits"),  # both logits and probs
        ({"probs": None}, "logits"),  # neither
        ({"labels": [0, 1, 2, 9]}, "labels"),
        ({"probs": [[0.5, 0.6]] * 4}, "probs"),  # rows that are not distributions
        ({"filter_by": "everything"}, "filter_by"),
        ({"max_issues": -1}, "max_issues"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    body = {"probs": [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], "labels": [0, 1, 1, 0]}
    response = await client.post(PATH, json={**body, **change})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field


async def test_classes_over_the_limit(make_client: Any) -> None:
    async with make_client(max_label_noise_classes=3) as client:
        probs = np.full((2, 4), 0.25)
        response = await client.post(PATH, json={"probs": probs.tolist(), "labels": [0, 1]})
    assert response.status_code == 413
    assert "max_label_noise_classes" in response.json()["detail"]


async def test_the_client_finds_the_same_issues(make_client: Any) -> None:
    from service.client import AsyncLossClient

    probs, labels = noisy_dataset(seed=6)
    async with make_client() as http, AsyncLossClient(http_client=http) as client:
        found = await client.label_noise(labels, probs=probs, rank_by="self_confidence")
    expected = cleanlab_filter.find_label_issues(
        labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    np.testing.assert_array_equal(found.label_issues, expected)
    assert found.label_issues.dtype == np.int64
    np.testing.assert_allclose(found.transition_matrix.sum(axis=1), 1.0, rtol=1e-12)
    assert found.n == 300


@pytest.mark.system
@pytest.mark.slow
def test_the_command_line_and_the_round_trip_into_forward_correction(tmp_path: Any) -> None:
    """`loss-service label-noise` on files, its matrix passed to `loss-service compute`."""
    import json
    import subprocess
    import sys

    from tests.live_server import ROOT, _env

    probs, labels = noisy_dataset(seed=7)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "labels.npy", labels)
    run = [sys.executable, "-m", "service"]
    found = subprocess.run(
        [*run, "label-noise", "--probs", str(tmp_path / "probs.npy"), "--labels",
         str(tmp_path / "labels.npy"), "--out", str(tmp_path / "noise.npz")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    with np.load(tmp_path / "noise.npz") as saved:
        expected = cleanlab_filter.find_label_issues(
            labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1
        )
        np.testing.assert_array_equal(saved["label_issues"], expected)
        matrix = saved["transition_matrix"]
        assert int(saved["n_issues"]) == len(expected)
    logits = np.log(probs[:10])
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "targets.npy", labels[:10])
    loss = subprocess.run(
        [*run, "compute", "forward-corrected-cross-entropy", "--logits",
         str(tmp_path / "logits.npy"), "--labels", str(tmp_path / "targets.npy"),
         "--transition-matrix", f"{tmp_path / 'noise.npz'}:transition_matrix"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loss.returncode == 0, loss.stderr
    softmax = probs[:10] / probs[:10].sum(axis=1, keepdims=True)
    reference = -np.log((softmax @ matrix)[np.arange(10), labels[:10]]).mean()
    assert json.loads(loss.stdout)["loss"] == pytest.approx(reference, rel=1e-9)
