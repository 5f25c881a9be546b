"""`keepword example-config | example-unit`: the files a sysadmin starts from, printed.

Both ship inside the package (keepword/share in the wheel), so an installation from
PyPI has them too:

    keepword example-config > /etc/keepword/keepword.toml
    keepword example-unit > /etc/systemd/system/keepword.service
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from keepword.errors import KeepwordError

#: name in the wheel's keepword/share -> where it lives in the source tree
SHIPPED = {
    "keepword.example.toml": Path("config") / "keepword.example.toml",
    "keepword.service": Path("systemd") / "keepword.service",
}


#: command -> (the shipped file it prints, its help, its description)
COMMANDS = {
    "example-config": (
        "keepword.example.toml",
        "print the example configuration (every key documented)",
        "Print the example configuration: "
        "`keepword example-config > /etc/keepword/keepword.toml`, then edit it.",
    ),
    "example-unit": (
        "keepword.service",
        "print the systemd unit",
        "Print the systemd unit: `keepword example-unit > /etc/systemd/system/keepword.service`.",
    ),
}


def register(sub: argparse._SubParsersAction[Any]) -> None:
    for command, (name, help_text, description) in COMMANDS.items():
        parser = sub.add_parser(command, help=help_text, description=description)
        parser.set_defaults(handler=_printer(name))


def shipped_text(name: str) -> str:
    """A shipped file: from the installed package, else from the source tree (editable)."""
    packaged = resources.files("keepword").joinpath("share", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    source = Path(__file__).resolve().parents[3] / SHIPPED[name]
    if source.is_file():
        return source.read_text(encoding="utf-8")
    raise KeepwordError(f"{name} is missing from this installation of keepword")


def _printer(name: str) -> Any:
    def handler(_args: argparse.Namespace) -> int:
        sys.stdout.write(shipped_text(name))
        return 0

    return handler
