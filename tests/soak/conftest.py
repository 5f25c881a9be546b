"""The soak's marker: select it with `pytest -m soak`, leave it out with `-m 'not soak'`."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "soak: the real daemon over simulated business days (tests/soak, minutes)"
    )
