"""One SQLAlchemy engine per database URL, configured for the dialect.

SQLite (the embedded default): the file's directory is created; every connection turns foreign
keys on and uses write-ahead logging, so readers never wait for the writer; the busy timeout is
the lock timeout. SQLAlchemy emits `BEGIN` itself (the `sqlite3` module's own transaction control
is switched off), so a write transaction can start with `BEGIN IMMEDIATE`: it takes the write
lock before reading, and two writers never both read and then race to upgrade their locks.

PostgreSQL (`postgresql+psycopg://`, what several replicas share): a connect timeout, so a
server that is down fails in seconds; `lock_timeout`, `statement_timeout` and
`idle_in_transaction_session_timeout` per session; connections are pinged when taken from the
pool, so a restarted server or a terminated backend costs one reconnect, not an error.
"""

from __future__ import annotations

import contextlib
import json
import math
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError

# Execution option of a write transaction (`engine.execution_options(**WRITE)`): on SQLite it
# begins with `BEGIN IMMEDIATE`; PostgreSQL ignores it (the store locks rows instead).
WRITE = {"loss_service_write": True}

# JSON has no NaN or infinity; SQLite would store them as text PostgreSQL refuses. Refusing them
# on both keeps the dialects alike. `repr` of a float round-trips exactly, which `json` uses.
_dumps = partial(json.dumps, allow_nan=False, separators=(",", ":"))


def database_url(url: str) -> URL:
    """The parsed URL; `postgresql://` means psycopg 3, the driver this package installs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "not a database URL (expected sqlite:///... or postgresql://...)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ValueError(
            f"unsupported database driver {parsed.drivername!r}: "
            "use sqlite:///path or postgresql+psycopg://"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each pooled connection would open its own empty in-memory database.
        raise ValueError("an in-memory SQLite database cannot be shared: give a file path")
    return parsed


def create(
    url: URL, *, connect_timeout_s: float, lock_timeout_s: float, statement_timeout_s: float
) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite(url, lock_timeout_s=lock_timeout_s)
    return _postgresql(
        url,
        connect_timeout_s=connect_timeout_s,
        lock_timeout_s=lock_timeout_s,
        statement_timeout_s=statement_timeout_s,
    )


def _sqlite(url: URL, *, lock_timeout_s: float) -> Engine:
    assert url.database is not None
    # Where the directory cannot be made, the first connection fails ("unable to open database
    # file") and the store reports the database unavailable, as for any other connect failure.
    with contextlib.suppress(OSError):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # sqlite3's `timeout` is SQLite's busy timeout: how long a statement waits for a lock
        connect_args={"timeout": lock_timeout_s},
        json_serializer=_dumps,
        pool_timeout=lock_timeout_s,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" hook below emits BEGIN
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")  # per connection; off by default
            cursor.execute("PRAGMA journal_mode = WAL")  # persistent in the file; cheap if set
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("loss_service_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _postgresql(
    url: URL, *, connect_timeout_s: float, lock_timeout_s: float, statement_timeout_s: float
) -> Engine:
    idle_s = max(statement_timeout_s, 60)
    options = " ".join(
        (
            f"-c lock_timeout={_milliseconds(lock_timeout_s)}",
            f"-c statement_timeout={_milliseconds(statement_timeout_s)}",
            # A client that stopped mid-transaction (SIGSTOP, a hung host) must not hold a run's
            # row lock forever; a killed one closes its socket and is rolled back at once.
            f"-c idle_in_transaction_session_timeout={_milliseconds(idle_s)}",
        )
    )
    return create_engine(
        url,
        connect_args={
            # libpq's connect_timeout is whole seconds (2 at least, as psycopg applies it)
            "connect_timeout": max(2, math.ceil(connect_timeout_s)),
            "options": options,
            "application_name": "loss-service",
        },
        pool_pre_ping=True,
        pool_timeout=connect_timeout_s + lock_timeout_s,
        json_serializer=_dumps,
    )


def _milliseconds(seconds: float) -> int:
    """A timeout setting's value: 0 disables a PostgreSQL timeout, so at least 1 ms."""
    return max(1, round(seconds * 1000))
