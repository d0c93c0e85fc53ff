"""What the store hands out: immutable records, never ORM objects tied to a session."""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from service.db.models import MAX_BATCH_ID_LENGTH, Batch, Run
from service.errors import InvalidInput

RunStatus = Literal["open", "closed"]


@dataclass(frozen=True)
class RunRecord:
    """A run as stored. `spec` and `totals` are the caller's JSON, returned as given."""

    id: uuid.UUID
    name: str | None
    metadata: dict[str, str]
    spec: dict[str, Any]
    status: RunStatus
    created_at: datetime  # timezone-aware UTC, as are all the store's datetimes
    updated_at: datetime
    n_batches: int
    n_samples: int
    totals: dict[str, Any]

    @classmethod
    def of(cls, run: Run) -> RunRecord:
        return cls(
            id=run.id,
            name=run.name,
            metadata=run.labels,
            spec=run.spec,
            status=cast(RunStatus, run.status),  # the table's check constraint allows no other
            created_at=run.created_at,
            updated_at=run.updated_at,
            n_batches=run.n_batches,
            n_samples=run.n_samples,
            totals=run.totals,
        )


@dataclass(frozen=True)
class BatchRecord:
    """A batch's idempotency record: its key, the digest of its tensors, when it counted."""

    run_id: uuid.UUID
    batch_id: str
    digest: str
    n_samples: int
    created_at: datetime

    @classmethod
    def of(cls, batch: Batch) -> BatchRecord:
        return cls(
            run_id=batch.run_id,
            batch_id=batch.batch_id,
            digest=batch.digest,
            n_samples=batch.n_samples,
            created_at=batch.created_at,
        )


class BatchOutcome(enum.Enum):
    CREATED = "created"  # the batch was counted now
    DUPLICATE = "duplicate"  # the same batch id and digest were counted before; nothing changed


def require_json(value: object, field: str) -> None:
    """JSON has no NaN or infinity: refused here, before any write, on every dialect."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise InvalidInput(
            f"{field} holds NaN or infinity, which JSON cannot represent", field=field
        ) from None


def require_text(value: str, field: str) -> None:
    """PostgreSQL text cannot hold NUL characters; SQLite would. Refused on both."""
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain NUL characters", field=field)


def require_batch_id(batch_id: str) -> None:
    if not batch_id or len(batch_id) > MAX_BATCH_ID_LENGTH:
        raise InvalidInput(
            f"batch_id must have 1 to {MAX_BATCH_ID_LENGTH} characters", field="batch_id"
        )
    require_text(batch_id, "batch_id")
