"""`loss-service db upgrade`: the migrations of the evaluation runs' database."""

from __future__ import annotations

import sys
from typing import Any

from service.errors import LossServiceError


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("db", help="the database of evaluation runs")
    parser.add_argument("action", choices=["upgrade"], help="apply the schema migrations")
    parser.add_argument("--url", help="default: LOSS_SERVICE_DATABASE_URL (SQLite file)")


def upgrade(url: str) -> int:
    """Migrate the database to the newest schema (the server also does it at start)."""
    from service import db

    try:
        db.upgrade(url)
    except LossServiceError as error:
        print(f"loss-service db upgrade: error: {error.detail}", file=sys.stderr)
        return 1
    print("loss-service db upgrade: the database is at the newest schema")
    return 0
