"""The repository of evaluation runs: each method is one transaction.

The store keeps the caller's JSON (a run's spec, its running totals) without interpreting it and
guarantees the transactional rules: a batch counts entirely or not at all, once per batch id,
never into a closed run, whatever the number of threads, processes and replicas writing.

How a batch is serialised with the others on the same run:
- PostgreSQL: `SELECT ... FOR UPDATE` on the run's row; batches to other runs do not wait.
- SQLite: the transaction starts with `BEGIN IMMEDIATE`, which takes the database's one write
  lock; threads of one process queue on a lock of their own first (see `_writer_slot`).
The batch row, the folded totals and the counters then commit together, or nothing does: a
process killed in between leaves the database as it was, and the retry of its batch counts.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from service.db import connect, faults, migrate, paging
from service.db.models import MAX_DIGEST_LENGTH, Batch, Run
from service.db.records import (
    BatchOutcome,
    BatchRecord,
    RunRecord,
    require_batch_id,
    require_json,
    require_text,
)
from service.errors import Conflict, DatabaseUnavailable, InvalidInput, NotFound

T = TypeVar("T")

Fold = Callable[[dict[str, Any]], dict[str, Any]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RunStore:
    """Evaluation runs in a SQLite file or a PostgreSQL database, by URL.

    `connect_timeout_s` bounds a connect to a server that does not answer; `lock_timeout_s`
    bounds the wait for a run that another request is writing (and, on SQLite, for the write
    lock); `statement_timeout_s` bounds any one statement on PostgreSQL. Past them, and when the
    database cannot be reached, methods raise `DatabaseUnavailable` carrying `retry_after_s`.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5,
        lock_timeout_s: float = 10,
        statement_timeout_s: float = 30,
        retry_after_s: int = 5,
    ) -> None:
        parsed = connect.database_url(url)
        self._engine = connect.create(
            parsed,
            connect_timeout_s=connect_timeout_s,
            lock_timeout_s=lock_timeout_s,
            statement_timeout_s=statement_timeout_s,
        )
        self._writer = self._engine.execution_options(**connect.WRITE)
        self._lock_timeout_s = lock_timeout_s
        self._retry_after_s = retry_after_s
        # SQLite admits one writer at a time. This process's threads wait for each other here,
        # woken as soon as the writer before them is done, rather than in SQLite's busy handler,
        # which polls with growing sleeps; other processes on the file meet the busy timeout.
        self._sqlite_writer = threading.Lock() if self.dialect == "sqlite" else None

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def upgrade(self) -> None:
        """Migrate the schema to the newest revision; safe when several replicas start at once."""
        with self._writer_slot():
            self._retrying(lambda: migrate.upgrade_to_head(self._engine))

    def check(self) -> None:
        """Raise `DatabaseUnavailable` unless the database answers a query now."""

        def ping() -> None:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        self._retrying(ping)

    def create_run(
        self,
        *,
        name: str | None,
        metadata: dict[str, str],
        spec: dict[str, Any],
        totals: dict[str, Any],
    ) -> RunRecord:
        if name is not None:
            require_text(name, "name")
        for field, value in (("metadata", metadata), ("spec", spec), ("totals", totals)):
            require_json(value, field)
        run_id = uuid.uuid4()

        def create() -> RunRecord:
            now = _utcnow()
            run = Run(
                id=run_id,
                name=name,
                labels=metadata,
                spec=spec,
                status="open",
                created_at=now,
                updated_at=now,
                n_batches=0,
                n_samples=0,
                totals=totals,
            )
            with self._writing() as session:
                session.add(run)
                return RunRecord.of(run)

        return self._retrying(create)

    def get_run(self, run_id: uuid.UUID) -> RunRecord:
        def get() -> RunRecord:
            with Session(self._engine) as session:
                return RunRecord.of(_found(session.get(Run, run_id), run_id))

        return self._retrying(get)

    def get_batch(self, run_id: uuid.UUID, batch_id: str) -> BatchRecord:
        """The record of a batch counted into a run; NotFound for an unknown run or batch id."""
        require_batch_id(batch_id)

        def get() -> BatchRecord:
            with Session(self._engine) as session:
                batch = session.get(Batch, (run_id, batch_id))
                if batch is None:
                    _found(session.get(Run, run_id), run_id)
                    raise NotFound(f"run {run_id} has no batch {batch_id!r}", field="batch_id")
                return BatchRecord.of(batch)

        return self._retrying(get)

    def list_runs(
        self, *, limit: int, cursor: str | None = None
    ) -> tuple[list[RunRecord], str | None]:
        """Runs newest first, at most `limit`, and the cursor of the next page (None: last)."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1", field="limit")
        query = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1)
        if cursor is not None:
            query = query.where(paging.after(cursor))

        def page() -> list[RunRecord]:
            with Session(self._engine) as session:
                return [RunRecord.of(run) for run in session.scalars(query)]

        runs = self._retrying(page)
        if len(runs) <= limit:
            return runs, None
        last = runs[limit - 1]
        return runs[:limit], paging.encode(last.created_at, last.id)

    def add_batch(
        self, run_id: uuid.UUID, batch_id: str, *, digest: str, n_samples: int, fold: Fold
    ) -> tuple[BatchOutcome, RunRecord]:
        """Count one batch into its run, once: one transaction holding the run's lock.

        `fold(totals)` returns the run's new totals (the batch's statistics merged in; the
        caller computes them before the call, since the run stays locked while `fold` runs).
        It receives a copy it may change. It may run again if the transaction is retried, so
        it must not have effects of its own; an exception from it rolls everything back and
        propagates. A batch id stored with the same digest answers DUPLICATE and changes
        nothing, even once the run is closed (a replay answers what the first call did).
        """
        require_batch_id(batch_id)
        if not 0 < len(digest) <= MAX_DIGEST_LENGTH:
            raise ValueError(f"a digest has 1 to {MAX_DIGEST_LENGTH} characters")
        if n_samples < 0:
            raise ValueError("n_samples must be non-negative")

        def add() -> tuple[BatchOutcome, RunRecord]:
            with self._writing() as session:
                run = _found(_locked(session, run_id), run_id)
                stored = session.get(Batch, (run_id, batch_id))
                if stored is not None:
                    if stored.digest != digest:
                        raise Conflict(
                            f"batch_id {batch_id!r} was already used for a different batch",
                            field="batch_id",
                        )
                    return BatchOutcome.DUPLICATE, RunRecord.of(run)
                if run.status == "closed":
                    raise Conflict("run is closed")
                now = _utcnow()
                session.add(
                    Batch(
                        run_id=run_id,
                        batch_id=batch_id,
                        digest=digest,
                        n_samples=n_samples,
                        created_at=now,
                    )
                )
                session.flush()  # the key first: a clash surfaces before any work is done
                totals = fold(run.totals)
                require_json(totals, "totals")
                run.totals = totals
                flag_modified(run, "totals")  # `fold` may have returned the same dict, changed
                run.n_batches += 1
                run.n_samples += n_samples
                run.updated_at = now
                return BatchOutcome.CREATED, RunRecord.of(run)

        return self._retrying(add)

    def close_run(self, run_id: uuid.UUID) -> RunRecord:
        """Freeze a run: later batches are refused. Closing a closed run changes nothing."""

        def close() -> RunRecord:
            with self._writing() as session:
                run = _found(_locked(session, run_id), run_id)
                if run.status != "closed":
                    run.status = "closed"
                    run.updated_at = _utcnow()
                return RunRecord.of(run)

        return self._retrying(close)

    def delete_run(self, run_id: uuid.UUID) -> None:
        """Remove a run and its batch rows (the foreign key cascades)."""

        def remove() -> None:
            with self._writing() as session:
                # Core on the session's connection: its result has the row count
                deleted = session.connection().execute(delete(Run).where(Run.id == run_id)).rowcount
            if deleted == 0:
                raise NotFound(f"no run {run_id}")

        self._retrying(remove)

    def dispose(self) -> None:
        """Close the pooled connections (at shutdown)."""
        self._engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A session in a write transaction, committed when the block ends without error."""
        with self._writer_slot(), Session(self._writer) as session, session.begin():
            yield session

    @contextmanager
    def _writer_slot(self) -> Iterator[None]:
        if self._sqlite_writer is None:  # PostgreSQL: row locks, taken in the transaction
            yield
            return
        if not self._sqlite_writer.acquire(timeout=self._lock_timeout_s):
            raise DatabaseUnavailable(
                "the database stayed locked by another writer past the lock timeout",
                retry_after_s=self._retry_after_s,
            )
        try:
            yield
        finally:
            self._sqlite_writer.release()

    def _retrying(self, operation: Callable[[], T]) -> T:
        return faults.retrying(operation, retry_after_s=self._retry_after_s)


def _locked(session: Session, run_id: uuid.UUID) -> Run | None:
    """The run's row, locked until the transaction ends (on SQLite the whole database is)."""
    return session.scalars(select(Run).where(Run.id == run_id).with_for_update()).one_or_none()


def _found(run: Run | None, run_id: uuid.UUID) -> Run:
    if run is None:
        raise NotFound(f"no run {run_id}")
    return run


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema (`loss-service db upgrade`)."""
    store = RunStore(url)
    try:
        store.upgrade()
    finally:
        store.dispose()
