"""Several OS processes on one database, as replicas are: nothing lost, nothing counted twice,
and a process killed inside a batch leaves no trace of it."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal

import pytest

from service.db import BatchOutcome, RunStore
from tests.runs import workers
from tests.runs.helpers import add, new_run, stored_batch_ids

pytestmark = [pytest.mark.slow, pytest.mark.system]

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter, as another replica is


def test_processes_adding_batches_at_once(store: RunStore, db_url: str) -> None:
    """Four processes send the same 16 batches (each in its own order) and 8 of their own."""
    run = new_run(store)
    shared = [f"shared-{i:02}" for i in range(16)]
    start, results = SPAWN.Event(), SPAWN.Queue()
    processes = []
    for k in range(4):
        mine = [*shared, *(f"p{k}-{i}" for i in range(8))]
        random.Random(k).shuffle(mine)
        processes.append(
            SPAWN.Process(target=workers.add_batches, args=(db_url, run.id, mine, start, results))
        )
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(60)
        assert process.exitcode == 0, outcomes
    assert sum(o["CREATED"] for o in outcomes) == 16 + 4 * 8, outcomes
    assert sum(o["DUPLICATE"] for o in outcomes) == 3 * 16, outcomes
    expected = sorted([*shared, *(f"p{k}-{i}" for k in range(4) for i in range(8))])
    final = store.get_run(run.id)
    assert (final.n_batches, final.n_samples) == (48, 480)
    assert sorted(final.totals["ids"]) == expected
    assert final.totals["count"] == 48
    assert stored_batch_ids(db_url, run.id) == expected


def test_a_process_killed_inside_a_batch(store: RunStore, db_url: str) -> None:
    run = new_run(store)
    add(store, run.id, "before")
    before = store.get_run(run.id)
    holding = SPAWN.Event()
    process = SPAWN.Process(target=workers.add_and_hang, args=(db_url, run.id, "b1", holding))
    process.start()
    try:
        assert holding.wait(120), "the process never reached its fold"
    finally:
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        process.join(60)
    assert process.exitcode == -signal.SIGKILL
    assert store.get_run(run.id) == before
    assert stored_batch_ids(db_url, run.id) == ["before"]
    outcome, after = add(store, run.id, "b1")  # waits for the lock the dead process held, if any
    assert outcome is BatchOutcome.CREATED
    assert (after.n_batches, after.totals["ids"]) == (2, ["before", "b1"])
