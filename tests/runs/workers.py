"""What the spawned processes of the multi-process tests run (importable by a fresh interpreter)."""

from __future__ import annotations

import time
import uuid
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from service.db import RunStore
from tests.runs.helpers import add, digest


def add_batches(
    url: str, run_id: uuid.UUID, batch_ids: list[str], start: Event, results: Queue[Any]
) -> None:
    """Adds the batches once `start` is set; puts how many of each outcome, or the error."""
    store = RunStore(url)
    try:
        store.check()  # connected before the start, so that the processes write together
        if not start.wait(60):
            raise TimeoutError("never started")
        outcomes = {"CREATED": 0, "DUPLICATE": 0}
        for batch_id in batch_ids:
            outcomes[add(store, run_id, batch_id)[0].name] += 1
        results.put(outcomes)
    except BaseException as error:
        results.put(repr(error))
        raise
    finally:
        store.dispose()


def add_and_hang(url: str, run_id: uuid.UUID, batch_id: str, holding: Event) -> None:
    """Starts a batch and stops inside it, the run locked and the batch's row written but not
    committed, until the process is killed."""
    store = RunStore(url)

    def fold(totals: dict[str, Any]) -> dict[str, Any]:
        holding.set()
        time.sleep(600)
        return totals

    store.add_batch(run_id, batch_id, digest=digest(""), n_samples=10, fold=fold)
