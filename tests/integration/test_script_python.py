"""The scripts run as a newcomer starts them: `scripts/soak` from a shell runs the system's
python3 (the shebang), which lacks the project's packages. They go on under the project's
virtualenv, or say how to make it (scripts/project_python.py), instead of failing with a
ModuleNotFoundError from deep in an import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The interpreter the virtualenv was made from, without its site-packages (-S): what the
# shebang's python3 is on a fresh machine, whatever this one has installed system-wide.
BARE = [str(Path(sys.base_prefix) / "bin" / "python3"), "-S"]

PROBE = """\
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.project_python import use_project_python
use_project_python("imapclient")
import imapclient
print("ran under", sys.executable, "with", sys.argv[1:])
"""


def _project(tmp_path: Path, *, venv: bool) -> Path:
    """A project tree with the helper and a probe script; its `.venv/bin/python` starts
    the interpreter running these tests (which has imapclient)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(ROOT / "scripts" / "project_python.py", scripts)
    (scripts / "probe").write_text(PROBE)
    if venv:
        python = tmp_path / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
    return scripts / "probe"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_a_script_started_without_the_packages_goes_on_under_the_project_venv(
    tmp_path: Path,
) -> None:
    probe = _project(tmp_path, venv=True)
    done = _run(*BARE, str(probe), "--days", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ran under {sys.executable} with ['--days', '2']"


def test_without_a_venv_it_says_how_to_make_one(tmp_path: Path) -> None:
    probe = _project(tmp_path, venv=False)
    done = _run(*BARE, str(probe))
    assert done.returncode == 1
    assert "lacks imapclient" in done.stderr
    assert "make test" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("script", ["soak", "instances"])
def test_the_shipped_scripts_start_from_a_bare_python(script: str) -> None:
    """`--help` answers before any server starts. (scripts/demo has no options: run
    whole, it would tell its story here; it calls the same helper first.)"""
    done = _run(*BARE, str(ROOT / "scripts" / script), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
