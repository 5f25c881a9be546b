"""The installation secret that keys keepword's outgoing Message-IDs.

Made by migration 0008 (32 random bytes); a store that lost its row (restored from an
old dump, a hand-made test schema) gets a new one on first use. Read once per process
and database: it never changes while keepword runs.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, insert, select

from keepword.domain.message_ids import MIN_SECRET_BYTES, check_secret
from keepword.store.tables import installation_secret

_SECRET_ID = 1
# Engine -> its store's secret (read once; a dropped engine drops its entry).
_known: WeakKeyDictionary[Engine, bytes] = WeakKeyDictionary()


def message_id_secret(conn: Connection) -> bytes:
    """The store's installation secret, made on first use if the store has none."""
    known = _known.get(conn.engine)
    if known is not None:
        return known
    query = select(installation_secret.c.secret).where(installation_secret.c.id == _SECRET_ID)
    found = conn.execute(query).scalar_one_or_none()
    if found is None:
        found = secrets.token_bytes(MIN_SECRET_BYTES)
        conn.execute(
            insert(installation_secret).values(
                id=_SECRET_ID, secret=found, created_at=datetime.now(UTC)
            )
        )
        # Not cached: the caller's transaction may roll back (the next call reads again).
        return check_secret(bytes(found))
    secret = check_secret(bytes(found))
    _known[conn.engine] = secret
    return secret
