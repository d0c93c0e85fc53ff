"""The database layer of evaluation runs: SQLAlchemy 2 on SQLite or PostgreSQL, Alembic schema.

No HTTP here: the run use cases call a `RunStore`, which raises the service's own errors
(`NotFound`, `Conflict`, `InvalidInput`, `DatabaseUnavailable`) and nothing of SQLAlchemy's.
"""

from service.db.models import MAX_BATCH_ID_LENGTH
from service.db.records import BatchOutcome, BatchRecord, RunRecord, RunStatus
from service.db.store import Fold, RunStore, upgrade

__all__ = [
    "MAX_BATCH_ID_LENGTH",
    "BatchOutcome",
    "BatchRecord",
    "Fold",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "upgrade",
]
