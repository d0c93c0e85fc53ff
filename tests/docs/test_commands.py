"""Every command in README.md and docs/*.md is executed here, or listed below with what validates
it instead.

Shell blocks (sh, bash, console) run in bash, python blocks in a subprocess, against one live
`loss-service serve` started for the module: `127.0.0.1:8000` in a block becomes its address and
`8001` a second free port (for a block that starts a server of its own). `loss-service` and
`python` are this checkout's. Each page's blocks run in order in a directory of their own, so
files made by one block are there for the next. Every curl (but `-f` ones, whose exit status is
the check) must answer the status its `# -> NNN` comment says, or a 2xx without one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.docs.blocks import INERT, PYTHON, ROOT, SHELL, Block, blocks, curls
from tests.live_server import running_server

pytestmark = pytest.mark.system

# Blocks that cannot run inside a test, by (page, first command line), with what checks them.
VALIDATED_ELSEWHERE: dict[tuple[str, str], str] = {
    ("README.md", "make test"): "the suite itself: this test is part of what it runs",
    ("docs/development.md", "make test"): "the suite itself, plus make's own targets: lint and "
    "typecheck are `make test`'s first steps, `make openapi`'s result is compared with the code by "
    "tests/test_openapi.py, `make lock` and `make fresh-check` need PyPI and root (CI)",
    ("docs/development.md", '.venv/bin/pytest -m "not system and not slow"'): (
        "the suite itself, of which these are subsets"
    ),
    (
        "docs/client.md",
        "openapi-python-client generate --path openapi/openapi.json --meta none \\",
    ): (
        "tests/test_generated_client.py runs this very command and uses the generated client "
        "against a live server"
    ),
    (
        "README.md",
        "openapi-python-client generate --path openapi/openapi.json --meta none \\",
    ): (
        "tests/test_generated_client.py runs this very command and uses the generated client "
        "against a live server"
    ),
    (
        "docs/deployment.md",
        "docker build -t loss-service .",
    ): ("`make container-check` builds the Dockerfile and serves requests from the image (CI)"),
    ("docs/deployment.md", "docker compose -f deploy/docker-compose.yml up --build"): (
        "`make deploy-check` validates deploy/docker-compose.yml and its wiring (CI)"
    ),
    (
        "docs/deployment.md",
        "kubectl create secret generic loss-service-database -n <namespace> \\",
    ): (
        "needs a cluster; `make deploy-check` validates the example Secret against every rendered "
        "Deployment's secretKeyRef (CI)"
    ),
    ("docs/deployment.md", "make deploy-check"): "the CI checks themselves (.ci/run): root, "
    "Debian's packages and PyPI",
    ("docs/gpu.md", "pip install '.[gpu]'"): "needs a CUDA device; the `gpu` tests run on CuPy "
    "where one is visible",
    ("docs/gpu.md", "bash scripts/gpu_check.sh"): "needs a CUDA device and PyTorch",
    ("docs/performance.md", "THP_MEM_ALLOC_ENABLE=1 python -m bench.engine"): (
        "benchmarks of minutes, with PyTorch for their comparison columns; "
        "tests/runs/test_bench_runs.py "
        "runs bench.runs in small"
    ),
    (
        "docs/performance.md",
        "python -m bench.label_noise",
    ): ("benchmarks of minutes (bench.small_requests, documented in prose, also needs wrk)"),
    (
        "docs/runs.md",
        "python -m bench.runs",
    ): ("a benchmark of minutes; tests/runs/test_bench_runs.py runs it on a small size"),
}
# Checked by a test of their own below.
SPECIAL = {("README.md", "make run"): "test_make_run_serves"}

# A first start compiles the fused kernels (a minute or more on a busy 2-core machine).
START_TIMEOUT_S = 300.0
BLOCK_TIMEOUT_S = 240
# Every curl not run with -f reports its status on stderr, where the test reads it back.
# Each answered curl appends its status to $CURL_STATUS_FILE (with curl's own complaints): on
# the block's stderr a server the block started could log in the middle of a marker.
PRELUDE = r"""set -euo pipefail
curl() {
    case " $* " in
        *" -f "* | *" -sf "* | *" -fs "* | *" --fail "*) command curl "$@" ;;
        *) command curl --write-out '%{stderr}<<http-status %{http_code}>>\n' "$@" \
            2>>"$CURL_STATUS_FILE" ;;
    esac
}
"""
STATUS = re.compile(r"<<http-status (\d{3})>>")

ALL_BLOCKS = blocks()
COMMAND_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL | PYTHON]
EXECUTED = [b for b in COMMAND_BLOCKS if b.key not in VALIDATED_ELSEWHERE and b.key not in SPECIAL]
EXECUTED_PAGES = sorted({b.page for b in EXECUTED})


def test_every_block_is_executed_or_listed() -> None:
    """A fence says what it holds; a command block is run here unless listed; no stale entries."""
    for block in ALL_BLOCKS:
        assert block.lang in SHELL | PYTHON | INERT, (
            f"{block.where}: a ```{block.lang} block; commands go in sh, bash, console or python "
            f"blocks (run by this test), anything else in text or json"
        )
    keys = [b.key for b in COMMAND_BLOCKS]
    for key in (*VALIDATED_ELSEWHERE, *SPECIAL):
        assert key in keys, f"listed, but no such block (any more): {key}"
    duplicates = {key for key in keys if keys.count(key) > 1 and key in VALIDATED_ELSEWHERE}
    assert not duplicates, f"two blocks answer to one entry: {duplicates}"


def test_shell_blocks_set_their_variables() -> None:
    """`$S` and friends are set in the block that uses them, so that each can be pasted alone."""
    for block in COMMAND_BLOCKS:
        if block.lang not in SHELL:
            continue
        text = block.commands
        for name in set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)):
            assert re.search(rf"(?:^|[\s;(]){name}=", text, re.MULTILINE), (
                f"{block.where}: ${name} is used but not set in the block"
            )


def test_json_bodies_are_sent_as_json() -> None:
    for block in COMMAND_BLOCKS:
        if block.lang not in SHELL:
            continue
        for curl in curls(block):
            if curl.body is not None:
                assert "Content-Type: application/json" in curl.headers, (
                    f"{block.where}: {curl.line.strip()[:80]} sends no Content-Type"
                )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of `loss-service` and `python` that run this checkout with this interpreter."""
    directory = tmp_path_factory.mktemp("bin")
    for name, command in (("loss-service", "-m service"), ("python", "")):
        path = directory / name
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" {command} "$@"\n', encoding="utf-8")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return directory


def _env(tools: Path, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    env.update(
        PATH=f"{tools}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        LOSS_SERVICE_DEVICE="cpu",
        LOSS_SERVICE_DATABASE_URL=f"sqlite:///{workdir / 'loss-service.db'}",
        MPLBACKEND="Agg",
    )
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("server") / "server.log") as base_url:
        yield base_url


def _substituted(text: str, base_url: str, second_port: int) -> str:
    address = base_url.removeprefix("http://")
    text = text.replace("127.0.0.1:8000", address)
    return re.sub(r"\b8001\b", str(second_port), text)


def _run_shell(block: Block, text: str, cwd: Path, env: dict[str, str]) -> None:
    status_file = cwd / f".curl-status-{block.line}"
    process = subprocess.Popen(
        ["bash", "-c", PRELUDE + text],
        cwd=cwd,
        env={**env, "CURL_STATUS_FILE": str(status_file)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a server the block starts goes with it
    )
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()
    answers = status_file.read_text(encoding="utf-8") if status_file.exists() else ""
    report = (
        f"{block.where}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
        f"\n--- curl\n{answers[-3000:]}"
    )
    assert process.returncode == 0, report
    statuses = [int(code) for code in STATUS.findall(answers)]
    expected = [c for c in curls(block) if not c.fail_flag]
    assert len(statuses) == len(expected), (
        f"{len(expected)} curls, {len(statuses)} answers\n{report}"
    )
    for curl, status in zip(expected, statuses, strict=True):
        wanted = f"{curl.expected}" if curl.expected is not None else "a 2xx"
        ok = status == curl.expected if curl.expected is not None else 200 <= status < 300
        assert ok, f"{curl.method} {curl.url}: {status}, not {wanted}\n{report}"


def _run_python(block: Block, text: str, cwd: Path, env: dict[str, str]) -> None:
    script = cwd / f"block_{block.line}.py"
    script.write_text(text, encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, script.name],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, (
        f"{block.where}\n--- stdout\n{completed.stdout[-3000:]}\n--- stderr\n"
        f"{completed.stderr[-3000:]}"
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_the_commands_of_the_page_run(page: str, server: str, tools: Path, tmp_path: Path) -> None:
    env = _env(tools, tmp_path)
    for block in (b for b in EXECUTED if b.page == page):
        text = _substituted(block.commands, server, _free_port())
        if block.lang in SHELL:
            _run_shell(block, text, tmp_path, env)
        else:
            _run_python(block, text, tmp_path, env)


def test_the_tools_run_this_checkout(tools: Path, tmp_path: Path) -> None:
    completed = subprocess.run(
        ["python", "-c", "import service; print(service.__file__)"],
        cwd=tmp_path,
        env=_env(tools, tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(completed.stdout.strip()).resolve() == ROOT / "service" / "__init__.py"


@pytest.mark.timeout(400)
def test_make_run_serves(tools: Path, tmp_path: Path) -> None:
    """`make run` on a free port: the command make would run (`make -n`, with `BIN` naming this
    checkout's `loss-service`, so that nothing is installed) serves until `/readyz` answers."""
    port = _free_port()
    # Not an outer make's flags (`make pytest` runs this test): only this command line counts.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    dry = subprocess.run(
        ["make", "-n", "run", f"PORT={port}", f"BIN={tools}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    command = dry.stdout.strip().splitlines()[-1]
    assert command == f"{tools}/loss-service serve --host 127.0.0.1 --port {port}", dry.stdout
    log = tmp_path / "make-run.log"
    with log.open("w+b") as output:
        process = subprocess.Popen(
            shlex.split(command),
            cwd=tmp_path,
            env=_env(tools, tmp_path),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                assert process.poll() is None, log.read_text(errors="replace")[-3000:]
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.2)
            assert answer.json()["status"] == "ready"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
