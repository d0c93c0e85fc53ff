"""Keyset paging of runs: newest first, by (created_at, id).

The cursor is the key of the last run of a page, base64url-encoded so that clients treat it as
opaque. Unlike an offset, it neither skips nor repeats runs when runs are created or deleted
between two pages, and the query it makes is an index range scan however deep the page.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_

from service.db.models import Run
from service.errors import InvalidInput

_VERSION = "1"


def encode(created_at: datetime, run_id: uuid.UUID) -> str:
    key = f"{_VERSION}|{created_at.isoformat()}|{run_id.hex}".encode("ascii")
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, created, run_id = raw.decode("ascii").split("|")
        if version != _VERSION:
            raise ValueError(version)
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError(created)
        return created_at, uuid.UUID(hex=run_id)
    except ValueError:  # binascii.Error and UnicodeDecodeError included
        raise InvalidInput(
            "cursor must be the value a previous page returned, unchanged", field="cursor"
        ) from None


def after(cursor: str) -> ColumnElement[bool]:
    """The runs that come after the cursor's run in newest-first order."""
    created_at, run_id = decode(cursor)
    return or_(
        Run.created_at < created_at,
        and_(Run.created_at == created_at, Run.id < run_id),
    )
