"""The Alembic migrations: they build what the models describe, on both dialects, and can be run
by several replicas at once and from an installed wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, create_engine

from service.db import RunStore, upgrade
from service.db.migrate import alembic_config
from service.db.models import Base
from tests.runs.conftest import PostgresServer
from tests.runs.helpers import add, new_run

ROOT = Path(__file__).resolve().parents[2]


def _differences(url: str, metadata: MetaData) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), metadata))
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def test_the_migrations_build_what_the_models_describe(db_url: str) -> None:
    assert _differences(db_url, Base.metadata) == []
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    assert _revision(db_url) == head


def test_the_comparison_sees_a_model_the_migrations_lack(db_url: str) -> None:
    """The check above can fail: a column only the model has is reported."""
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["runs"].append_column(Column("extra", Integer, nullable=True))
    (difference,) = _differences(db_url, changed)
    assert difference[0] == "add_column"
    assert difference[3].name == "extra"


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
    finally:
        engine.dispose()
    assert _revision(db_url) is None
    upgrade(db_url)
    assert _differences(db_url, Base.metadata) == []


@pytest.mark.parametrize(
    "dialect", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_replicas_upgrading_at_once(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Eight stores upgrade one empty database at the same moment: one migrates, the others
    wait for it and find the schema at head."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database("upgrade_race")
    stores = [RunStore(url) for _ in range(8)]
    start = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def run(store: RunStore) -> None:
        start.wait()
        try:
            store.upgrade()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.dispose()
    assert errors == []
    assert _differences(url, Base.metadata) == []


@pytest.mark.slow
@pytest.mark.system
def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    """The wheel `pip` builds carries the migrations, and they run from its files alone."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path, ROOT],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("loss_service-*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    url = f"sqlite:///{tmp_path / 'from-wheel.db'}"
    script = (
        "import service.db, sys; "
        "assert service.db.__file__.startswith(sys.argv[2]), service.db.__file__; "
        "service.db.upgrade(sys.argv[1])"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, url, str(installed)],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert _differences(url, Base.metadata) == []
    store = RunStore(url)
    try:
        run = new_run(store)
        add(store, run.id, "b")
        assert store.get_run(run.id).n_batches == 1
    finally:
        store.dispose()
