"""systemd/keepword.service: the directives the daemon relies on, and systemd's own verdict.

The file is parsed here (repeated keys kept, comments dropped) so the test can fail
without systemd; where `systemd-analyze` exists it verifies the unit and rates its
hardening as well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keepword.cli import build_parser
from keepword.config import ImapSettings
from keepword.pipeline import parse_workers
from keepword.runtime.daemon import CLOSE_TIMEOUT, STOP_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "keepword.service"
ANALYZE = shutil.which("systemd-analyze")
no_systemd = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package 'systemd')"
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd.syntax(7): [Section], Key=Value, repeated keys accumulate, '\\' continues."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_parser_keeps_repeated_keys_and_skips_comments() -> None:
    parsed = parse_unit("[Service]\n# A=0\nA=1\n; A=2\nA=3 \\\n  4\n")
    assert parsed == {"Service": {"A": ["1", "3 4"]}}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "keepword"),
        ("ConfigurationDirectory", "keepword"),
        ("RestartPreventExitStatus", "2"),
    ],
)
def test_service_lifecycle(unit: Unit, key: str, value: str) -> None:
    assert unit["Service"][key] == [value]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallArchitectures", "native"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ],
)
def test_hardening(unit: Unit, key: str, value: str) -> None:
    assert unit["Service"][key] == [value]


def test_system_call_filter_starts_from_system_service(unit: Unit) -> None:
    filters = unit["Service"]["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:])  # later lines only take away


def test_exec_start_is_a_real_keepword_command(unit: Unit) -> None:
    (command,) = unit["Service"]["ExecStart"]
    program, *args = command.split()
    assert program == "/opt/keepword/bin/keepword"
    parsed = build_parser().parse_args(args)
    assert parsed.command == "run"
    assert not parsed.once  # the service is the long-running daemon


def test_stop_timeout_outlasts_the_daemons_own_bound(unit: Unit) -> None:
    (stop,) = unit["Service"]["TimeoutStopSec"]
    assert seconds(stop) > STOP_TIMEOUT + CLOSE_TIMEOUT  # systemd never SIGKILLs a clean stop


def size_in_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", value)
    assert match, value
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " ")


def test_memory_is_capped_above_what_ingestion_holds(unit: Unit) -> None:
    (high,) = unit["Service"]["MemoryHigh"]
    (limit,) = unit["Service"]["MemoryMax"]
    batch = ImapSettings.model_fields["fetch_batch_bytes"].default
    assert isinstance(batch, int)
    # The batches in flight (fetched, one in each parse worker, the one being stored),
    # the stored copy, each worker's own copy, and the interpreter with one parse: a
    # default installation must never meet the throttle, let alone the kill.
    workers = parse_workers.MAX_PARSE_WORKERS
    held = (workers + 2) + 1 + workers + 1
    assert held * batch <= size_in_bytes(high) < size_in_bytes(limit)


def test_watchdog_is_on(unit: Unit) -> None:
    (watchdog,) = unit["Service"]["WatchdogSec"]
    assert 10 <= seconds(watchdog) <= 600


def test_credentials_are_shown_as_commented_examples() -> None:
    text = UNIT.read_text()
    assert re.search(r"^#LoadCredential=support-imap:/etc/keepword/credentials/", text, re.M)
    assert "password_credential" in text
    assert "LoadCredential" not in parse_unit(text)["Service"]  # examples only


def test_installs_into_multi_user(unit: Unit) -> None:
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Unit"]["After"] == ["network-online.target"]


def _with_real_executable(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists; point it at this checkout's entry point.
    entry = Path(sys.executable).with_name("keepword")
    if not entry.exists():
        pytest.skip(f"no installed keepword entry point at {entry}")
    copy = tmp_path / "keepword.service"
    copy.write_text(UNIT.read_text().replace("/opt/keepword/bin/keepword", str(entry)))
    return copy


@no_systemd
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    copy = _with_real_executable(tmp_path)
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 even for unknown keys or unparsable values; those are warnings
    # naming the file, so any output about our unit is a failure too.
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if "keepword" in line
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@no_systemd
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    assert ANALYZE is not None
    copy = _with_real_executable(tmp_path)
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("this systemd-analyze has no offline security check (needs systemd 250+)")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0  # systemd's scale: 0 safest .. 10 unprotected
