"""The store's engine (store.db.make_engine): what it says when a statement fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from keepword.store.db import open_store


def test_a_failed_statement_never_names_the_mail_bound_to_it(tmp_path: Path) -> None:
    """Errors are logged and shown by `keepword status`; the values of a failed statement
    are customers' mail (ingest stores 500 bodies at once): the error names the SQL only."""
    engine = open_store(f"sqlite:///{tmp_path / 'kw.db'}")
    try:
        with pytest.raises(OperationalError) as failed, engine.connect() as conn:
            conn.execute(text("SELECT :body FROM no_such_table"), {"body": "my card 4111-1111"})
    finally:
        engine.dispose()
    assert "no_such_table" in str(failed.value)
    assert "4111" not in str(failed.value)
