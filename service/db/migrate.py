"""Schema migrations (Alembic), applied at start and by `loss-service db upgrade`.

Several replicas may start at once against one database. The upgrade runs in one transaction
that first takes a lock every replica waits for: PostgreSQL's transaction-scoped advisory lock,
SQLite's write lock (`BEGIN IMMEDIATE`). The first replica migrates and commits; the others then
find the schema at head and do nothing. Both dialects run DDL inside a transaction, so a replica
killed half-way leaves the previous schema.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, func, select

from service.db.connect import WRITE

SCRIPT_LOCATION = "service.db:migrations"

# Any 64-bit key no other application of the database uses: the ASCII of "lossmigr".
_ADVISORY_LOCK_KEY = int.from_bytes(b"lossmigr", "big", signed=True)
# How long a replica waits for another one's migration; its own DDL keeps the session's
# lock_timeout, so it never queues for minutes behind live requests holding table locks.
_WAIT_FOR_OTHER_REPLICA = "5min"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration in code: no alembic.ini is read at run time."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(engine: Engine) -> None:
    with engine.execution_options(**WRITE).begin() as connection:
        if connection.dialect.name == "postgresql":
            lock_timeout = connection.exec_driver_sql("SHOW lock_timeout").scalar_one()
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{_WAIT_FOR_OTHER_REPLICA}'")
            connection.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{lock_timeout}'")
            # A migration may rewrite a large table; the request timeout does not apply.
            connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        command.upgrade(alembic_config(connection), "head")
