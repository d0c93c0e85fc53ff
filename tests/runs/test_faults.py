"""A database that is away, locked or busy: `DatabaseUnavailable` (with `retry_after_s`, without
the URL's secrets) within the configured timeouts, and a store that works again once it is back."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from service.db import BatchOutcome, RunStore, upgrade
from service.errors import DatabaseUnavailable
from tests.live_server import free_port
from tests.runs.conftest import PostgresServer, StoreFactory
from tests.runs.helpers import add, counting, digest, new_run, stored_batch_ids
from tests.runs.network import TcpProxy, silent_server

SECRET = "s3cret-Passw0rd"


def test_a_closed_port_is_unavailable_and_the_password_stays_out() -> None:
    store = RunStore(
        f"postgresql+psycopg://loss:{SECRET}@127.0.0.1:{free_port()}/runs",
        connect_timeout_s=1,
        retry_after_s=7,
    )
    calls = (
        store.check,
        store.upgrade,
        lambda: new_run(store),
        lambda: store.get_run(uuid.uuid4()),
        lambda: store.list_runs(limit=10, cursor=None),
        lambda: add(store, uuid.uuid4(), "b"),
    )
    try:
        for call in calls:
            with pytest.raises(DatabaseUnavailable) as unavailable:
                call()
            assert unavailable.value.retry_after_s == 7
            assert unavailable.value.slug == "database-unavailable"
            assert SECRET not in str(unavailable.value)
            assert "loss" not in unavailable.value.detail  # nor the user
    finally:
        store.dispose()


@pytest.mark.slow
@pytest.mark.timeout(60)  # without a connect timeout the connect would wait forever
def test_a_server_that_never_answers_times_out() -> None:
    with silent_server() as port:
        store = RunStore(f"postgresql+psycopg://loss@127.0.0.1:{port}/runs", connect_timeout_s=1)
        try:
            with pytest.raises(DatabaseUnavailable):
                store.check()
        finally:
            store.dispose()


def test_an_unusable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    store = RunStore(f"sqlite:///{not_a_directory}/runs.db")
    try:
        with pytest.raises(DatabaseUnavailable):
            store.check()
    finally:
        store.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user@localhost/runs",
        "postgresql+psycopg2://user@localhost/runs",
        "sqlite://",
        "sqlite:///:memory:",
        "not a url",
    ],
)
def test_urls_the_store_does_not_take(url: str) -> None:
    with pytest.raises(ValueError):
        RunStore(url)


def test_postgresql_urls_without_a_driver_use_psycopg() -> None:
    store = RunStore("postgresql://user@127.0.0.1:1/runs")
    assert (store.dialect, store._engine.dialect.driver) == ("postgresql", "psycopg")


def test_a_relative_sqlite_path_and_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    upgrade("sqlite:///data/nested/runs.db")
    path = tmp_path / "data" / "nested" / "runs.db"
    # `with sqlite3.connect()` only commits; closing() closes (Python 3.13 warns of an unclosed one)
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert {row[0] for row in connection.execute("SELECT name FROM sqlite_master")} >= {
            "runs",
            "batches",
        }


@contextmanager
def _holding_the_run(url: str, run_id: uuid.UUID) -> Iterator[None]:
    """Another client holds the lock a batch to this run needs (SQLite: the write lock)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connection = sqlite3.connect(str(parsed.database), isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.rollback()
            connection.close()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT 1 FROM runs WHERE id = :id FOR UPDATE"), {"id": run_id})
            yield
            holder.rollback()
    finally:
        engine.dispose()


def test_a_run_locked_past_the_lock_timeout(make_store: StoreFactory, db_url: str) -> None:
    store = make_store(lock_timeout_s=0.3, retry_after_s=7)
    run = new_run(store)
    with _holding_the_run(db_url, run.id):
        with pytest.raises(DatabaseUnavailable) as unavailable:
            add(store, run.id, "b1")
        assert unavailable.value.retry_after_s == 7
        assert "lock" in unavailable.value.detail
        assert store.get_run(run.id) == run  # readers do not wait for the lock
    assert stored_batch_ids(db_url, run.id) == []
    assert add(store, run.id, "b1")[0] is BatchOutcome.CREATED


@pytest.mark.postgres
def test_terminated_connections_are_replaced(postgres: PostgresServer, postgres_url: str) -> None:
    store = RunStore(postgres_url)
    try:
        run = new_run(store)
        add(store, run.id, "b1")  # the pool keeps its connection
        assert postgres.terminate_connections(postgres_url) >= 1
        assert add(store, run.id, "b2")[0] is BatchOutcome.CREATED  # pinged, reconnected
    finally:
        store.dispose()


@pytest.mark.postgres
def test_a_connection_lost_inside_a_batch_counts_nothing(
    postgres: PostgresServer, postgres_url: str
) -> None:
    store = RunStore(postgres_url)
    try:
        run = new_run(store)

        def fold_then_lose_the_connection(totals: dict[str, object]) -> dict[str, object]:
            postgres.terminate_connections(postgres_url)  # this transaction's own
            return counting("b1")(totals)

        with pytest.raises(DatabaseUnavailable):
            store.add_batch(
                run.id, "b1", digest=digest(""), n_samples=1, fold=fold_then_lose_the_connection
            )
        assert store.get_run(run.id) == run
        assert stored_batch_ids(postgres_url, run.id) == []
        assert add(store, run.id, "b1")[0] is BatchOutcome.CREATED
    finally:
        store.dispose()


@pytest.mark.postgres
def test_a_dropped_database_then_restored(postgres: PostgresServer) -> None:
    url = postgres.create_database("dropped")
    upgrade(url)
    store = RunStore(url, connect_timeout_s=2)
    try:
        run = new_run(store)
        postgres.drop_database(url)  # its connections are terminated first
        with pytest.raises(DatabaseUnavailable):
            store.get_run(run.id)
        postgres.create_database("dropped")
        upgrade(url)
        again = new_run(store)
        assert store.get_run(again.id) == again
    finally:
        store.dispose()


@pytest.mark.postgres
def test_a_server_down_then_back(postgres_url: str) -> None:
    """Through a proxy that stops as a server would: refused connects while it is down; the
    pool's pings replace the dead connections once it is back."""
    target = make_url(postgres_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    proxy.start()
    store = RunStore(
        target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        connect_timeout_s=2,
    )
    try:
        run = new_run(store)
        add(store, run.id, "b1")
        proxy.stop()
        for call in (store.check, lambda: add(store, run.id, "b2")):
            with pytest.raises(DatabaseUnavailable):
                call()
        proxy.start()
        store.check()
        assert add(store, run.id, "b2")[0] is BatchOutcome.CREATED
        assert store.get_run(run.id).n_batches == 2
    finally:
        store.dispose()
        proxy.stop()
