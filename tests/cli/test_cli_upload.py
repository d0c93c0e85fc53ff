"""`loss-service upload` against a live server: files into a run, resumed after a failure with
only the missing batches sent, refusals that stop it, and its --help."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service import cli
from service._compat import httpx_reads
from service.client import LossClient, Run
from tests.flaky_transport import FlakyTransport
from tests.live_server import ROOT, running_server

pytestmark = pytest.mark.system

RNG = np.random.default_rng(5)
LOSSES: list[Any] = ["cross-entropy", {"name": "poly1", "epsilon": 0.5}]
CALIBRATION = {"n_bins": 6, "top_k": [2]}


def arrays(rows: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    labels = RNG.integers(0, classes, rows)
    labels[RNG.random(rows) < 0.1] = -100
    return RNG.standard_normal((rows, classes)).astype(np.float32) * 3, labels


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """Three sources: an .npz stored (memory-mapped), an .npz compressed, an .npy pair."""
    first, second, third = arrays(23), arrays(9), arrays(16)
    np.savez(tmp_path / "a.npz", logits=first[0], labels=first[1])
    np.savez_compressed(tmp_path / "b.npz", logits=second[0], labels=second[1], extra=np.ones(2))
    np.save(tmp_path / "x.npy", third[0])
    np.save(tmp_path / "y.npy", third[1])
    args = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]
    args += ["--logits", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    return args, [first, second, third]


def new_run(server: str) -> str:
    with LossClient(server) as client:
        return client.create_run(LOSSES, calibration=CALIBRATION, name="upload").id


def assert_the_run_is_the_whole(
    server: str, run_id: str, sources: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    """The run's report is /v1/evaluate and /v1/calibration on all the rows at once."""
    logits = np.concatenate([s[0] for s in sources])
    labels = np.concatenate([s[1] for s in sources])
    with LossClient(server) as client:
        report = client.run(run_id).report()
        whole = client.evaluate(logits, labels, LOSSES)
        kept = labels != -100
        calibrated = client.evaluate(logits[kept], labels[kept], [], calibration=CALIBRATION)
    assert report.n_samples == len(labels)
    for total, expected in zip(report.losses, whole.losses, strict=True):
        assert total.n_valid == expected.n_valid
        assert math.isclose(total.loss, expected.loss, rel_tol=1e-12)
    assert report.calibration is not None and calibrated.calibration is not None
    assert report.calibration["state"]["bins"] == calibrated.calibration["state"]["bins"]
    assert math.isclose(report.calibration["ece"], calibrated.calibration["ece"], rel_tol=1e-12)


def upload_in_process(
    monkeypatch: pytest.MonkeyPatch, args: list[str], faults: list[str | None]
) -> tuple[int, FlakyTransport]:
    """`loss-service upload ...` in this process, its HTTP going through injected faults."""
    flaky = FlakyTransport(httpx.HTTPTransport(), faults)
    with monkeypatch.context() as patch:
        patch.setattr(httpx_reads, "transport", lambda: flaky)
        with pytest.raises(SystemExit) as done:
            cli.main(["upload", *args])
    assert isinstance(done.value.code, int)
    return done.value.code, flaky


def test_files_into_a_run_and_again(server: str, files: Any) -> None:
    args, sources = files
    run_id = new_run(server)
    command = [sys.executable, "-m", "service", "upload", run_id, *args]
    command += ["--url", server, "--batch-rows", "7", "--progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    batches = 4 + 2 + 3  # 23, 9 and 16 rows in batches of 7
    summary = json.loads(done.stdout)
    assert summary == {
        "run_id": run_id,
        "batches": batches,
        "sent": batches,
        "stored_before": 0,
        "rows": 48,
    }
    assert f"upload: 100% (48/48 rows, {batches} batches" in done.stderr
    assert_the_run_is_the_whole(server, run_id, sources)

    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sent"] == 0
    assert json.loads(again.stdout)["stored_before"] == batches
    with LossClient(server) as client:
        assert client.run(run_id).report().n_batches == batches


def test_an_interrupted_upload_sends_only_what_is_missing(
    server: str, files: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, sources = files
    run_id = new_run(server)
    args = [run_id, *args, "--url", server, "--batch-rows", "5", "--no-progress"]
    batches = 5 + 2 + 4  # 23, 9 and 16 rows in batches of 5
    # The server fails at the fourth batch, after counting it: the upload stops there.
    code, first = upload_in_process(monkeypatch, args, [None, None, None, "500"])
    assert code == 1
    assert "500" in capsys.readouterr().err
    assert first.plan.seen == 4
    with LossClient(server) as client:
        assert client.run(run_id).report().n_batches == 4

    code, second = upload_in_process(monkeypatch, args, [])
    assert code == 0
    assert second.plan.seen == batches - 4  # the PUTs: only the batches the run lacked
    summary = json.loads(capsys.readouterr().out)
    assert (summary["sent"], summary["stored_before"]) == (batches - 4, 4)
    assert_the_run_is_the_whole(server, run_id, sources)


@pytest.mark.slow
def test_retried_faults_do_not_stop_the_upload(
    server: str, files: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, sources = files
    run_id = new_run(server)
    faults = ["503", "drop", None, "refuse", "502", None, "drop", None]  # three batches' tries
    code, flaky = upload_in_process(monkeypatch, [run_id, *args, "--url", server], faults)
    assert code == 0, capsys.readouterr().err
    assert flaky.plan.faults == []
    assert json.loads(capsys.readouterr().out)["sent"] == 3  # the default: a batch per source
    assert_the_run_is_the_whole(server, run_id, sources)


def test_a_batch_id_used_for_other_data_stops_the_upload(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits, labels = arrays(6)
    np.savez(tmp_path / "data.npz", logits=logits, labels=labels)
    run_id = new_run(server)
    digest = Run.batch_digest(logits, labels)
    squatter = f"rows-0-6-{digest[:32]}"  # the id the upload derives, holding other rows
    with LossClient(server) as client:
        client.run(run_id).add_batch(logits * 2, labels, batch_id=squatter)
    with pytest.raises(SystemExit) as done:
        cli.main(["upload", run_id, str(tmp_path / "data.npz"), "--url", server])
    assert done.value.code == 1
    error = capsys.readouterr().err
    assert f"holds batch {squatter} with digest" in error
    assert "upload into a new run" in error


def test_refusals_and_bad_inputs_stop_it_with_a_message(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits, labels = arrays(4)
    np.savez(tmp_path / "ok.npz", logits=logits, labels=labels)
    np.savez(tmp_path / "no-labels.npz", logits=logits)
    np.savez(tmp_path / "short.npz", logits=logits, labels=labels[:3])
    ok = str(tmp_path / "ok.npz")
    unknown = "00000000-0000-4000-8000-000000000000"
    cases = [
        ([unknown, ok], f"no run {unknown}"),
        ([new_run(server), str(tmp_path / "no-labels.npz")], "no array named labels"),
        ([new_run(server), str(tmp_path / "short.npz")], "do not have the same rows"),
        ([new_run(server), ok, "--batch-rows", "0"], "--batch-rows must be at least 1"),
        ([new_run(server)], "nothing to upload"),
        ([new_run(server), "--logits", ok], "--logits and --labels go together"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as done:
            cli.main(["upload", *args, "--url", server])
        assert done.value.code == 1, args
        error = capsys.readouterr().err
        assert error.startswith("loss-service upload: error: "), error
        assert message in error, (args, error)


@pytest.mark.slow
def test_with_api_keys_the_upload_sends_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logits, labels = arrays(5)
    np.savez(tmp_path / "data.npz", logits=logits, labels=labels)
    with running_server(tmp_path / "keyed.log", LOSS_SERVICE_API_KEYS="k-up") as keyed:
        with LossClient(keyed, api_key="k-up") as client:
            run_id = client.create_run(LOSSES).id
        command = ["upload", run_id, str(tmp_path / "data.npz"), "--url", keyed]
        with pytest.raises(SystemExit) as refused:
            cli.main(command)
        assert refused.value.code == 1
        assert "401" in capsys.readouterr().err
        with pytest.raises(SystemExit) as done:
            cli.main([*command, "--api-key", "k-up"])
        assert done.value.code == 0
        assert json.loads(capsys.readouterr().out)["sent"] == 1


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["upload", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("RUN_ID", "FILE.npz", "--logits", "--labels", "--url", "--api-key"):
        assert option in text, option
    for option in ("--batch-rows", "--progress", "--no-progress", "LOSS_SERVICE_API_KEY"):
        assert option in text, option
