"""Finds the subcommand groups: every module in keepword.cli with a `register` function.

Discovery (instead of a hand-kept list) lets each group live in its own module without
every new command touching a shared file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import keepword.cli

Registrar = Callable[["argparse._SubParsersAction[Any]"], None]

# Order in `keepword --help`: the daily commands first, then the rest alphabetically.
_FIRST = ("run", "check", "ingest", "cases")


def registrars() -> list[Registrar]:
    names = sorted(
        (m.name for m in pkgutil.iter_modules(keepword.cli.__path__)),
        key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n),
    )
    found: list[Registrar] = []
    for name in names:
        module = importlib.import_module(f"keepword.cli.{name}")
        register = getattr(module, "register", None)
        if callable(register):
            found.append(register)
    return found
