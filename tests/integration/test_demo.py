"""`make demo` tells its story: scripts/demo in a subprocess, on the real mail rig.

The output is checked for each step a newcomer should see: history measured, the two
customers acknowledged with a measured promise (as read in a client, not MIME), the
robots left alone with their reason, a staff reply keeping one promise, a reminder, an
escalation and an honest update before the deadline for the other, the ledger, and a
closing hint that works as printed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO_SECONDS = 120  # the whole story in real time, Dovecot's start included


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    state = tmp_path_factory.mktemp("demo-state")
    env = {**os.environ, "KEEPWORD_DEMO_STATE": str(state), "PYTHONPATH": str(ROOT / "src")}
    env.pop("KEEPWORD_CLOCK", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEMO_SECONDS,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr, state


def test_history_is_imported_and_measured(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "$ keepword import" in out
    assert "measured on how fast we have actually answered recently" in out


def test_customers_are_acknowledged_once_as_read_in_a_client(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert out.count("is now case KW-") >= 2
    assert "--- to ann@example.org, as read in a mail client ---" in out
    assert "--- to bruno@example.net, as read in a mail client ---" in out
    assert "Content-Transfer-Encoding" not in out  # no MIME
    assert "<html" not in out.lower()
    assert "=\n" not in out and "=20" not in out  # no quoted-printable


def test_robots_are_shown_ignored_with_their_reason(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "$ keepword ignored" in out
    for robot in ("Our November", "Undelivered Mail", "Automatic reply"):
        assert robot in out
    assert "Precedence: bulk" in out
    assert "Auto-Submitted" in out


def test_a_staff_reply_keeps_one_promise(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "from Alice's mail client" in out
    assert "promise is kept" in out


def test_the_unanswered_case_is_chased_before_its_deadline(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "Reminder: Password reset mail never arrives" in out
    assert "Escalation: Password reset mail never arrives" in out
    assert "we will not make that time" in out  # the honest update, to Bruno
    assert "from Bob's mail client" in out


def test_the_ledger_shows_no_broken_promise(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "$ keepword stats" in out
    assert "Promise ledger" in out
    ledger = out[out.index("Promise ledger") :]
    assert "│ broken                                │          0 │" in ledger
    assert "│ silent breaches (must be 0)           │          0 │" in ledger


def test_no_library_noise_in_the_output(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "login_data is deprecated" not in out
    assert "Traceback" not in out


def test_every_view_shows_the_zone(demo: tuple[str, Path]) -> None:
    out, _ = demo
    assert "(UTC)" not in out  # no column in another zone than the story's
    assert " CET" in out or " CEST" in out


def test_the_closing_hint_works_as_printed(demo: tuple[str, Path]) -> None:
    out, state = demo
    hint = next(line.strip() for line in out.splitlines() if line.strip().endswith(" cases"))
    command = shlex.split(hint)
    assert Path(command[0]).name == "keepword"
    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    assert len(json.loads(done.stdout)) >= 62
    assert str(state) in hint or "demo-state" in hint
