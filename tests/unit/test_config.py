from __future__ import annotations

from pathlib import Path

import pytest

from keepword.config import TlsMode, load_config, parse_config, resolve_config_path
from keepword.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "keepword.example.toml"


def minimal(**imap: object) -> dict[str, object]:
    server = {"host": "127.0.0.1", "tls": "plain", "username": "u", "password_env": "PW"}
    server.update(imap)
    return {"mailbox": [{"name": "support", "address": "support@example.com", "imap": server}]}


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, Path("/etc/keepword/keepword.toml"))
    return info.value.problems


def test_example_config_is_valid_and_documents_a_mailbox() -> None:
    settings = load_config(EXAMPLE)
    box = settings.mailbox_named("support")
    assert box.imap.tls is TlsMode.IMPLICIT
    assert box.imap.effective_port() == 993
    assert box.lead == "carol@example.com"
    assert "support@example.com" in box.team_addresses()
    assert settings.zone_for(box).key == "Europe/Berlin"


def test_defaults_put_sqlite_in_state_dir(tmp_path: Path) -> None:
    data = minimal()
    data["keepword"] = {"state_dir": str(tmp_path)}
    settings = parse_config(data, tmp_path / "k.toml")
    assert settings.keepword.effective_database_url() == f"sqlite:///{tmp_path}/keepword.db"
    assert settings.mailbox[0].folders == ["INBOX"]


def test_unknown_key_is_an_error_naming_file_and_key() -> None:
    data = minimal()
    data["mailbox"][0]["pol_interval"] = 30  # type: ignore[index]
    [line] = problems(data)
    assert line.startswith("/etc/keepword/keepword.toml: mailbox[0:support].pol_interval:")
    assert "unknown key" in line


def test_every_problem_is_reported_at_once() -> None:
    data = minimal(port=99999)
    data["keepword"] = {"timezone": "Mars/Olympus"}
    lines = problems(data)
    assert len(lines) == 2
    assert any("keepword.timezone" in x and "unknown time zone" in x for x in lines)
    assert any("imap.port" in x for x in lines)


def test_plain_tls_refused_for_remote_host() -> None:
    [line] = problems(minimal(host="imap.example.com"))
    assert "only allowed for a loopback host" in line


def test_exactly_one_password_source() -> None:
    [line] = problems(minimal(password_file="/x"))
    assert "exactly one" in line and "password_env" in line


def test_inline_password_refused_unless_allowed() -> None:
    data = minimal(password="hunter2")
    del data["mailbox"][0]["imap"]["password_env"]  # type: ignore[index]
    [line] = problems(data)
    assert "inline 'password' is refused" in line
    assert "hunter2" not in line
    data["keepword"] = {"allow_inline_passwords": True}
    settings = parse_config(data, Path("k.toml"))
    assert "hunter2" not in repr(settings)


def test_calendar_without_open_hours_is_an_error() -> None:
    data = minimal()
    data["mailbox"][0]["calendar"] = {"hours": {"mon": []}}  # type: ignore[index]
    [line] = problems(data)
    assert "calendar.hours" in line and "no opening hours" in line


def test_bad_interval_is_named() -> None:
    data = minimal()
    data["mailbox"][0]["calendar"] = {"hours": {"mon": ["17:00-09:00"]}}  # type: ignore[index]
    [line] = problems(data)
    assert "closes before it opens" in line


def test_duplicate_mailbox_names() -> None:
    data = minimal()
    data["mailbox"] = [data["mailbox"][0], data["mailbox"][0]]  # type: ignore[index]
    [line] = problems(data)
    assert "unique" in line


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[keepword\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "TOML syntax error" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_config_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEEPWORD_CONFIG", raising=False)
    assert resolve_config_path(None) == Path("/etc/keepword/keepword.toml")
    monkeypatch.setenv("KEEPWORD_CONFIG", "/tmp/k.toml")
    assert resolve_config_path(None) == Path("/tmp/k.toml")
    assert resolve_config_path("/x.toml") == Path("/x.toml")


def test_digest_is_on_by_default_and_can_be_switched_off() -> None:
    on = parse_config(minimal(), Path("k.toml")).mailbox[0].chase
    assert on.digest and on.digest_time.isoformat() == "08:30:00"
    data = minimal()
    data["mailbox"][0]["chase"] = {"digest": False}  # type: ignore[index]
    assert not parse_config(data, Path("k.toml")).mailbox[0].chase.digest


def test_owners_policy_and_planned_absences() -> None:
    data = minimal()
    box = data["mailbox"][0]  # type: ignore[index]
    box["team"] = ["alice@example.com", "bob@example.com"]
    box["owners"] = {
        "policy": "round_robin",
        "working_days": {"Bob@Example.com": ["mon", "tue"]},
        "away": [{"address": "alice@example.com", "start": "2026-12-21", "back_on": "2027-01-04"}],
    }
    owners = parse_config(data, Path("k.toml")).mailbox[0].owners
    assert owners.policy == "round_robin" and owners.working_days == {
        "bob@example.com": ["mon", "tue"]
    }
    assert str(owners.away[0].back_on) == "2027-01-04"
    assert parse_config(minimal(), Path("k.toml")).mailbox[0].owners.policy == "least_open"


@pytest.mark.parametrize(
    ("owners", "wrong"),
    [
        ({"policy": "random"}, "owners.policy"),
        (
            {
                "away": [
                    {"address": "eve@example.com", "start": "2026-12-21", "back_on": "2027-01-04"}
                ]
            },
            "not in team",
        ),
        (
            {
                "away": [
                    {"address": "alice@example.com", "start": "2026-12-21", "back_on": "2026-12-21"}
                ]
            },
            "is not after start",
        ),
        ({"working_days": {"alice@example.com": ["someday"]}}, "unknown weekday"),
    ],
)
def test_owners_mistakes_are_named(owners: dict[str, object], wrong: str) -> None:
    data = minimal()
    box = data["mailbox"][0]  # type: ignore[index]
    box["team"] = ["alice@example.com"]
    box["owners"] = owners
    assert any(wrong in p for p in problems(data)), problems(data)
