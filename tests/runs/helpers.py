"""What the store tests share: a fold that makes counting mistakes visible, direct row reads.

The spawned worker processes import this module too, so it stays free of fixtures.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import create_engine, select

from service.db import Fold, RunRecord, RunStore
from service.db.models import Batch

EMPTY_TOTALS: dict[str, Any] = {"count": 0, "ids": []}


def counting(batch_id: str) -> Fold:
    """A fold adding 1 to a counter and the batch id to a list: a lost update loses one, a
    batch counted twice appears twice."""

    def fold(totals: dict[str, Any]) -> dict[str, Any]:
        return {"count": totals["count"] + 1, "ids": [*totals["ids"], batch_id]}

    return fold


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def new_run(store: RunStore, name: str | None = "run") -> RunRecord:
    return store.create_run(name=name, metadata={}, spec={}, totals=EMPTY_TOTALS)


def add(store: RunStore, run_id: uuid.UUID, batch_id: str, *, content: str = "") -> Any:
    """Adds a batch whose digest is that of `content` (by default, the same for every call)."""
    return store.add_batch(
        run_id, batch_id, digest=digest(content), n_samples=10, fold=counting(batch_id)
    )


def stored_batch_ids(url: str, run_id: uuid.UUID) -> list[str]:
    """The batch rows of a run, read without the store."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = select(Batch.batch_id).where(Batch.run_id == run_id).order_by(Batch.batch_id)
            return list(connection.scalars(query))
    finally:
        engine.dispose()
