"""runs and batches

Revision ID: 0001
Revises:
Create Date: 2026-12-02 09:03:04.831031
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_batches", sa.BigInteger(), nullable=False),
        sa.Column("n_samples", sa.BigInteger(), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=False),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_runs_status")),
        sa.CheckConstraint("n_batches >= 0 AND n_samples >= 0", name=op.f("ck_runs_counts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    # GET /v1/runs pages newest first on (created_at, id); PostgreSQL scans it backwards.
    op.create_index(op.f("ix_runs_created_at_id"), "runs", ["created_at", "id"], unique=False)
    op.create_table(
        "batches",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("batch_id", sa.String(length=200), nullable=False),
        sa.Column("digest", sa.String(length=128), nullable=False),
        sa.Column("n_samples", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_batches_run_id_runs"), ondelete="CASCADE"
        ),
        # The idempotency key: one row per (run, batch id); it also serves the cascade's lookup.
        sa.PrimaryKeyConstraint("run_id", "batch_id", name=op.f("pk_batches")),
    )


def downgrade() -> None:
    op.drop_table("batches")
    op.drop_index(op.f("ix_runs_created_at_id"), table_name="runs")
    op.drop_table("runs")
