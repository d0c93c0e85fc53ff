"""`loss-service compute`: the HTTP answer from .npy / .npz files, whole or in chunks of rows.

Long because every flag and file form of one command is here, next to the HTTP answer it must equal.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import cli
from service.codecs import body_pieces
from service.config import Settings
from service.core import Context
from service.core.offline import offline_loss
from service.core.registry import BY_NAME
from service.core.responses import render_json
from service.engine import CPU
from service.npy_files import load_arrays
from tests.helpers import encoded
from tests.live_server import _env, console_script

ClientFactory = Callable[..., Any]
RNG = np.random.default_rng(3)
N, C = 50, 7
LOGITS = RNG.standard_normal((N, C)).astype(np.float32)
LABELS = RNG.integers(0, C, N)
LABELS[[3, 17, 40]] = -100
SETTINGS = Settings(device="cpu")


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """`loss-service ARGV` in this process, on the CPU; its exit status."""
    monkeypatch.setattr(cli, "get_settings", lambda: SETTINGS)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    code = exited.value.code
    return code if isinstance(code, int) else 1


def offline(
    name: str, arrays: dict[str, Any], chunk_rows: int | None = None, **options: Any
) -> Any:
    ctx = Context(CPU, SETTINGS)
    response = offline_loss(BY_NAME[name], arrays, options, ctx=ctx, chunk_rows=chunk_rows)
    return json.loads(b"".join(body_pieces(render_json(response))))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    np.save(tmp_path / "logits.npy", LOGITS)
    np.save(tmp_path / "labels.npy", LABELS)
    np.savez(tmp_path / "batch.npz", logits=LOGITS, labels=LABELS)
    np.savez_compressed(tmp_path / "packed.npz", scores=LOGITS, targets=LABELS)
    return tmp_path


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1, "return_grad": True},
        {"reduction": "none", "return_grad": True, "weight": [1, 2, 3, 1, 1, 0.5, 2]},
        {"reduction": "sum", "z_loss": 1e-3, "grad_dtype": "float64", "return_grad": True},
    ],
)
async def test_same_json_as_the_http_api(
    files: Path,
    options: dict[str, Any],
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["compute", "cross-entropy", "--logits", str(files / "logits.npy")]
    argv += ["--labels", str(files / "labels.npy")]
    argv += [f"--option={key}={json.dumps(value)}" for key, value in options.items()]
    assert run(argv, monkeypatch) == 0
    printed = json.loads(capsys.readouterr().out)

    body = {"logits": encoded(LOGITS), "labels": encoded(LABELS), "output_encoding": "json"}
    async with make_client() as client:
        response = await client.post("/v1/losses/cross-entropy", json={**body, **options})
    assert response.status_code == 200, response.text
    assert printed == response.json()


@pytest.mark.parametrize(
    "inputs",
    [
        ["{d}/batch.npz"],
        ["--logits", "{d}/batch.npz", "--labels", "{d}/batch.npz"],
        ["--logits", "{d}/packed.npz:scores", "--labels", "{d}/packed.npz:targets"],
        ["--logits", "{d}/logits.npy", "--labels", "{d}/packed.npz:targets"],
    ],
)
def test_npz_inputs(
    files: Path,
    inputs: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["compute", "cross-entropy", *(item.format(d=files) for item in inputs)]
    assert run(argv, monkeypatch) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == offline("cross-entropy", {"logits": LOGITS, "labels": LABELS})
    assert printed["n_valid"] == N - 3


def test_uncompressed_npz_is_memory_mapped(files: Path) -> None:
    arrays = load_arrays(str(files / "batch.npz"))
    assert isinstance(arrays["logits"], np.memmap)
    np.testing.assert_array_equal(arrays["logits"], LOGITS)
    packed = load_arrays(str(files / "packed.npz"))
    np.testing.assert_array_equal(packed["scores"], LOGITS)
    assert isinstance(load_arrays(str(files / "logits.npy"))["logits"], np.memmap)


def test_out_file_and_progress(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = files / "report.json"
    argv = ["compute", "cross-entropy", str(files / "batch.npz"), "--chunk-rows", "8"]
    assert run([*argv, "--out", str(out), "--progress"], monkeypatch) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "100% (50/50 rows, 7 chunks" in captured.err
    assert captured.err.endswith("\n")
    report = json.loads(out.read_text())
    assert report == offline("cross-entropy", {"logits": LOGITS, "labels": LABELS})
    assert run([*argv, "--no-progress"], monkeypatch) == 0
    assert capsys.readouterr().err == ""


# --- chunks combine exactly --------------------------------------------------------------------


def _cases() -> list[Any]:
    x = RNG.standard_normal((N, C))
    y = RNG.integers(0, C, N)
    probs = RNG.dirichlet(np.ones(C), N)
    b = RNG.standard_normal((N, 3))
    t = (RNG.random((N, 3)) > 0.5).astype(np.float64)
    q, k = RNG.standard_normal((N, 4)), RNG.standard_normal((9, 4))
    return [
        pytest.param("cross-entropy", {"logits": x, "labels": y}, {}, id="ce"),
        pytest.param(
            "cross-entropy",
            {"logits": x, "labels": y, "weight": RNG.random(C)},
            {"label_smoothing": 0.2},
            id="ce-weight",
        ),
        pytest.param("cross-entropy", {"logits": x, "labels": probs}, {}, id="ce-probs"),
        pytest.param(
            "cross-entropy",
            {"logits": x.reshape(10, 5, C), "labels": y.reshape(10, 5)},
            {},
            id="ce-3d",
        ),
        pytest.param("focal", {"logits": x, "labels": y}, {"gamma": 1.5}, id="focal"),
        pytest.param(
            "forward-corrected-cross-entropy",
            {"logits": x, "labels": y, "transition_matrix": np.full((C, C), 1 / C)},
            {},
            id="forward",
        ),
        pytest.param(
            "binary-cross-entropy",
            {"logits": b, "labels": t, "weight": RNG.random((N, 3)), "pos_weight": RNG.random(3)},
            {},
            id="bce-elementwise-weight",
        ),
        pytest.param(
            "kl-divergence",
            {"logits": x, "target_logits": RNG.standard_normal((N, C))},
            {"temperature": 2.0},
            id="kl",
        ),
        pytest.param(
            "info-nce",
            {"query": q, "keys": k, "labels": RNG.integers(0, 9, N)},
            {},
            id="info-nce-shared-keys",
        ),
        pytest.param(
            "bradley-terry",
            {
                "chosen": b[:, 0],
                "rejected": b[:, 1],
                "ref_chosen": b[:, 2],
                "ref_rejected": t[:, 0],
            },
            {"beta": 0.5},
            id="dpo",
        ),
        pytest.param(
            "triplet-margin",
            {"anchor": q, "positive": q + 0.1, "negative": q[::-1].copy()},
            {},
            id="triplet",
        ),
        pytest.param("huber", {"predictions": b, "targets": t}, {"delta": 0.5}, id="huber"),
    ]


@pytest.mark.parametrize(("name", "arrays", "options"), _cases())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunks_combine_exactly(
    name: str, arrays: dict[str, np.ndarray], options: dict[str, Any], reduction: str
) -> None:
    options = {**options, "reduction": reduction, "return_grad": True}
    whole = offline(name, arrays, **options)
    for rows in (1, 7, 49):
        chunked = offline(name, arrays, chunk_rows=rows, **options)
        assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-12, abs=1e-15)
        assert chunked["n_valid"] == whole["n_valid"]
        assert chunked["weight_sum"] == pytest.approx(whole["weight_sum"], rel=1e-12)
        for key in ("per_sample", "grad"):
            if whole[key] is None:
                assert chunked[key] is None
            else:
                np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-12, atol=1e-15)
        assert (chunked["grads"] is None) == (whole["grads"] is None)
        for key, grad in (whole["grads"] or {}).items():
            np.testing.assert_allclose(chunked["grads"][key], grad, rtol=1e-10, atol=1e-14)


def test_chunks_without_gradients_keep_the_dtype() -> None:
    whole = offline("cross-entropy", {"logits": LOGITS, "labels": LABELS})
    chunked = offline("cross-entropy", {"logits": LOGITS, "labels": LABELS}, chunk_rows=4)
    assert chunked == {**whole, "loss": pytest.approx(whole["loss"], rel=1e-12)}
    assert chunked["dtype"] == "float32"
    assert chunked["grad"] is None


@pytest.mark.parametrize(("empty", "expected"), [("zero", 0.0), ("nan", None)])
def test_every_label_ignored(empty: str, expected: float | None) -> None:
    labels = np.full(N, -100)
    result = offline(
        "cross-entropy", {"logits": LOGITS, "labels": labels}, chunk_rows=6, empty=empty
    )
    assert result["loss"] == expected
    assert result["n_valid"] == 0


def test_a_class_axis_alone_is_not_split() -> None:
    """1-D logits are one sample over C classes: axis 0 is not a sample axis there."""
    result = offline("cross-entropy", {"logits": LOGITS[0], "labels": np.array(2)}, chunk_rows=1)
    assert result["n_valid"] == 1


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "label_smothing=0.1"], "label_smothing: Extra inputs are not permitted"),
        (["-o", "label_smoothing=2"], "label_smoothing: Input should be less than or equal to 1"),
        (["-o", "nonsense"], "expected KEY=VALUE"),
        (["--chunk-rows", "0"], "--chunk-rows must be at least 1"),
    ],
)
def test_option_errors(
    files: Path,
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["compute", "cross-entropy", str(files / "batch.npz"), *args]
    assert run(argv, monkeypatch) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_input_errors_name_the_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    logits = LOGITS.copy()
    logits[33, 4] = np.nan
    np.savez(tmp_path / "nan.npz", logits=logits, labels=LABELS)
    assert run(["compute", "focal", str(tmp_path / "nan.npz"), "--chunk-rows", "10"], monkeypatch)
    assert "logits: contains NaN at index (33, 4)" in capsys.readouterr().err

    labels = LABELS.copy()
    labels[21] = 9
    np.savez(tmp_path / "label.npz", logits=LOGITS, labels=labels)
    assert run(["compute", "focal", str(tmp_path / "label.npz"), "--chunk-rows", "10"], monkeypatch)
    err = capsys.readouterr().err
    assert "rows [20, 30): labels: label 9 at index (1,) is outside [0, 7)" in err


def test_file_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["compute", "mse", "--predictions", str(tmp_path / "missing.npy")], monkeypatch)
    assert "missing.npy" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("1 2 3")
    assert run(["compute", "mse", "--predictions", str(tmp_path / "a.txt")], monkeypatch)
    assert "expected a .npy or .npz file" in capsys.readouterr().err
    np.save(tmp_path / "c.npy", np.zeros(3, dtype=np.complex64))
    argv = ["compute", "mse", "--predictions", str(tmp_path / "c.npy")]
    assert run([*argv, "--targets", str(tmp_path / "c.npy")], monkeypatch) == 1
    assert "dtype complex64 is not supported" in capsys.readouterr().err


def test_unknown_loss_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["compute", "no-such-loss"], monkeypatch) == 2


@pytest.mark.system
def test_console_script(files: Path) -> None:
    completed = subprocess.run(
        [console_script(), "compute", "cross-entropy", str(files / "batch.npz")],
        env=_env(LOSS_SERVICE_DEVICE="cpu"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    assert json.loads(completed.stdout) == offline(
        "cross-entropy", {"logits": LOGITS, "labels": LABELS}
    )


def test_chunks_bound_the_memory(tmp_path: Path) -> None:
    """Without gradients asked for, no chunk's gradient outlives it: the peak is a few chunks'
    worth, far below the input's size (16 MB here) and what one piece takes."""
    import tracemalloc

    rows, classes = 4000, 500
    np.save(tmp_path / "x.npy", RNG.standard_normal((rows, classes)))
    np.save(tmp_path / "y.npy", RNG.integers(0, classes, rows))
    arrays = {**load_arrays(str(tmp_path / "x.npy"), "logits")}
    arrays.update(load_arrays(str(tmp_path / "y.npy"), "labels"))
    ctx = Context(CPU, SETTINGS)

    def peak(chunk_rows: int) -> int:
        offline_loss(BY_NAME["cross-entropy"], arrays, {}, ctx=ctx, chunk_rows=chunk_rows)
        tracemalloc.start()  # after a first call: the kernels are compiled
        try:
            response = offline_loss(
                BY_NAME["cross-entropy"], arrays, {}, ctx=ctx, chunk_rows=chunk_rows
            )
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert response.n_valid == rows

    whole, chunked = peak(rows), peak(100)
    assert chunked < whole / 3, (chunked, whole)
    assert chunked < rows * classes * 8 / 8, chunked  # an eighth of the input


# --- --out FILE.npz / FILE.npy, the help, the spellings ----------------------------------------


def test_out_npz_holds_the_arrays_and_the_scalars(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compute", "cross-entropy", str(files / "batch.npz"), "-o", "reduction=none"]
    argv += ["-o", "return_grad=true"]
    assert run(argv, monkeypatch) == 0
    answer = json.loads(capsys.readouterr().out)
    out = files / "answer.npz"
    assert run([*argv, "--out", str(out)], monkeypatch) == 0
    assert capsys.readouterr().out == ""
    with np.load(out) as saved:
        assert set(saved.files) == {
            "per_sample", "grad", "name", "loss", "n_valid", "weight_sum", "backend", "dtype"
        }  # fmt: skip
        # As computed (float32 logits: float32), not the float64 of JSON numbers.
        assert saved["per_sample"].dtype == saved["grad"].dtype == np.dtype(answer["dtype"])
        for key in ("per_sample", "grad"):
            expected = np.array(answer[key], dtype=saved[key].dtype)
            np.testing.assert_array_equal(saved[key], expected)
        assert saved["loss"][()] == answer["loss"]
        assert saved["n_valid"][()] == answer["n_valid"] == N - 3
        assert str(saved["name"]) == "cross-entropy"


def test_out_npz_names_the_gradients_of_each_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    np.savez(
        tmp_path / "pairs.npz", query=rng.standard_normal((4, 3)), keys=rng.standard_normal((6, 3))
    )
    np.save(tmp_path / "labels.npy", np.array([0, 2, 4, 5]))
    argv = [
        "compute",
        "info-nce",
        str(tmp_path / "pairs.npz"),
        "--labels",
        str(tmp_path / "labels.npy"),
    ]
    assert (
        run([*argv, "-o", "return_grad=true", "--out", str(tmp_path / "g.npz")], monkeypatch) == 0
    )
    with np.load(tmp_path / "g.npz") as saved:
        assert saved["grads.query"].shape == (4, 3)
        assert saved["grads.keys"].shape == (6, 3)
        assert "grad" not in saved.files and "per_sample" not in saved.files


def test_out_npy_holds_the_one_array_and_prints_the_scalars(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compute", "cross-entropy", str(files / "batch.npz"), "-o", "return_grad=true"]
    assert run(argv, monkeypatch) == 0
    answer = json.loads(capsys.readouterr().out)
    assert run([*argv, "--out", str(files / "grad.npy")], monkeypatch) == 0
    scalars = json.loads(capsys.readouterr().out)
    assert scalars == {
        k: answer[k] for k in ("name", "loss", "n_valid", "weight_sum", "backend", "dtype")
    }
    np.testing.assert_array_equal(np.load(files / "grad.npy"), np.array(answer["grad"], np.float32))

    both = [*argv, "-o", "reduction=none", "--out", str(files / "both.npy")]
    assert run(both, monkeypatch) == 1
    assert "this answer has per_sample, grad: use a .npz" in capsys.readouterr().err
    assert not (files / "both.npy").exists()


def test_dashed_inputs_and_options_are_the_underscored_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "student.npy", LOGITS)
    np.save(tmp_path / "teacher.npy", LOGITS[::-1].copy())
    printed = []
    for flag, option in (
        ("--target-logits", "compute-dtype"),
        ("--target_logits", "compute_dtype"),
    ):
        argv = ["compute", "kl-divergence", "--logits", str(tmp_path / "student.npy")]
        argv += [flag, str(tmp_path / "teacher.npy"), "-o", f"{option}=float64"]
        assert run(argv, monkeypatch) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert printed[0] == printed[1]
    assert printed[0]["dtype"] == "float64"  # the option was read, not ignored


def test_help_lists_every_loss_with_its_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["compute", "--help"])
    help_text = capsys.readouterr().out
    for spec in BY_NAME.values():
        assert re.search(rf"^  {re.escape(spec.name)} +{spec.required_inputs[0]}", help_text, re.M)
    # Both spellings (Python 3.13 writes the metavar once: "--target-logits, --target_logits PATH").
    assert re.search(r"--target-logits( PATH)?, --target_logits PATH", help_text)
    assert "kl-divergence                    logits, [target_logits], [target_probs]" in help_text


def test_progress_counts_one_chunk_in_the_singular(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compute", "cross-entropy", str(files / "batch.npz"), "--progress"]
    assert run(argv, monkeypatch) == 0
    assert "(50/50 rows, 1 chunk," in capsys.readouterr().err
