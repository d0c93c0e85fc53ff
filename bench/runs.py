"""Evaluation runs against a live server: batches per second into one run, what a report costs.

    python -m bench.runs [--postgres-url URL] [--backends sqlite,postgresql] [--clients 1,4,16]
                         [--seconds 5] [--repeats 3] [--rows 256] [--classes 100]
                         [--fill 10000] [--fill-rows 16] [--fill-clients 16] [--gets 200]
                         [--storage-batches 64]

Starts one `loss-service serve` per database on free loopback ports: one on a SQLite file in a
temporary directory, one on a PostgreSQL database that it creates on the server at
`--postgres-url` (default: LOSS_SERVICE_BENCH_POSTGRES_URL, else the local server's `postgres`
database, used only to create and drop its own) and drops at the end. Without a server the
PostgreSQL columns are skipped, with the reason. Then, interleaved and repeated (medians; quote
ratios, not times: these machines are shared):

1. Batches per second into one run (a new run per measurement) from 1, 4 and 16 concurrent
   clients: `PUT /v1/runs/{id}/batches/{batch_id}` of `--rows` x `--classes` float32 logits and
   int64 labels (base64 tensors in JSON), into a run of one loss (cross-entropy) and calibration
   (15 bins). Beside it, `POST /v1/evaluate` of the same batches with the same loss and
   calibration: the stateless cost of a batch, so that the database's share shows.
2. The report of a run with `--fill` batches: the run is filled by `--fill-clients` clients with
   `--fill-rows` x `--classes` batches, checked (its batch and sample counts, and its loss
   against the engine's on the batches sent), then `GET /v1/runs/{id}` is timed `--gets` times
   one after the other (median, p99), beside the same on a run of one batch.
3. Storage, read from the database itself: the run's row (its spec and running totals) with
   three losses and calibration (15 bins, top-5) for 100 and 1000 classes, after
   `--storage-batches` distinct batches of 256 rows (enough for most bins to hold sums), and a
   batch's row (its id and digest, with the primary key's index), averaged over every batch
   stored.

Long because the server start, the clients, the PostgreSQL database it creates and drops and the
report tables are one benchmark run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson
from sqlalchemy import Engine, Text, create_engine, func, make_url, select, text
from sqlalchemy.engine import URL

from bench.server import serving
from service.db.models import Run
from service.engine import cross_entropy, reduce_loss

POSTGRES_ENV = "LOSS_SERVICE_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
JSON = {"content-type": "application/json"}
# What every batch of the throughput and report runs computes: one loss and calibration.
SPEC: dict[str, Any] = {"losses": [{"name": "cross-entropy"}], "calibration": {"n_bins": 15}}
# The storage runs: a few losses, calibration with top-k (its state holds classwise bins too).
STORAGE_SPEC: dict[str, Any] = {
    "losses": [
        {"name": "cross-entropy"},
        {"name": "focal", "gamma": 2},
        {"name": "poly1", "epsilon": 1},
    ],
    "calibration": {"n_bins": 15, "top_k": [5]},
}
STORAGE_CLASSES = (100, 1000)
DISTINCT_BATCHES = 16  # batch i sends the contents of batch i % 16


@dataclass
class Backend:
    name: str  # as printed: SQLite, PostgreSQL
    database_url: str
    url: str = ""  # the server's base URL, once started


@dataclass
class Batches:
    """`DISTINCT_BATCHES` random batches of one shape, with their bodies already encoded."""

    logits: list[np.ndarray]
    labels: list[np.ndarray]
    put: list[bytes] = field(default_factory=list)  # PUT /v1/runs/{id}/batches/{batch_id}
    evaluate: list[bytes] = field(default_factory=list)  # POST /v1/evaluate

    @classmethod
    def random(cls, rows: int, classes: int, seed: int = 0) -> Batches:
        rng = np.random.default_rng(seed)
        pairs = [model_outputs(rng, rows, classes) for _ in range(DISTINCT_BATCHES)]
        batches = cls([x for x, _ in pairs], [y for _, y in pairs])
        for x, y in pairs:
            tensors = _batch(x, y)
            batches.put.append(orjson.dumps(tensors))
            batches.evaluate.append(orjson.dumps({**tensors, **SPEC}))
        return batches

    def mean_cross_entropy(self, n_batches: int) -> float:
        """Mean cross-entropy over the rows of batches 0 .. n_batches - 1 as sent (batch i carries
        the tensors of the distinct batch i % DISTINCT_BATCHES), from the engine in this
        process."""
        total = rows = 0.0
        for k, (x, y) in enumerate(zip(self.logits, self.labels, strict=True)):
            times = len(range(k, n_batches, DISTINCT_BATCHES))
            total += times * reduce_loss(cross_entropy(x, y), "sum").loss
            rows += times * len(y)
        return total / rows


def model_outputs(
    rng: np.random.Generator, rows: int, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model that is right more often than not, with every level of confidence:
    noise, plus a margin on the label's logit drawn uniformly from [0, 10)."""
    labels = rng.integers(0, classes, size=rows)
    logits = rng.standard_normal((rows, classes), dtype=np.float32)
    logits[np.arange(rows), labels] += rng.uniform(0, 10, size=rows).astype(np.float32)
    return logits, labels


def _batch(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {"logits": _tensor(logits), "labels": _tensor(labels.astype(np.int64))}


def _tensor(array: np.ndarray) -> dict[str, Any]:
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(little.tobytes()).decode(),
    }


@dataclass
class Sample:
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


Call = Callable[[httpx.Client, int], None]


def drive(
    url: str, clients: int, call: Call, *, seconds: float | None = None, count: int | None = None
) -> Sample:
    """`call(client, i)` for i = 0, 1, ... from `clients` threads, each with its own connection,
    until `seconds` have passed or `count` calls were made."""
    indices = itertools.count()  # next() on it is atomic under the GIL
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def worker(mine: list[float]) -> None:
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as client:
            start.wait()
            deadline = float("inf") if seconds is None else time.perf_counter() + seconds
            while not errors and time.perf_counter() < deadline:
                index = next(indices)
                if count is not None and index >= count:
                    return
                began = time.perf_counter()
                try:
                    call(client, index)
                except BaseException as error:
                    errors.append(error)
                    return
                mine.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in latencies]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    flat = [value for mine in latencies for value in mine]
    return Sample(len(flat), elapsed, flat)


def _expect(response: httpx.Response, status: int) -> httpx.Response:
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: expected {status}, got "
            f"{response.status_code}: {response.text[:500]}"
        )
    return response


def _put_batches(run_id: str, prefix: str, batches: Batches) -> Call:
    def call(client: httpx.Client, index: int) -> None:
        body = batches.put[index % DISTINCT_BATCHES]
        path = f"/v1/runs/{run_id}/batches/{prefix}-{index}"
        _expect(client.put(path, content=body, headers=JSON), 201)

    return call


def _evaluate(batches: Batches) -> Call:
    def call(client: httpx.Client, index: int) -> None:
        body = batches.evaluate[index % DISTINCT_BATCHES]
        _expect(client.post("/v1/evaluate", content=body, headers=JSON), 200)

    return call


def _new_run(url: str, spec: dict[str, Any], name: str) -> str:
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        run_id: str = _expect(client.post("/v1/runs", json={"name": name, **spec}), 201).json()[
            "id"
        ]
        return run_id


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# ---- the databases -------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[tuple[str | None, str | None]]:
    """(URL of a new database, None), dropped at the end; or (None, why not) without a server."""
    url = make_url(admin_url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"loss_service_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        admin.dispose()
        where = url.render_as_string(hide_password=True)
        yield None, f"no PostgreSQL server at {where} ({type(error).__name__}); set {POSTGRES_ENV}"
        return
    try:
        yield url.set(database=name).render_as_string(hide_password=False), None
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _engine(database_url: str) -> Engine:
    url: URL = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return create_engine(url)


def run_row_bytes(database_url: str, run_id: str) -> tuple[int, int, int]:
    """(totals as JSON text, totals as stored, spec as JSON text) of a run's row, in bytes.
    PostgreSQL compresses a large value when it stores it (TOAST); SQLite stores the text."""
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                sizes = (
                    func.octet_length(Run.totals.cast(Text)),
                    func.pg_column_size(Run.totals),
                    func.octet_length(Run.spec.cast(Text)),
                )
            else:
                sizes = (func.length(Run.totals), func.length(Run.totals), func.length(Run.spec))
            row = connection.execute(select(*sizes).where(Run.id == uuid.UUID(run_id))).one()
            return int(row[0]), int(row[1]), int(row[2])
    finally:
        engine.dispose()


def batch_row_bytes(database_url: str) -> tuple[float, int]:
    """(bytes per batch row, its table and indexes together, as allocated; number of rows)."""
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT count(*) FROM batches")).scalar_one()
            if engine.dialect.name == "postgresql":
                size = connection.execute(
                    text("SELECT pg_total_relation_size('batches')")
                ).scalar_one()
            else:
                size = connection.execute(
                    text(
                        "SELECT sum(pgsize) FROM dbstat WHERE name IN "
                        "(SELECT name FROM sqlite_master WHERE tbl_name = 'batches')"
                    )
                ).scalar_one()
            return int(size) / max(int(rows), 1), int(rows)
    finally:
        engine.dispose()


# ---- the measurements ----------------------------------------------------------------------


def throughput(
    backends: list[Backend], batches: Batches, clients: list[int], seconds: float, repeats: int
) -> dict[tuple[str, int], list[Sample]]:
    """Interleaved: per repeat, per client count, evaluate then each database."""
    evaluate_url = backends[0].url
    for backend in backends:  # warm up every path once
        run_id = _new_run(backend.url, SPEC, "warm-up")
        drive(backend.url, 1, _put_batches(run_id, "warm", batches), count=DISTINCT_BATCHES)
    drive(evaluate_url, 1, _evaluate(batches), count=DISTINCT_BATCHES)
    samples: dict[tuple[str, int], list[Sample]] = {}
    for repeat in range(repeats):
        for n in clients:
            sample = drive(evaluate_url, n, _evaluate(batches), seconds=seconds)
            samples.setdefault(("evaluate", n), []).append(sample)
            for backend in backends:
                run_id = _new_run(backend.url, SPEC, f"throughput {n} clients #{repeat}")
                put = _put_batches(run_id, f"c{n}", batches)
                samples.setdefault((backend.name, n), []).append(
                    drive(backend.url, n, put, seconds=seconds)
                )
    return samples


@dataclass
class ReportTiming:
    fill: Sample
    gets: list[float]
    gets_one_batch: list[float]
    report_bytes: int


def report_latency(
    backend: Backend, batches: Batches, fill: int, fill_clients: int, gets: int
) -> ReportTiming:
    """Fill one run with `fill` batches, check it, then time its report."""
    run_id = _new_run(backend.url, SPEC, f"{fill} batches")
    filled = drive(backend.url, fill_clients, _put_batches(run_id, "fill", batches), count=fill)
    one = _new_run(backend.url, SPEC, "one batch")
    drive(backend.url, 1, _put_batches(one, "one", batches), count=1)
    with httpx.Client(base_url=backend.url, timeout=60, trust_env=False) as client:
        report = _expect(client.get(f"/v1/runs/{run_id}"), 200)
        answer = report.json()
        rows = batches.labels[0].shape[0]
        assert answer["n_batches"] == fill, answer["n_batches"]
        assert answer["n_samples"] == fill * rows, answer["n_samples"]
        expected = batches.mean_cross_entropy(fill)
        loss = answer["losses"][0]["loss"]
        assert abs(loss - expected) <= 1e-9 * abs(expected), (loss, expected)
        assert answer["calibration"]["n"] == fill * rows, answer["calibration"]["n"]
        times: dict[str, list[float]] = {run_id: [], one: []}
        for _ in range(gets):  # interleaved: the full run, then the one-batch run
            for key in times:
                began = time.perf_counter()
                _expect(client.get(f"/v1/runs/{key}"), 200)
                times[key].append(time.perf_counter() - began)
    return ReportTiming(filled, times[run_id], times[one], len(report.content))


def storage(backend: Backend, rows: int, n_batches: int) -> list[tuple[int, tuple[int, int, int]]]:
    """(classes, run_row_bytes) of a run with `STORAGE_SPEC` after `n_batches` distinct batches
    of `rows` rows, enough for most of its bins to hold sums (full-length numbers in JSON)."""
    sizes = []
    for classes in STORAGE_CLASSES:
        run_id = _new_run(backend.url, STORAGE_SPEC, f"storage {classes} classes")
        rng = np.random.default_rng(classes)
        with httpx.Client(base_url=backend.url, timeout=120, trust_env=False) as client:
            for index in range(n_batches):  # made one at a time: 1000 classes take memory
                body = orjson.dumps(_batch(*model_outputs(rng, rows, classes)))
                path = f"/v1/runs/{run_id}/batches/storage-{index}"
                _expect(client.put(path, content=body, headers=JSON), 201)
        sizes.append((classes, run_row_bytes(backend.database_url, run_id)))
    return sizes


# ---- the report ----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _kib(size: float) -> str:
    return f"{size / 1024:.1f} KiB" if size >= 1024 else f"{size:.0f} B"


def print_throughput(
    samples: dict[tuple[str, int], list[Sample]], backends: list[Backend], clients: list[int]
) -> None:
    names = ["evaluate", *(backend.name for backend in backends)]
    header = ["clients"]
    header += [f"{name} /s" for name in names]
    header += [f"{name} p50 ms" for name in names]
    header += [f"{backend.name} / evaluate" for backend in backends]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in clients:
        rates = {name: statistics.median(s.rate for s in samples[name, n]) for name in names}
        p50 = {
            name: statistics.median(v for s in samples[name, n] for v in s.latencies)
            for name in names
        }
        cells = [str(n)]
        cells += [f"{rates[name]:.1f}" for name in names]
        cells += [_ms(p50[name]) for name in names]
        # time per batch relative to the stateless request: 1.00x = the database costs nothing
        cells += [f"{rates['evaluate'] / rates[backend.name]:.2f}x" for backend in backends]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES_URL),
        help=f"a database on the server to create the benchmark's own from (default: "
        f"{POSTGRES_ENV} or {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--fill", type=int, default=10_000, help="batches in the report's run")
    parser.add_argument("--fill-rows", type=int, default=16)
    parser.add_argument("--fill-clients", type=int, default=16)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument(
        "--storage-batches",
        type=int,
        default=64,
        help="of 256 rows, into the storage runs (0: no storage table)",
    )
    args = parser.parse_args()
    wanted = [name.strip().lower() for name in args.backends.split(",") if name.strip()]
    unknown = set(wanted) - {"sqlite", "postgresql"}
    if unknown or not wanted:
        parser.error(f"--backends: sqlite and/or postgresql, got {args.backends!r}")
    clients = [int(n) for n in args.clients.split(",")]

    with contextlib.ExitStack() as stack:
        backends: list[Backend] = []
        if "sqlite" in wanted:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-runs-"))
            backends.append(Backend("SQLite", f"sqlite:///{directory}/runs.db"))
        if "postgresql" in wanted:
            database, why = stack.enter_context(postgres_database(args.postgres_url))
            if database is None:
                print(f"PostgreSQL: skipped: {why}")
            else:
                backends.append(Backend("PostgreSQL", database))
        if not backends:
            print("no database to measure")
            return
        for backend in backends:
            settings = {"LOSS_SERVICE_DATABASE_URL": backend.database_url}
            backend.url = stack.enter_context(serving(settings))
        run(args, backends, clients)


def run(args: argparse.Namespace, backends: list[Backend], clients: list[int]) -> None:
    batches = Batches.random(args.rows, args.classes)
    samples = throughput(backends, batches, clients, args.seconds, args.repeats)
    print(
        f"\nBatches into one run: {args.rows} x {args.classes} float32 logits + int64 labels "
        f"(base64 JSON), cross-entropy + calibration (15 bins); medians of {args.repeats} x "
        f"{args.seconds:g} s per cell; evaluate: POST /v1/evaluate of the same batches "
        "(nothing stored); / evaluate: time per batch against it"
    )
    print_throughput(samples, backends, clients)

    if args.fill > 0:
        small = Batches.random(args.fill_rows, args.classes, seed=1)
        print(
            f"\nThe report (GET /v1/runs/{{id}}) of a run with {args.fill} batches of "
            f"{args.fill_rows} x {args.classes}, filled by {args.fill_clients} clients; "
            f"{args.gets} GETs one after the other, beside a run of one batch"
        )
        print(
            "| database | batches | fill batches/s | GET p50 ms | GET p99 ms | "
            "1-batch run: GET p50 ms | report |"
        )
        print("|---|---|---|---|---|---|---|")
        for backend in backends:
            timing = report_latency(backend, small, args.fill, args.fill_clients, args.gets)
            print(
                f"| {backend.name} | {args.fill} | {timing.fill.rate:.1f} | "
                f"{_ms(statistics.median(timing.gets))} | {_ms(_percentile(timing.gets, 99))} | "
                f"{_ms(statistics.median(timing.gets_one_batch))} | {_kib(timing.report_bytes)} |"
            )

    if args.storage_batches > 0:
        print_storage(backends, args.storage_batches)


def print_storage(backends: list[Backend], n_batches: int) -> None:
    print(
        "\nStorage, read from the database: a run's row with "
        f"{len(STORAGE_SPEC['losses'])} losses and calibration (15 bins, top-5), after "
        f"{n_batches} batches of 256 rows; a batch's row with its share of the primary key "
        "index, over every batch stored"
    )
    print("| database | classes | totals (JSON) | totals as stored | spec | batch row (rows) |")
    print("|---|---|---|---|---|---|")
    for backend in backends:
        sizes = storage(backend, rows=256, n_batches=n_batches)
        per_batch, n_rows = batch_row_bytes(backend.database_url)
        for classes, (as_text, stored, spec) in sizes:
            print(
                f"| {backend.name} | {classes} | {_kib(as_text)} | {_kib(stored)} | "
                f"{_kib(spec)} | {_kib(per_batch)} ({n_rows}) |"
            )


if __name__ == "__main__":
    main()
