"""Database failures as the service's errors, with bounded retries of the transient ones.

Retried (the transaction did not commit, and running it again may succeed): SQLite's "database
is locked" once its busy timeout ran out, PostgreSQL's serialization failures and deadlocks, and
integrity errors (a concurrent write got there first; the retry reads what it wrote and answers
from that). Everything that says the database cannot serve now (refused or timed-out connects,
a lost connection, a server shutting down, a lock or statement timeout, an exhausted pool)
becomes `DatabaseUnavailable` with a short detail naming the kind of failure: driver messages
are not repeated, since some name hosts and users of the URL.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

from service.errors import Conflict, DatabaseUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 4
_BACKOFF_S = 0.02  # doubled per attempt, with jitter so that retrying writers spread out

# PostgreSQL SQLSTATE classes and codes (Appendix A of its manual)
_RETRY_SQLSTATES = {"40001": "serialization failure", "40P01": "deadlock"}
_UNAVAILABLE_SQLSTATES = {
    "55P03": "timed out waiting for a lock held by another request",
    "57014": "a statement ran past the statement timeout",
}
_UNAVAILABLE_SQLSTATE_CLASSES = {
    "08": "the connection to the database failed",
    "53": "the database server is out of resources (connections, memory or disk)",
    "57": "the database server is shutting down or restarting",
}
# SQLite result codes (sqlite3 exceptions carry `sqlite_errorname` since Python 3.11)
_SQLITE_RETRY = ("SQLITE_BUSY", "SQLITE_LOCKED")
_SQLITE_UNAVAILABLE = ("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_READONLY")


def retrying(operation: Callable[[], T], *, retry_after_s: int) -> T:
    """`operation()`, run again on transient failures, at most `MAX_ATTEMPTS` times in all.

    `operation` must be one whole transaction: each attempt starts from a rolled-back state.
    Exceptions that are not the database's (a fold's, the service's own) pass through untouched.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return operation()
        except sa_exc.SQLAlchemyError as error:
            retry, reason = _classify(error)
            if reason is None:
                raise
            if not retry or attempt == MAX_ATTEMPTS:
                logger.warning("database error: %s: %s", reason, _describe(error))
                if isinstance(error, sa_exc.IntegrityError):
                    raise Conflict(
                        "the run changed while this request was applied; try again"
                    ) from error
                raise DatabaseUnavailable(reason, retry_after_s=retry_after_s) from error
            logger.info("database busy, retrying (attempt %d): %s", attempt, _describe(error))
            time.sleep(random.uniform(0, _BACKOFF_S * 2**attempt))
    raise AssertionError("unreachable")


def _classify(error: sa_exc.SQLAlchemyError) -> tuple[bool, str | None]:
    """(retry?, reason): the reason is None for errors that are bugs, not the database's state."""
    if isinstance(error, sa_exc.TimeoutError):  # the pool had no connection free in time
        return False, "no database connection became free in time"
    if isinstance(error, sa_exc.IntegrityError):
        return True, "a concurrent write conflicted"
    if not isinstance(error, sa_exc.DBAPIError):
        return False, None
    if error.connection_invalidated:
        return False, "the connection to the database was lost"
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate in _RETRY_SQLSTATES:
            return True, f"concurrent transactions kept failing ({_RETRY_SQLSTATES[sqlstate]})"
        if sqlstate in _UNAVAILABLE_SQLSTATES:
            return False, _UNAVAILABLE_SQLSTATES[sqlstate]
        if sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return False, _UNAVAILABLE_SQLSTATE_CLASSES[sqlstate[:2]]
        return False, None  # the server answered: an error in the request, not its state
    errorname = getattr(orig, "sqlite_errorname", None)
    if isinstance(errorname, str):
        if errorname.startswith(_SQLITE_RETRY):
            return True, "the database stayed locked by another writer past the lock timeout"
        if errorname.startswith(_SQLITE_UNAVAILABLE):
            return False, "the SQLite database file cannot be opened or written"
        return False, None  # SQL errors ("no such table") are bugs, not the database's state
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        # psycopg's connect failures carry no SQLSTATE: refused, timed out, no such host, and
        # the server's refusals too (no such database or role, wrong password, too many clients)
        return False, "cannot connect to the database"
    return False, None


def _describe(error: sa_exc.SQLAlchemyError) -> str:
    """The error's kind for the log, without its message (which may name hosts and users)."""
    orig = getattr(error, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
    kind = type(orig).__name__ if orig is not None else type(error).__name__
    return f"{kind} ({code})" if code else kind
