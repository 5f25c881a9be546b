"""The first hour's CLI: --version, the shipped examples, the ignored view, one clock
per view, readable previews, honest errors, a timeline in story order."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from keepword.adapters import logs
from keepword.cli import main
from keepword.cli.check import CheckResult, with_tls_hint
from keepword.config import ImapSettings, KeepwordSettings, MailboxSettings, Settings
from keepword.mail.preview import preview
from keepword.store import reports
from keepword.store.db import open_store
from keepword.store.tables import case, case_event, message, outbox
from keepword.timefmt import clock_time, moment, short_moment, zone_of

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 26, 9, 5, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def test_a_command_starts_without_the_daemon_or_alembic() -> None:
    """Every command builds the whole parser; the daemon's modules (`run`) and alembic
    (a migration) load only when they are used: ~0.25 s less for every other command."""
    probe = (
        "import sys; from keepword.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('alembic', 'keepword.runtime'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT / "src")},
    ).stdout.strip()
    assert loaded == "[]"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"keepword \S+\n", capsys.readouterr().out)


def test_example_config_is_printed_and_valid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["example-config"]) == 0
    text = capsys.readouterr().out
    assert text == (ROOT / "config" / "keepword.example.toml").read_text()
    data = tomllib.loads(text)
    # Under the shipped unit (DynamicUser) secrets come as credentials, not root-owned files.
    for server in ("imap", "smtp"):
        assert "password_credential" in data["mailbox"][0][server]
        assert "password_file" not in data["mailbox"][0][server]
    Settings.model_validate(data)


def test_example_unit_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example-unit"]) == 0
    assert "ExecStart=" in capsys.readouterr().out


def test_example_files_are_in_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert shipped["config/keepword.example.toml"] == "keepword/share/keepword.example.toml"
    assert shipped["systemd/keepword.service"] == "keepword/share/keepword.service"


# -- one clock per view ---------------------------------------------------------------


def test_every_human_time_format_names_its_zone() -> None:
    winter, summer = NOW, NOW.replace(month=7)
    assert moment(winter, BERLIN) == "2026-11-26 10:05 CET"
    assert moment(summer, BERLIN) == "2026-07-26 11:05 CEST"
    assert clock_time(winter, BERLIN) == "10:05:00 CET"
    assert short_moment(winter, BERLIN, now=winter) == "10:05 CET"
    assert short_moment(winter, BERLIN, now=winter + timedelta(days=2)) == "Thu 26 Nov 10:05 CET"
    assert moment(winter, ZoneInfo("Asia/Kolkata")).endswith("IST")
    assert moment(winter, ZoneInfo("America/Sao_Paulo")).endswith("UTC-0300")


def test_terminal_logs_show_the_configured_zone() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.set_log_zone(BERLIN)
        logs.setup_logging("INFO", stream=out, journal=False)
        logging.getLogger("keepword.test").info("polled")
    finally:
        logs.set_log_zone(UTC)
        for handler in [h for h in root.handlers if h not in saved[0]]:
            root.removeHandler(handler)
        root.setLevel(saved[1])
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T INFO ", out.getvalue())


def test_the_zone_is_the_mailboxs_then_the_configured_one() -> None:
    box = _box(calendar={"timezone": "Asia/Tokyo"})
    settings = Settings(keepword=KeepwordSettings(timezone="Europe/Berlin"), mailbox=[box])
    assert zone_of(settings, box) == ZoneInfo("Asia/Tokyo")
    assert zone_of(settings) == BERLIN
    assert zone_of(None) == ZoneInfo("UTC")


# -- previews -------------------------------------------------------------------------


def test_preview_shows_the_text_as_read_not_mime() -> None:
    msg = EmailMessage()
    msg["From"] = "Example Support <support@example.com>"
    msg["To"] = "ann@example.org"
    msg["Subject"] = "Re: Charged twice [KW-1]"
    msg["Message-ID"] = "<x@example.com>"
    msg.set_content(
        "Hello Ann,\n\nyour case is KW-1 – we answer by 13:05.\n", cte="quoted-printable"
    )
    msg.add_alternative("<html><body><p>Hello Ann</p></body></html>", subtype="html")
    shown = preview(msg.as_bytes())
    assert shown.splitlines()[:3] == [
        "From: Example Support <support@example.com>",
        "To: ann@example.org",
        "Subject: Re: Charged twice [KW-1]",
    ]
    assert "your case is KW-1 – we answer by 13:05." in shown
    assert "<html" not in shown and "quoted-printable" not in shown and "Message-ID" not in shown


# -- check ----------------------------------------------------------------------------


def test_tls_against_a_plain_port_gets_a_hint() -> None:
    server = ImapSettings(host="mail.example.com", port=143, username="u", password_env="X")
    failed = CheckResult("support", "IMAP", ok=False, detail="[SSL: WRONG_VERSION_NUMBER] wrong")
    hinted = with_tls_hint(failed, server, implicit_port=993)
    assert 'try tls = "starttls"' in hinted.detail and "port 993" in hinted.detail
    other = CheckResult("support", "IMAP", ok=False, detail="connection refused")
    assert with_tls_hint(other, server, implicit_port=993) == other


# -- the store as the CLI reads it ----------------------------------------------------


def _box(**extra: Any) -> MailboxSettings:
    return MailboxSettings.model_validate(
        {
            "name": "support",
            "address": "support@example.com",
            "imap": {"host": "127.0.0.1", "tls": "plain", "username": "s", "password_env": "X"},
            **extra,
        }
    )


def _config(tmp_path: Path, db: Path) -> Path:
    path = tmp_path / "keepword.toml"
    path.write_text(
        f'[keepword]\ndatabase_url = "sqlite:///{db}"\ntimezone = "Europe/Berlin"\n\n'
        '[[mailbox]]\nname = "support"\naddress = "support@example.com"\n'
        '[mailbox.imap]\nhost = "127.0.0.1"\ntls = "plain"\nusername = "s"\n'
        'password_env = "X"\n'
    )
    return path


def _message(pk: int, **values: Any) -> dict[str, Any]:
    return {
        "id": pk,
        "mailbox": "support",
        "message_id": f"m{pk}@example.org",
        "content_digest": f"{pk:064d}",
        "size": 0,
        "stored_at": NOW,
        "origin": "poll",
        "date": NOW - timedelta(minutes=pk),
        **values,
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    db = tmp_path / "kw.db"
    engine = open_store(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(
            insert(case),
            [
                {
                    "id": 1,
                    "mailbox": "support",
                    "number": 1,
                    "reference": "KW-1",
                    "status": "new",
                    "customer": "ann@example.org",
                    "subject": "Charged twice",
                    "opened_at": NOW,
                    "updated_at": NOW,
                }
            ],
        )
        for row in [
                _message(1, from_addr="news@vendor.example", subject="News", kind="automated",
                         kind_reason="Precedence: bulk", triaged_at=NOW),
                _message(2, from_addr="x@example.org", subject="?", quarantined=True,
                         quarantine_reason="no headers"),
                _message(3, from_addr="y@example.org", subject="Stuck", triage_attempts=2,
                         triage_error="database is locked", triage_retry_at=NOW),
                _message(4, from_addr="ann@example.org", subject="Charged twice", kind="customer",
                         triaged_at=NOW, case_id=1),
                _message(5, message_id="ack@example.com", from_addr="support@example.com",
                         kind="own", case_id=1, date=NOW.replace(microsecond=0)),
                _message(6, from_addr="old@example.org", kind="automated", is_history=True),
        ]:  # fmt: skip
            conn.execute(insert(message), [row])
        ack_at = NOW.replace(microsecond=500_000)
        for row in [
                {"case_id": 1, "at": ack_at, "kind": "acknowledgement", "detail": "told"},
                {"case_id": 1, "at": NOW.replace(microsecond=0), "kind": "own_mail_seen",
                 "message_pk": 5, "detail": "seen"},
                {"case_id": 1, "at": NOW, "kind": "deferred", "message_pk": 4,
                 "detail": "acknowledgement deferred until 10:00: 3 an hour"},
        ]:  # fmt: skip
            conn.execute(insert(case_event), [row])
        for row in [
                {"mailbox": "support", "case_id": 1, "kind": "acknowledgement",
                 "dedup_key": "a", "message_id": "ack@example.com", "recipients": ["ann@x"],
                 "state": "sent", "created_at": ack_at},
                {"mailbox": "support", "case_id": 1, "kind": "customer_update",
                 "dedup_key": "b", "message_id": "u@example.com", "recipients": ["ann@x"],
                 "state": "withdrawn", "last_error": "withdrawn: the team answered",
                 "created_at": NOW},
        ]:  # fmt: skip
            conn.execute(insert(outbox), [row])
    engine.dispose()
    return db


def test_ignored_lists_every_kind_of_unanswered_mail_with_its_reason(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, store)
    assert main(["--config", str(config), "ignored", "--json", "--days", "100000"]) == 0
    found = {item["what"]: item for item in json.loads(capsys.readouterr().out)}
    assert set(found) == {"automated", "quarantined", "triage retry", "deferred", "withdrawn"}
    assert found["automated"]["reason"] == "Precedence: bulk"
    assert found["quarantined"]["reason"] == "no headers"
    assert found["triage retry"]["next_try"] == NOW.isoformat()
    assert found["deferred"]["case"] == "KW-1"
    assert found["withdrawn"]["reason"] == "customer_update: the team answered"
    assert main(["--config", str(config), "ignored", "--days", "100000"]) == 0
    table = capsys.readouterr().out
    assert "Precedence" in table and "CET" in table


def test_timeline_puts_own_mail_seen_after_its_acknowledgement(store: Path) -> None:
    engine = open_store(f"sqlite:///{store}")
    with engine.connect() as conn:
        kinds = [e.kind for e in reports.case_timeline(conn, 1)]
    engine.dispose()
    assert kinds.index("own_mail_seen") > kinds.index("acknowledgement")


def test_cases_fit_80_columns_with_a_legend(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--config", str(_config(tmp_path, store)), "cases"]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "…" not in out and "..." not in out
    assert "waiting on the team" in out


def test_a_read_only_command_says_why_it_cannot_read_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tmp_path / "missing" / "kw.db")
    assert main(["--config", str(config), "cases"]) == 3
    error = capsys.readouterr().err
    assert "no database at" in error and "migrate" not in error
    assert not (tmp_path / "missing").exists()  # a read creates nothing


def test_a_poll_failure_after_idle_is_logged_once_by_the_daemon_not_the_watcher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    from keepword.adapters import idle

    async def failing_poll() -> None:
        raise RuntimeError("IMAP down")

    with caplog.at_level(logging.INFO):
        asyncio.run(idle._notify(failing_poll))
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
