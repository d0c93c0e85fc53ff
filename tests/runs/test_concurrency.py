"""Many threads writing at once, on both dialects: nothing lost, nothing counted twice, and
only the store's own errors come out."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from service.db import BatchOutcome, RunStore
from service.errors import Conflict, NotFound
from tests.runs.helpers import add, new_run, stored_batch_ids

T = TypeVar("T")


def at_once(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Runs the calls on one thread each, released together; each one's result or exception."""
    start = threading.Barrier(len(calls))
    results: list[T | BaseException] = [RuntimeError("did not run")] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = calls[index]()
        except BaseException as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _outcomes(results: list[Any]) -> Counter[str]:
    return Counter(
        result[0].name if isinstance(result, tuple) else type(result).__name__ for result in results
    )


def test_32_threads_into_one_run(store: RunStore, db_url: str) -> None:
    run = new_run(store)
    ids = [f"b{i:02}" for i in range(32)]
    results = at_once([partial(add, store, run.id, batch_id) for batch_id in ids])
    assert _outcomes(results) == {"CREATED": 32}
    final = store.get_run(run.id)
    assert (final.n_batches, final.n_samples) == (32, 320)
    assert final.totals["count"] == 32
    assert sorted(final.totals["ids"]) == ids
    assert stored_batch_ids(db_url, run.id) == ids


ROUNDS = 5


def test_one_batch_id_from_8_threads_with_the_same_bytes(store: RunStore) -> None:
    run = new_run(store)
    for round_ in range(ROUNDS):
        batch_id = f"same-{round_}"
        results = at_once([partial(add, store, run.id, batch_id)] * 8)
        assert _outcomes(results) == {"CREATED": 1, "DUPLICATE": 7}
    final = store.get_run(run.id)
    assert final.n_batches == ROUNDS
    assert final.totals["ids"] == [f"same-{r}" for r in range(ROUNDS)]


def test_one_batch_id_from_8_threads_with_different_bytes(store: RunStore) -> None:
    run = new_run(store)
    for round_ in range(ROUNDS):
        batch_id = f"diff-{round_}"
        results = at_once(
            [
                partial(add, store, run.id, batch_id, content=content)
                for content in map(str, range(8))
            ]
        )
        assert _outcomes(results) == {"CREATED": 1, "Conflict": 7}
        (winner,) = (i for i, result in enumerate(results) if isinstance(result, tuple))
        # The stored digest is the winner's: its bytes replay, any other's conflict.
        assert add(store, run.id, batch_id, content=str(winner))[0] is BatchOutcome.DUPLICATE
        with pytest.raises(Conflict):
            add(store, run.id, batch_id, content=str((winner + 1) % 8))
    assert store.get_run(run.id).n_batches == ROUNDS


def test_a_delete_racing_batches(store: RunStore, db_url: str) -> None:
    """Each batch either counted before the delete or finds no run; the delete takes all."""
    run = new_run(store)
    calls: list[Callable[[], Any]] = [partial(add, store, run.id, f"b{i}") for i in range(12)]
    calls.insert(6, lambda: store.delete_run(run.id))
    results = at_once(calls)
    outcomes = _outcomes(results)
    assert outcomes["NoneType"] == 1  # the delete
    assert outcomes["CREATED"] + outcomes["NotFound"] == 12
    assert set(outcomes) <= {"NoneType", "CREATED", "NotFound"}
    with pytest.raises(NotFound):
        store.get_run(run.id)
    assert stored_batch_ids(db_url, run.id) == []


def test_a_close_racing_batches(store: RunStore) -> None:
    """Batches counted before the close are all in the closed run; later ones are refused."""
    run = new_run(store)
    calls: list[Callable[[], Any]] = [partial(add, store, run.id, f"b{i}") for i in range(12)]
    calls.insert(6, lambda: store.close_run(run.id))
    results = at_once(calls)
    outcomes = _outcomes(results)
    assert outcomes["CREATED"] + outcomes["Conflict"] == 12
    closed = next(r for r in results if not isinstance(r, tuple | BaseException))
    final = store.get_run(run.id)
    assert final == closed
    assert final.n_batches == outcomes["CREATED"] == final.totals["count"]


def test_runs_created_at_once(store: RunStore) -> None:
    results = at_once([lambda: new_run(store)] * 16)
    assert {type(result).__name__ for result in results} == {"RunRecord"}
    listed, _ = store.list_runs(limit=100, cursor=None)
    assert {run.id for run in listed} == {run.id for run in results if hasattr(run, "id")}
    assert len(listed) == 16


def test_sqlite_16_writer_threads_on_two_stores(tmp_path: Path) -> None:
    """Two stores on one file (as two processes would be): their writers meet SQLite's lock
    itself, and its "database is locked" never comes out."""
    url = f"sqlite:///{tmp_path / 'contended.db'}"
    first, second = RunStore(url), RunStore(url)
    try:
        first.upgrade()
        runs = [new_run(first), new_run(second)]

        def writer(store: RunStore, index: int) -> int:
            for n in range(8):
                add(store, runs[index % 2].id, f"w{index}-{n}")
                store.get_run(runs[(index + 1) % 2].id)  # readers interleave with the writers
            return index

        results = at_once([partial(writer, first if i % 2 else second, i) for i in range(16)])
        assert results == list(range(16))
        for run in runs:
            assert first.get_run(run.id).n_batches == 8 * 8
            assert first.get_run(run.id).totals["count"] == 8 * 8
    finally:
        first.dispose()
        second.dispose()
