"""The tables of evaluation runs, as SQLAlchemy typed ORM classes.

A run is one row: its spec and its running totals are JSON the database layer never interprets,
and `n_batches` / `n_samples` count what was folded into them. A batch row records only the
client's idempotency key and a digest of the batch's bytes; the statistics live in the run's row,
so a report reads one row however many batches were sent.

Migrations (`service/db/migrations/versions`) must describe exactly these tables: a test compares
them with Alembic's autogenerate after upgrading an empty database.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Alembic's recommended convention: constraints get the same names on every dialect, so a later
# migration can drop or alter them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A batch id is the client's key from the URL path; bounded so the primary key index stays small
# (PostgreSQL refuses index entries over ~2.7 kB).
MAX_BATCH_ID_LENGTH = 200
# Room for a hex SHA-512; SHA-256 (64) is what a content digest usually is.
MAX_DIGEST_LENGTH = 128


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect.

    PostgreSQL stores `timestamptz` and answers in the session's time zone; SQLite has no time
    zones and stores the text SQLAlchemy writes. Both get UTC in and UTC out, so SQLite's text
    (fixed width, microseconds included) sorts as the instants do, which keyset paging needs.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the database layer stores UTC instants only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        CheckConstraint("n_batches >= 0 AND n_samples >= 0", name="counts"),
        # GET /v1/runs: newest first, keyset on (created_at, id)
        Index(None, "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    # `metadata` is the declarative base's own attribute; the column keeps the API's name.
    labels: Mapped[dict[str, str]] = mapped_column("metadata", JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    n_batches: Mapped[int] = mapped_column(BigInteger)
    n_samples: Mapped[int] = mapped_column(BigInteger)
    totals: Mapped[dict[str, Any]] = mapped_column(JSON)


class Batch(Base):
    """The idempotency record of one batch: its key and digest, nothing of its content."""

    __tablename__ = "batches"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(Run.id, ondelete="CASCADE"), primary_key=True
    )
    batch_id: Mapped[str] = mapped_column(String(MAX_BATCH_ID_LENGTH), primary_key=True)
    digest: Mapped[str] = mapped_column(String(MAX_DIGEST_LENGTH))
    n_samples: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
