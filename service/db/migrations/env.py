"""Alembic's entry point for the runs schema.

The service runs it through `service.db.migrate`, which passes an open connection (already in
the transaction that holds the migration lock) in `config.attributes["connection"]`. A developer
runs it with the `alembic` command and `-c service/db/migrations/alembic.ini -x url=...` (see
that file); `--sql` writes the SQL instead of running it.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from service.db.models import Base, UtcDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(kind: str, item: Any, autogen_context: Any) -> str | Literal[False]:
    """Write the service's column types as plain SQLAlchemy types: a migration must not import
    code that may change after it was written."""
    if kind == "type" and isinstance(item, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False  # Alembic's default rendering


def _configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=_render_item,
        # SQLite alters a table by copying it ("batch" mode); PostgreSQL alters in place.
        render_as_batch=True,
        **options,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path.db ...")
    return url


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection: Connection) -> None:
    _configure(connection=connection)
    # Inside the caller's transaction this opens none: the caller commits.
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_online(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    if context.is_offline_mode():
        run_offline()
        return
    from service.db.connect import database_url  # the same URL rules as the service

    engine = create_engine(database_url(_url()), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_online(connection)
            connection.commit()
    finally:
        engine.dispose()


main()
