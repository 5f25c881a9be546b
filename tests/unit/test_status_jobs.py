"""`keepword status` shows the daemon's job runs, failures and overdue jobs.

The job_run records are written as the daemon writes them (keepword.store.jobs); the
CLI reads "now" from the daemon's clock (KEEPWORD_CLOCK), as a sped-up soak needs.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from keepword.cli import main
from keepword.clock import SPEED_ENV, SpedUpClock
from keepword.store.db import open_store
from keepword.store.jobs import job_finished, job_started
from keepword.store.tables import folder_state

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "keepword.toml"
    path.write_text(
        f'[keepword]\nstate_dir = "{tmp_path}"\nallow_inline_passwords = true\n'
        '[[mailbox]]\nname = "support"\naddress = "support@example.com"\n'
        '[mailbox.imap]\nhost = "127.0.0.1"\ntls = "plain"\n'
        'username = "support@example.com"\npassword = "x"\n'
    )
    engine = open_store(f"sqlite:///{tmp_path / 'keepword.db'}")
    with engine.begin() as conn:
        for job, interval in (("poll", 60.0), ("chase", 60.0), ("drain", 10.0)):
            job_started(conn, "support", job, interval, T)
            job_finished(conn, "support", job, T + timedelta(seconds=1))
        job_started(conn, "support", "drain", 10.0, T + timedelta(seconds=50))
        job_finished(conn, "support", "drain", T + timedelta(seconds=51), "relay refused the login")
    engine.dispose()
    return path


def at(monkeypatch: pytest.MonkeyPatch, when: datetime) -> None:
    monkeypatch.setenv(SPEED_ENV, SpedUpClock(1.0, when, time.time()).encode())


def status(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["--config", str(config), "status", *extra])
    return code, capsys.readouterr().out


def test_jobs_in_json(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    at(monkeypatch, T + timedelta(seconds=55))
    code, out = status(config, capsys, "--json")
    [health] = json.loads(out)
    jobs = {j["job"]: j for j in health["jobs"]}
    assert set(jobs) == {"poll", "chase", "drain"}
    assert jobs["poll"]["last_started_at"] == "2026-03-02T09:00:00+00:00"
    assert jobs["poll"]["last_ok_at"] == "2026-03-02T09:00:01+00:00"
    assert not any(j["overdue"] for j in jobs.values())
    assert jobs["drain"]["failures"] == 1
    assert jobs["drain"]["last_error"] == "relay refused the login"
    assert code == 1 and health["healthy"] is False  # a failing job needs attention


def test_overdue_after_two_intervals(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    at(monkeypatch, T + timedelta(seconds=121))  # poll and chase: 2 x 60 s ago
    code, out = status(config, capsys, "--json")
    assert code == 1
    jobs = {j["job"]: j for j in json.loads(out)[0]["jobs"]}
    assert (jobs["poll"]["overdue"], jobs["chase"]["overdue"], jobs["drain"]["overdue"]) == (
        True,
        True,
        True,
    )
    at(monkeypatch, T + timedelta(seconds=119))
    _, out = status(config, capsys, "--json")
    jobs = {j["job"]: j for j in json.loads(out)[0]["jobs"]}
    assert (jobs["poll"]["overdue"], jobs["drain"]["overdue"]) == (False, True)


def test_overdue_in_the_table(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    at(monkeypatch, T + timedelta(hours=3))
    code, out = status(config, capsys)
    assert code == 1
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    assert "overdue" in lines["chase"] and "2026-03-02 09:00 UTC" in lines["chase"]
    assert "failing (1 in a row): relay refused the login" in lines["drain"]


def test_an_error_is_shown_as_written_never_read_as_markup(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Error text was read as rich markup: keepword's own "[mailbox.smtp]" vanished (a
    lower-case tag), a server's "[/x]" raised MarkupError."""
    error = "no [mailbox.smtp] configured; NO [AUTHENTICATIONFAILED] [/x] nope"
    engine = open_store(f"sqlite:///{config.parent / 'keepword.db'}")
    with engine.begin() as conn:
        job_started(conn, "support", "drain", 10.0, T + timedelta(seconds=52))
        job_finished(conn, "support", "drain", T + timedelta(seconds=53), error)
    engine.dispose()
    monkeypatch.setenv("COLUMNS", "300")
    at(monkeypatch, T + timedelta(seconds=55))
    code, out = status(config, capsys)
    assert code == 1
    assert f"failing (2 in a row): {error}" in out


def test_a_folder_name_in_brackets_is_shown_as_it_is(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = open_store(f"sqlite:///{config.parent / 'keepword.db'}")
    with engine.begin() as conn:
        conn.execute(insert(folder_state).values(mailbox="support", folder="[shop]/Sent"))
    engine.dispose()
    monkeypatch.setenv("COLUMNS", "300")
    at(monkeypatch, T + timedelta(seconds=55))
    _, out = status(config, capsys)
    assert "[shop]/Sent" in out  # rich read "[shop]" as a style ("[Gmail]" it leaves)
