"""Fixtures of the store tests: every test runs on a SQLite file and on PostgreSQL.

PostgreSQL: each test session creates its own database on the server named by
`LOSS_SERVICE_TEST_POSTGRES_URL` (default: the local server's `test` database, used only to
create and drop others) and drops it at the end. Without a server those tests are skipped with
the reason, except under CI (`CI` set, and not "false" or "0"), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, Engine, create_engine, make_url, text

from service.db import RunStore, upgrade

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0")


class PostgresServer:
    """The server the tests create their databases on, through an admin connection."""

    def __init__(self, admin_url: URL) -> None:
        self.admin_url = admin_url
        self.admin: Engine = create_engine(
            admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        self.prefix = f"loss_service_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._created: list[str] = []

    def url(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def create_database(self, suffix: str) -> str:
        name = f"{self.prefix}_{suffix}"
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self._created.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def terminate_connections(self, url: str) -> int:
        """Ends every server process connected to the database, as an operator or a crash
        would; returns how many there were."""
        with self.admin.connect() as connection:
            return len(
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": make_url(url).database},
                ).all()
            )

    def close(self) -> None:
        for name in self._created:
            with self.admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    admin_url = make_url(os.environ.get("LOSS_SERVICE_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL))
    server = PostgresServer(admin_url)
    try:
        with server.admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        server.admin.dispose()
        where = admin_url.render_as_string(hide_password=True)
        reason = f"no PostgreSQL server at {where} ({type(error).__name__})"
        if _in_ci():
            pytest.fail(f"{reason}: CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(f"{reason}; set LOSS_SERVICE_TEST_POSTGRES_URL to run them")
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """The session's database, at the newest schema."""
    url = postgres.create_database("main")
    upgrade(url)
    return url


def _empty_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("TRUNCATE batches, runs"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database at the newest schema: a fresh SQLite file, or the session's PostgreSQL
    database emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("postgres_url")
        _empty_postgres(url)
    return url


StoreFactory = Callable[..., RunStore]


@pytest.fixture
def make_store(db_url: str) -> Iterator[StoreFactory]:
    """`make_store(**options)`: stores on the test's database, disposed at the end."""
    stores: list[RunStore] = []

    def make(**options: Any) -> RunStore:
        store = RunStore(db_url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.dispose()


@pytest.fixture
def store(make_store: StoreFactory) -> RunStore:
    return make_store()
