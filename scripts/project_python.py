"""The scripts that drive keepword (demo, soak, instances) need the project's packages.

Started as `scripts/soak` from a shell, the shebang runs the system's python3, which has
none of them. `use_project_python` then starts the same script again under the
virtualenv that `make demo` and `make test` create (`.venv`), or says how to make it.
Only the standard library is used here: it runs before anything else is importable.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def use_project_python(*needed: str) -> None:
    """Return when every module of `needed` can be imported here; else run this script
    again under the project's virtualenv (the process is replaced) or exit with the
    command that makes it."""
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if not missing:
        return
    script = Path(sys.argv[0]).name
    if not VENV_PYTHON.exists():
        sys.exit(
            f"{script}: {sys.executable} lacks {', '.join(missing)}; run `make demo` or "
            f"`make test` once to set up {VENV_PYTHON.parent.parent}, then run this again"
        )
    if Path(sys.executable).absolute() == VENV_PYTHON.absolute():
        sys.exit(
            f"{script}: {VENV_PYTHON} lacks {', '.join(missing)}: "
            "`make clean` and then `make test` installs it again"
        )
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), sys.argv[0], *sys.argv[1:]])
