"""Shared pytest setup. Fixture plugins for the real local servers live in tests/fixtures."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Timing is no property of keepword's pure code, and CI machines are slow and busy: no
# per-example deadline. `make test` (so CI) checks a fixed, derandomized sample, so that
# a rare counterexample found by luck never fails an unrelated change; a plain `pytest`
# keeps exploring new examples (and .hypothesis/ remembers what it finds).
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

pytest_plugins = ["tests.fixtures.dovecot", "tests.fixtures.smtp", "tests.fixtures.postgres"]


def pytest_collection_finish(session: pytest.Session) -> None:
    # A run that collects nothing must fail loudly, whatever flags were passed.
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests collected: refusing to pass an empty run")
