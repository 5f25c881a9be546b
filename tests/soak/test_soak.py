"""The short soak: the real `keepword run` over five business days at speed 1000.

Monday 27 April 2026 07:00 Europe/Berlin to Monday 4 May 19:00 (Friday 1 May is a
public holiday in DE), then three hours to settle: ~11 minutes of real time. Replay
a failure with KEEPWORD_SOAK_SEED=<the printed seed>. Then Monday to Wednesday with the
store on PostgreSQL (~4 minutes; longer runs: `scripts/soak --postgres`).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.dovecot import Dovecot
from tests.soak.driver import Soak
from tests.soak.invariants import check_store
from tests.soak.report import table, violations
from tests.soak.traffic import SUPPORT, make_plan

pytestmark = [pytest.mark.integration, pytest.mark.soak]

SPEED = float(os.environ.get("KEEPWORD_SOAK_SPEED", "1000"))
SEED = int(os.environ.get("KEEPWORD_SOAK_SEED", "20260427"))


@pytest.fixture
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="kw-soak-"))
    yield directory
    if not os.environ.get("KEEPWORD_SOAK_KEEP"):
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(1500)
def test_the_daemon_keeps_its_word_over_five_business_days(
    clean_dovecot: Dovecot, workdir: Path
) -> None:
    plan = make_plan(SEED, business_days=5, customers_per_day=6, kills=3)
    soak_and_check(Soak(clean_dovecot, workdir, plan, speed=SPEED, user=SUPPORT), workdir)


@pytest.mark.timeout(900)
def test_the_daemon_keeps_its_word_on_postgresql(
    clean_dovecot: Dovecot, workdir: Path, postgres_url: str
) -> None:
    """Monday to Wednesday of the same seed (the same kinds of fault, two kills) with the
    store on PostgreSQL: its mailbox lease, heartbeats and batch writes under restarts."""
    plan = make_plan(SEED, business_days=3, customers_per_day=6, kills=2)
    soak = Soak(clean_dovecot, workdir, plan, speed=SPEED, user=SUPPORT, database_url=postgres_url)
    soak_and_check(soak, workdir)


def soak_and_check(soak: Soak, workdir: Path) -> None:
    record = soak.run()
    if record.database_url is None:
        assert record.database is not None and record.database.exists(), "no store made"
    findings = check_store(record)
    report = table(record, findings)
    print(report)
    # Kept with KEEPWORD_SOAK_KEEP=1: `scripts/soak --recheck DIR` checks SQLite runs again.
    (workdir / "report.txt").write_text(report + "\n")
    (workdir / "record.pickle").write_bytes(pickle.dumps(record))
    assert not violations(findings), f"seed {SEED}, speed {SPEED:g}, in {workdir}\n{report}"
