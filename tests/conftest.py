"""Shared pytest setup. Fixture plugins for the real local servers live in tests/fixtures."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.fixtures.dovecot", "tests.fixtures.smtp", "tests.fixtures.postgres"]


def pytest_collection_finish(session: pytest.Session) -> None:
    # A run that collects nothing must fail loudly, whatever flags were passed.
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests collected: refusing to pass an empty run")
