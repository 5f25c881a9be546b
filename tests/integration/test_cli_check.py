"""`keepword check` against the real Dovecot and a real in-process aiosmtpd."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from keepword.cli import main
from keepword.store.db import make_engine, migrate, open_store
from tests.fixtures.dovecot import Dovecot

pytestmark = pytest.mark.integration

SMTP_USER = "support@example.com"
SMTP_PASSWORD = "smtp-Secret-42"


GONE = "gone@example.com"  # a team member who left: the relay refuses the address
BUSY = "busy@example.com"  # the relay cannot say now (4xx)


class _Sink:
    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address == GONE:
            return "550 5.1.1 no such user"
        if address == BUSY:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        SENT.append(bytes(envelope.content))
        return "250 OK"


SENT: list[bytes] = []  # what reached the sink's DATA: `keepword check` sends nothing


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = (
        isinstance(data, LoginPassword)
        and data.login.decode() == SMTP_USER
        and data.password.decode() == SMTP_PASSWORD
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def smtp_port(dovecot: Dovecot) -> Iterator[int]:
    port = dovecot.mailserver.free_port()
    controller = Controller(
        _Sink(),
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def write_config(
    tmp_path: Path,
    dovecot: Dovecot,
    user: str,
    *,
    password: str | None = None,
    folders: str = '["INBOX"]',
    smtp: str = "",
    team: str = "",
) -> Path:
    pw_file = tmp_path / "imap.pw"
    pw_file.write_text((password or dovecot.users[user]) + "\n")
    pw_file.chmod(0o600)
    config = tmp_path / "keepword.toml"
    config.write_text(
        f"""
[keepword]
state_dir = "{tmp_path}"

[[mailbox]]
name = "support"
address = "{user}"
folders = {folders}
done_folder = "Done"
{team}

[mailbox.imap]
host = "127.0.0.1"
port = {dovecot.imap_port}
tls = "plain"
username = "{user}"
password_file = "{pw_file}"
timeout = 5
{smtp}
"""
    )
    return config


def run_check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--config", str(config), "check"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@dataclass
class Checker:
    """`keepword check` on a configuration written for the test's Dovecot account."""

    tmp: Path
    dovecot: Dovecot
    user: str
    capsys: pytest.CaptureFixture[str]

    def config(self, **options: str) -> Path:
        """The configuration file (`write_config`'s options)."""
        return write_config(self.tmp, self.dovecot, self.user, **options)

    def run(self, config: Path | None = None, **options: str) -> tuple[int, str]:
        """The exit code and output of `check` on `config` (default: one with `options`)."""
        return run_check(config or self.config(**options), self.capsys)


@pytest.fixture
def check(
    tmp_path: Path, dovecot: Dovecot, mail_user: str, capsys: pytest.CaptureFixture[str]
) -> Checker:
    return Checker(tmp_path, dovecot, mail_user, capsys)


def test_all_ok(check: Checker) -> None:
    code, out = check.run(folders='["INBOX", "Sent"]')
    assert code == 0, out
    assert (
        f"ok   support: IMAP {check.user} at 127.0.0.1:{check.dovecot.imap_port}: logged in" in out
    )
    assert "INBOX, Sent, Done" in out
    assert check.dovecot.users[check.user] not in out
    # issue 12: only the Sent folder proves team mail by default; check says so (a warning)
    assert f"warn support: trust: only the Sent folder of {check.user} proves team mail" in out
    assert "dkim_domains" in out and "trusted_authserv_ids" in out
    # No [mailbox.smtp]: nothing keepword writes would leave (advice, exit code 0).
    relay = "warn support: smtp: no [mailbox.smtp]: its acknowledgements, reminders and"
    assert relay in out


def test_trust_configured_no_warning(check: Checker) -> None:
    trust = '\n[mailbox.trust]\ntrusted_authserv_ids = ["mx.example.com"]\n'
    code, out = check.run(folders='["INBOX", "Sent"]', smtp=trust)
    assert code == 0, out
    assert "warn support: trust" not in out


def test_wrong_password_fails_without_showing_it(check: Checker) -> None:
    code, out = check.run(password="Not-The-Password-77")
    assert code == 1
    assert "FAIL support: IMAP" in out
    assert "refused" in out
    assert "Not-The-Password-77" not in out


def test_missing_folder_fails(check: Checker) -> None:
    code, out = check.run(folders='["INBOX", "Support/Billing"]')
    assert code == 1
    assert "folder(s) missing: Support/Billing" in out


def test_missing_password_file_fails(check: Checker) -> None:
    config = check.config()
    (check.tmp / "imap.pw").unlink()
    code, out = check.run(config)
    assert code == 1
    assert f"{check.tmp / 'imap.pw'} does not exist" in out


def test_invalid_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "keepword.toml"
    config.write_text('[[mailbox]]\nname = "x"\naddress = "nope"\n')
    code, out = run_check(config, capsys)
    assert code == 2
    assert "is not an e-mail address" in out


def test_server_down_fails(check: Checker) -> None:
    config = check.config()
    check.dovecot.stop()
    try:
        code, out = check.run(config)
    finally:
        check.dovecot.start()
    assert code == 1
    assert "connect failed" in out


def _smtp_table(tmp_path: Path, port: int, password: str) -> str:
    pw_file = tmp_path / "smtp.pw"
    pw_file.write_text(password + "\n")
    return f"""
[mailbox.smtp]
host = "127.0.0.1"
port = {port}
tls = "plain"
username = "{SMTP_USER}"
password_file = "{pw_file}"
timeout = 5
"""


def test_smtp_login_ok(check: Checker, smtp_port: int) -> None:
    smtp = _smtp_table(check.tmp, smtp_port, SMTP_PASSWORD)
    code, out = check.run(smtp=smtp)
    assert code == 0, out
    assert f"ok   support: SMTP {SMTP_USER} at 127.0.0.1:{smtp_port}: connected, EHLO" in out
    assert SMTP_PASSWORD not in out
    assert "warn support: smtp" not in out


def test_smtp_asks_the_relay_about_the_team_without_sending(check: Checker, smtp_port: int) -> None:
    smtp = _smtp_table(check.tmp, smtp_port, SMTP_PASSWORD)
    team = 'team = ["alice@example.com", "bob@example.com"]\nlead = "carol@example.com"'
    code, out = check.run(smtp=smtp, team=team)
    assert code == 0, out
    assert f"login ok; sender {check.user} and 3 of 3 team address(es) accepted" in out
    assert SENT == []


def test_smtp_fails_on_a_team_address_the_relay_refuses(check: Checker, smtp_port: int) -> None:
    smtp = _smtp_table(check.tmp, smtp_port, SMTP_PASSWORD)
    team = f'team = ["alice@example.com", "{GONE}", "{BUSY}"]\nlead = "carol@example.com"'
    code, out = check.run(smtp=smtp, team=team)
    assert code == 1, out
    assert f"FAIL support: SMTP {SMTP_USER}" in out
    assert "2 of 4 team address(es) accepted" in out
    assert f"refused for good: {GONE} (550 5.1.1 no such user) (check the mailbox's team" in out
    assert f"not verified now: {BUSY} (451 4.3.0 try again later)" in out


def test_smtp_wrong_password(check: Checker, smtp_port: int) -> None:
    smtp = _smtp_table(check.tmp, smtp_port, "wrong-smtp-pw-99")
    code, out = check.run(smtp=smtp)
    assert code == 1
    assert f"FAIL support: SMTP {SMTP_USER}" in out
    assert "login as support@example.com refused: 535" in out
    assert "wrong-smtp-pw-99" not in out
    assert "ok   support: IMAP" in out  # one broken server does not hide the others


def test_smtp_server_down(check: Checker) -> None:
    smtp = _smtp_table(check.tmp, check.dovecot.mailserver.free_port(), SMTP_PASSWORD)
    code, out = check.run(smtp=smtp)
    assert code == 1
    assert "FAIL support: SMTP" in out


# -- the store and an empty config (issue 10, item 9) ---------------------------------


def test_reports_the_database(check: Checker) -> None:
    config = check.config(folders='["INBOX", "Sent"]')
    code, out = check.run(config)
    assert code == 0, out
    database = check.tmp / "keepword.db"
    assert f"ok   store: database sqlite:///{database}: {database} does not exist yet" in out
    assert not database.exists()  # check changes nothing
    open_store(f"sqlite:///{database}").dispose()
    code, out = check.run(config)
    assert code == 0, out
    assert "ok   store: database" in out and "schema up to date" in out


def test_an_old_schema_is_migratable(check: Checker) -> None:
    config = check.config(folders='["INBOX", "Sent"]')
    migrate(make_engine(f"sqlite:///{check.tmp / 'keepword.db'}"), "0003")
    code, out = check.run(config)
    assert code == 0, out
    assert "schema 0003, migrated to" in out


def test_a_read_only_database_fails(check: Checker) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    config = check.config(folders='["INBOX", "Sent"]')
    database = check.tmp / "keepword.db"
    open_store(f"sqlite:///{database}").dispose()
    database.chmod(0o444)
    code, out = check.run(config)
    assert code == 1
    assert "FAIL store" in out and "read-only" in out


def test_an_unreachable_database_fails(check: Checker) -> None:
    config = check.config(folders='["INBOX", "Sent"]')
    port = check.dovecot.mailserver.free_port()
    url = f"postgresql+psycopg://keepword@127.0.0.1:{port}/keepword"
    config.write_text(
        config.read_text().replace("[keepword]\n", f'[keepword]\ndatabase_url = "{url}"\n', 1)
    )
    code, out = check.run(config)
    assert code == 1
    assert f"FAIL store: database {url}: cannot connect" in out
    assert "ok   support: IMAP" in out  # the servers are still checked


def test_an_empty_config_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "keepword.toml"
    config.write_text(f'[keepword]\nstate_dir = "{tmp_path / "state"}"\n')
    code, out = run_check(config, capsys)
    assert code == 2
    assert out.startswith("FAIL config:") and "no [[mailbox]] configured" in out
    assert "ok " not in out
    assert not (tmp_path / "state").exists()
