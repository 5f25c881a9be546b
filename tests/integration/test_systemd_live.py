"""keepword.service under a live systemd 252: PID 1 of a throw-away namespace.

scripts/systemd-sandbox boots systemd in private PID, mount and network namespaces
(loopback only, fresh tmpfs on /tmp, /run, /var/tmp and the state directories) with a
target of its own. Inside it, as transient units: a private Dovecot (IMAP with implicit
TLS, LMTP), an aiosmtpd relay that hands mail on to Dovecot over LMTP, and PostgreSQL.
keepword is installed the way docs/operations.md says (the wheel in a venv at
/opt/keepword, /etc/keepword/keepword.toml, passwords as LoadCredential= in a drop-in)
and driven with systemctl only. A customer's mail goes customer -> relay -> Dovecot ->
keepword (IDLE) -> relay -> the customer's mailbox.

The tests run in order on one sandbox (each step starts from where the last one left
the service). Skipped, with the reason, where the sandbox cannot be made (no root, no
unshare, no systemd). `scripts/systemd-sandbox shell --keepword` is the longer look.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.scripts import load_script

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUPPORT = "support@example.com"
CUSTOMER = "ann@example.org"
IMAP_PASSWORD = "imap-secret-pw"
CUSTOMER_PASSWORD = "customer-pw"
SMTP_USER = "keepword@example.com"  # what tests/fixtures/smtp.py's relay accepts
SMTP_PASSWORD = "smtp-secret-pw"
# Standard ports: the network namespace is empty, nothing else listens there.
IMAP_PORT, IMAPS_PORT, LMTP_PORT, SMTP_PORT, PG_PORT, METRICS_PORT = 143, 993, 24, 25, 5432, 9464
POLL_INTERVAL = 600  # far beyond every wait below: a quick answer can only come from IDLE
STOP_BOUND = 25.0  # docs: in-flight work gets up to 20 s; TimeoutStopSec=40s

sandbox_script = load_script("systemd-sandbox")
STATE: Path = sandbox_script.STATE
MAIL_DIR = STATE / "dovecot"
PG_DIR = STATE / "postgres"
STAGE = STATE / "stage"

# The relay: tests/fixtures/smtp.py's server on port 25, AUTH required for keepword's
# login, every mail handed on to Dovecot over LMTP; READY=1 once it listens.
RELAY = f"""
import signal
from keepword.adapters import sdnotify
from tests.fixtures.smtp import SmtpServer
server = SmtpServer(auth=True, lmtp=("127.0.0.1", {LMTP_PORT}))
server.port = {SMTP_PORT}
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM, signal.SIGINT}})
server.start()
sdnotify.ready()
signal.sigwait({{signal.SIGTERM, signal.SIGINT}})
server.stop()
"""

# The customer's mail client, run inside the sandbox: one message from stdin to the relay.
SEND = f"""
import smtplib, sys
with smtplib.SMTP("127.0.0.1", {SMTP_PORT}, timeout=10) as smtp:
    smtp.send_message(__import__("email").message_from_bytes(sys.stdin.buffer.read()))
"""

LMTP_SEND = f"""
import smtplib, sys
raw = sys.stdin.buffer.read()
with smtplib.LMTP("127.0.0.1", {LMTP_PORT}, timeout=10) as lmtp:
    lmtp.sendmail("{CUSTOMER}", ["{SUPPORT}"], raw)
"""

SCRAPE = f"""
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode())
"""


def wait_for(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    context: Callable[[], list[str]] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`
    (and the last lines of `context`, e.g. the unit's journal)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            lines = "\n".join(context()[-20:]) if context else ""
            raise AssertionError(f"timed out after {timeout:.0f} s: {what}\n{lines}")
        time.sleep(0.2)


@dataclass
class Live:
    """The sandbox with its servers and keepword installed; helpers to drive and look."""

    sandbox: Any
    sent: list[str] = field(default_factory=list)  # Message-IDs the customer sent

    def run(self, *args: str, **kwargs: Any) -> str:
        return str(self.sandbox.run(*args, **kwargs).stdout)

    def systemctl(self, *args: str, timeout: float = 120.0) -> str:
        return self.run("systemctl", *args, timeout=timeout)

    def show(self, *names: str) -> dict[str, str]:
        out = self.systemctl("show", "keepword", *(f"--property={n}" for n in names))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--unit=keepword", "--output=json", "--no-pager", *args)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def messages(self) -> list[str]:
        return [str(entry.get("MESSAGE", "")) for entry in self.journal()]

    def mark(self) -> int:
        """Where the unit's journal stands now (for wait_log's `after`)."""
        return len(self.journal())

    def wait_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> dict[str, Any]:
        """The first journal entry of the unit matching `pattern`; `after`: only entries
        logged after that mark (an earlier test's line must not count)."""

        def found() -> dict[str, Any] | None:
            entries = self.journal()[after:]
            return next((e for e in entries if re.search(pattern, str(e["MESSAGE"]))), None)

        entry: dict[str, Any] = wait_for(
            found, timeout, f"{pattern!r} in the journal", self.messages
        )
        return entry

    def stage(self, name: str, text: str) -> str:
        """Put a file where commands inside the sandbox can pick it up (`install` it)."""
        path = self.sandbox.path(STAGE / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(STAGE / name)

    def write_config(self, text: str) -> None:
        staged = self.stage("keepword.toml", text)
        self.run("install", "-m", "0644", staged, "/etc/keepword/keepword.toml")

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def add_customer(self, address: str) -> None:
        """Another customer with a mailbox of her own (keepword limits mail per sender)."""
        mailserver = REPO / "scripts" / "mailserver"
        self.run("/usr/bin/python3", str(mailserver), "adduser", str(MAIL_DIR), f"{address}:pw")

    def customer_writes(self, subject: str, customer: str = CUSTOMER, direct: bool = False) -> str:
        """A customer sends a mail to support@ through the relay (`direct`: straight into
        Dovecot over LMTP); returns its Message-ID."""
        msg = EmailMessage()
        msg["From"] = customer
        msg["To"] = SUPPORT
        msg["Subject"] = subject
        msg["Message-ID"] = make_msgid(domain="example.org")
        msg.set_content("Hello, my order has not arrived. Can you help?")
        self.sandbox.run("python3", "-c", LMTP_SEND if direct else SEND, input=msg.as_string())
        self.sent.append(str(msg["Message-ID"]))
        return str(msg["Message-ID"])

    def customer_mail(self) -> list[Message]:
        """Every mail in the customers' Dovecot Maildirs (read through the sandbox's root)."""
        users = self.sandbox.path(MAIL_DIR / "mail")
        files = [
            path
            for user in sorted(users.iterdir())
            if user.name != SUPPORT
            for sub in ("new", "cur")
            for path in sorted((user / "Maildir" / sub).glob("*"))
        ]
        return [message_from_bytes(p.read_bytes(), policy=default_policy) for p in files]

    def acknowledgements(self) -> dict[str, list[Message]]:
        """The customer's acknowledgements, by the Message-ID they answer."""
        acks: dict[str, list[Message]] = {}
        for msg in self.customer_mail():
            if str(msg.get("Auto-Submitted", "")).startswith("auto-replied"):
                acks.setdefault(str(msg.get("In-Reply-To", "")).strip(), []).append(msg)
        return acks

    def wait_ack(self, message_id: str, timeout: float = 30.0) -> Message:
        acks: list[Message] = wait_for(
            lambda: self.acknowledgements().get(message_id),
            timeout,
            f"an acknowledgement of {message_id}",
            self.messages,
        )
        return acks[0]

    def run_unit(self, properties: list[str], *command: str) -> tuple[int, str]:
        """Run `command` as a one-shot service with `properties`: (its exit status, output)."""
        output = STATE / f"unit-{time.monotonic_ns()}.out"
        args = ["systemd-run", "--quiet", "--property=Type=oneshot"]
        args += [f"--property={p}" for p in properties]
        args += [f"--property=StandardOutput=file:{output}", "--property=StandardError=inherit"]
        result = self.sandbox.run(*args, "--", *command, check=False)
        return result.returncode, self.sandbox.path(output).read_text()

    def scrape(self) -> str:
        return self.run("python3", "-c", SCRAPE)

    def wait_first_poll(self) -> None:
        wait_for(
            lambda: re.search(r"last poll \d\d:\d\d:\d\d", self.show("StatusText")["StatusText"]),
            30,
            "the first poll (STATUS= with a time)",
            self.messages,
        )

    # The tests run in the order a sysadmin meets the service, each leaving it as the next
    # expects; run alone (pytest -k), a test finds it as it needs it. In the full run
    # these are no-ops.
    def running(self) -> None:
        if self.show("ActiveState")["ActiveState"] != "active":
            self.systemctl("enable", "--now", "keepword")
            self.wait_first_poll()

    def stopped(self) -> None:
        if self.show("ActiveState")["ActiveState"] != "inactive":
            self.systemctl("stop", "keepword")


def config(*, metrics: bool = True, poll_interval: int = POLL_INTERVAL, database: str = "") -> str:
    lines = ["[keepword]", 'timezone = "UTC"', 'log_level = "INFO"']
    if metrics:
        lines.append(f'metrics_listen = "127.0.0.1:{METRICS_PORT}"')
    if database:
        lines.append(f'database_url = "{database}"')
    lines += [
        "",
        "[[mailbox]]",
        'name = "support"',
        f'address = "{SUPPORT}"',
        'display_name = "Example Support"',
        'team = ["alice@example.com"]',
        'lead = "carol@example.com"',
        f"poll_interval = {poll_interval}",
        "",
        "[mailbox.imap]",
        'host = "127.0.0.1"',
        f"port = {IMAPS_PORT}",
        'tls = "implicit"',
        'ca_file = "/etc/keepword/imap-ca.pem"',
        f'username = "{SUPPORT}"',
        'password_credential = "support-imap"',
        "idle = true",
        "",
        "[mailbox.smtp]",
        'host = "127.0.0.1"',
        f"port = {SMTP_PORT}",
        'tls = "plain"',
        f'username = "{SMTP_USER}"',
        'password_credential = "support-smtp"',
    ]
    return "\n".join(lines) + "\n"


HOOKS = "/etc/keepword/test-hooks"
DROP_IN_DIR = "/etc/systemd/system/keepword.service.d"
FREEZE = "/run/keepword-freeze"  # exists -> keepword's event loop blocks

# Imported by every Python process of the unit (PYTHONPATH from the drop-in below): once
# FREEZE exists, the event loop of the process runs a call that blocks it, as a bug in a
# job would. The watchdog pings come from that loop, so they stop.
FREEZER = f"""
import asyncio, os, threading, time
_loops = []
_run_forever = asyncio.BaseEventLoop.run_forever
def _recording_run_forever(self):
    _loops.append(self)
    return _run_forever(self)
asyncio.BaseEventLoop.run_forever = _recording_run_forever
def _freeze_when_asked():
    while not (os.path.exists({FREEZE!r}) and _loops):
        time.sleep(0.1)
    _loops[0].call_soon_threadsafe(time.sleep, 3600)
threading.Thread(target=_freeze_when_asked, daemon=True).start()
"""

WATCHDOG_DROP_IN = f"""[Service]
WatchdogSec=4s
Environment=PYTHONPATH={HOOKS}
LimitCORE=0
"""

DROP_IN = """[Service]
LoadCredential=support-imap:/etc/keepword/credentials/support-imap
LoadCredential=support-smtp:/etc/keepword/credentials/support-smtp
"""


def start_relay(sandbox: Any) -> None:
    sandbox_script.start_unit(
        sandbox,
        "kw-relay",
        sandbox_script.rig_python(), "-c", RELAY,
        properties=("Type=notify", f"WorkingDirectory={REPO}",
                    f"Environment=PYTHONPATH={REPO}:{REPO / 'src'}"),
    )  # fmt: skip


def start_rig(sandbox: Any) -> None:
    """Dovecot, the relay and PostgreSQL, as transient units inside the sandbox."""
    python3 = "/usr/bin/python3"
    oneshot = ("Type=oneshot", "RemainAfterExit=yes")
    sandbox_script.start_unit(
        sandbox,
        "kw-dovecot",
        python3, str(REPO / "scripts" / "mailserver"), "start", str(MAIL_DIR),
        "--imap-port", str(IMAP_PORT), "--imaps-port", str(IMAPS_PORT),
        "--lmtp-port", str(LMTP_PORT),
        "--user", f"{SUPPORT}:{IMAP_PASSWORD}", "--user", f"{CUSTOMER}:{CUSTOMER_PASSWORD}",
        properties=oneshot,
    )  # fmt: skip
    start_relay(sandbox)
    sandbox_script.start_unit(
        sandbox,
        "kw-postgres",
        python3, str(REPO / "scripts" / "pgserver"), "start", str(PG_DIR), "--port", str(PG_PORT),
        properties=oneshot,
    )  # fmt: skip


def install_keepword(sandbox: Any, text: str | None = None) -> None:
    """docs/operations.md, Install steps 2-4, run inside the sandbox as written there."""
    live = Live(sandbox)
    live.stage("keepword.toml", text or config())
    live.stage("support-imap", IMAP_PASSWORD + "\n")
    live.stage("support-smtp", SMTP_PASSWORD)
    live.stage("override.conf", DROP_IN)
    stage, unit = shlex.quote(str(STAGE)), shlex.quote(str(REPO / "systemd" / "keepword.service"))
    script = f"""set -e
/opt/keepword/bin/keepword --help >/dev/null
install -d -m 0755 /etc/keepword
install -m 0644 {stage}/keepword.toml /etc/keepword/keepword.toml
install -m 0644 {MAIL_DIR}/tls/cert.pem /etc/keepword/imap-ca.pem
install -d -m 0700 /etc/keepword/credentials
(umask 077; cat {stage}/support-imap > /etc/keepword/credentials/support-imap)
(umask 077; cat {stage}/support-smtp > /etc/keepword/credentials/support-smtp)
rm {stage}/support-imap {stage}/support-smtp
install -m 0644 {unit} /etc/systemd/system/
install -d /etc/systemd/system/keepword.service.d
install -m 0644 {stage}/override.conf /etc/systemd/system/keepword.service.d/override.conf
systemctl daemon-reload
"""
    sandbox.run("sh", "-c", script)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    sandbox_script.install()  # Debian packages, as root; a no-op where they are present
    reason = sandbox_script.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no systemd sandbox here: {reason}")
    load_script("mailserver").install()  # the Debian packages, with the host's network
    load_script("pgserver").install()
    venv = sandbox_script.build_venv()
    python = Path(sandbox_script.rig_python())
    with sandbox_script.Sandbox(venv=venv, keep=[python.parent.parent]) as sandbox:
        start_rig(sandbox)
        install_keepword(sandbox)
        yield Live(sandbox)
    assert sandbox.halted, f"systemd did not halt by itself:\n{sandbox.log_tail()}"


# -- the tests, in the order a sysadmin meets the service --------------------------------


def test_keepword_check_as_the_docs_run_it(live: Live) -> None:
    out = live.sandbox.run(
        "/opt/keepword/bin/keepword",
        "check",
        env={"CREDENTIALS_DIRECTORY": "/etc/keepword/credentials"},
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert IMAP_PASSWORD not in out.stdout + out.stderr


def test_start_returns_once_ready_with_a_status_line(live: Live) -> None:
    live.systemctl("enable", "--now", "keepword")
    unit = live.show(
        "ActiveState", "SubState", "Type", "StatusText",
        "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
    )  # fmt: skip
    assert (unit["ActiveState"], unit["SubState"], unit["Type"]) == ("active", "running", "notify")
    # Type=notify: `systemctl start` returned after READY=1, which carries the first STATUS=.
    assert re.fullmatch(r"1 mailbox, last poll (none yet|\d\d:\d\d:\d\d \S+), 0 failing",
                        unit["StatusText"]), unit  # fmt: skip
    # Active only once keepword had loaded its config and said so: not at exec (that would
    # be Type=simple), but after Python started, imported keepword and scheduled the jobs.
    ready_after_us = int(unit["ActiveEnterTimestampMonotonic"]) - int(
        unit["ExecMainStartTimestampMonotonic"]
    )
    assert ready_after_us > 200_000, unit
    live.wait_first_poll()
    status = live.run("systemctl", "status", "keepword", "--no-pager", check=False)
    line = r'Status: "1 mailbox, last poll \d\d:\d\d:\d\d \S+, 0 failing"'  # the zone named
    assert re.search(line, status), status


def test_journal_has_priorities_and_the_mailbox(live: Live) -> None:
    live.running()
    entry = live.wait_log(r"^keepword\.\S+ \[support\] ")
    assert entry["PRIORITY"] == "6", entry  # `<6>` became the journal's priority ...
    messages = live.messages()
    assert not [m for m in messages if re.match(r"<\d>", m)]  # ... and left the text
    assert not [m for m in messages if "Traceback" in m or "Operation not permitted" in m]
    # The docs' "one mailbox" filter.
    assert live.run("journalctl", "-u", "keepword", "-g", r"\[support", "--no-pager").strip()


def test_acknowledges_a_customer_mail_through_the_relay_at_once(live: Live) -> None:
    live.running()
    message_id = live.customer_writes("Where is my order?")
    ack = live.wait_ack(message_id, timeout=30)  # poll_interval is 600 s: this is IDLE
    assert re.search(r"\[KW-\d+\]", str(ack["Subject"])), ack["Subject"]
    assert str(ack["From"]).endswith(f"<{SUPPORT}>")

    def counted() -> str | None:
        scraped = live.scrape()
        return scraped if 'acknowledgements_sent_total{mailbox="support"} 1.0' in scraped else None

    scraped = wait_for(counted, 15, "the metrics endpoint to count the acknowledgement")
    assert 'keepword_messages_ingested_total{mailbox="support"}' in scraped


def test_the_dynamic_user_owns_the_state_and_alone_reads_the_credentials(live: Live) -> None:
    live.running()
    pid = live.main_pid()
    status = live.sandbox.path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert 61184 <= uid <= 65519, "DynamicUser= allocates from systemd's dynamic range"
    state = live.sandbox.path("/var/lib/private/keepword")
    assert (state.stat().st_uid, state.stat().st_mode & 0o7777) == (uid, 0o700)
    assert live.sandbox.path("/var/lib/keepword").resolve().name == "keepword"
    database = state / "keepword.db"
    assert database.stat().st_uid == uid
    credentials = live.sandbox.path("/run/credentials/keepword.service")
    for name in ("support-imap", "support-smtp"):
        info = (credentials / name).stat()
        assert info.st_uid == uid and info.st_mode & 0o077 == 0, (name, oct(info.st_mode))
    # Another service (another dynamic user) cannot read them.
    code, output = live.run_unit(
        ["DynamicUser=yes"], "cat", "/run/credentials/keepword.service/support-imap"
    )
    assert code != 0 and "Permission denied" in output and IMAP_PASSWORD not in output


def test_memory_deny_write_execute_is_enforced_here(live: Live) -> None:
    # systemd 252 enforces it with seccomp (254+ uses PR_SET_MDWE): keepword running a full
    # cycle under it only proves something if W+X memory is really refused here.
    live.running()
    assert re.search(r"^Seccomp:\s+2$", live.sandbox.path(f"/proc/{live.main_pid()}/status")
                     .read_text(), re.MULTILINE)  # fmt: skip
    code, output = live.run_unit(
        ["MemoryDenyWriteExecute=yes", "DynamicUser=yes"],
        "/opt/keepword/bin/python", "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)",
    )  # fmt: skip
    assert code != 0 and "PermissionError" in output, output


def test_security_rating_is_the_one_the_docs_claim(live: Live) -> None:
    claimed = re.search(r"rates the unit (\d+\.\d)", (REPO / "docs" / "operations.md").read_text())
    assert claimed, "docs/operations.md names no rating"
    out = live.run("systemd-analyze", "security", "keepword", "--no-pager", check=False)
    rating = re.search(r"Overall exposure level for keepword\.service: (\d+\.\d) (\w+)", out)
    assert rating, out
    assert (rating.group(1), rating.group(2)) == (claimed.group(1), "OK"), out[-600:]


def test_reload_rejects_a_bad_config_and_applies_a_good_one(live: Live) -> None:
    live.running()
    pid = live.main_pid()
    live.write_config(config(poll_interval=1))  # below the minimum of 5
    live.systemctl("reload", "keepword")
    rejected = live.wait_log(r"reload rejected, still running the previous config")
    assert rejected["PRIORITY"] == "3"
    assert "poll_interval" in rejected["MESSAGE"]
    live.write_config(config(poll_interval=POLL_INTERVAL - 1))
    live.systemctl("reload", "keepword")
    live.wait_log(r"config reloaded: .*changed support")
    # The unit stays "reloading" until READY=1, which comes once the old worker has
    # finished the poll it had in flight: the log line can precede it.
    wait_for(lambda: live.show("ActiveState")["ActiveState"] == "active", 60, "active after reload")
    unit = live.show("MainPID", "NRestarts")
    assert (int(unit["MainPID"]), unit["NRestarts"]) == (pid, "0")


def test_kill_9_restarts_it_and_nothing_is_lost_or_sent_twice(live: Live) -> None:
    live.running()
    before = live.main_pid()
    live.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", "keepword")
    written_while_down = live.customer_writes("Still waiting for my order")
    wait_for(lambda: live.show("NRestarts")["NRestarts"] == "1", 30, "Restart=on-failure")
    wait_for(lambda: live.show("ActiveState")["ActiveState"] == "active", 60, "active again")
    assert live.main_pid() != before
    live.wait_ack(written_while_down, timeout=30)  # the (re)connect poll found it
    acks = live.acknowledgements()
    assert sorted(acks) == sorted(live.sent)
    assert all(len(sent) == 1 for sent in acks.values()), {k: len(v) for k, v in acks.items()}


def test_mail_not_sent_before_a_stop_stays_in_the_outbox(live: Live) -> None:
    live.running()
    mark = live.mark()
    live.systemctl("stop", "kw-relay")
    try:
        waiting = live.customer_writes("Sent while the relay is down", direct=True)
        live.wait_log(r"outbox waits|cannot send", after=mark)
        live.systemctl("stop", "keepword")
        assert live.show("Result")["Result"] == "success"
    finally:
        start_relay(live.sandbox)
    live.systemctl("start", "keepword")
    live.wait_ack(waiting, timeout=30)  # the first poll after the start drains the outbox
    acks = live.acknowledgements()
    assert all(len(sent) == 1 for sent in acks.values()), {k: len(v) for k, v in acks.items()}


def test_stop_is_bounded_and_clean(live: Live) -> None:
    live.running()
    mark = live.mark()
    started = time.monotonic()
    live.systemctl("stop", "keepword")
    took = time.monotonic() - started
    assert took < STOP_BOUND
    unit = live.show("ActiveState", "Result", "ExecMainStatus")
    assert (unit["ActiveState"], unit["Result"], unit["ExecMainStatus"]) == (
        "inactive", "success", "0",
    )  # fmt: skip
    live.wait_log(r"keepword stopped", after=mark)


def test_an_invalid_config_at_start_is_not_restarted(live: Live) -> None:
    live.stopped()
    live.write_config(config() + "[keepword.nonsense]\n")
    started = live.sandbox.run("systemctl", "start", "keepword", check=False, timeout=120)
    assert started.returncode != 0
    unit = live.show("ActiveState", "SubState", "Result", "ExecMainStatus")
    # RestartPreventExitStatus=2: failed at once, not "auto-restart" in RestartSec=.
    assert (unit["ActiveState"], unit["SubState"], unit["ExecMainStatus"]) == (
        "failed", "failed", "2",
    ), unit  # fmt: skip
    live.systemctl("reset-failed", "keepword")
    live.write_config(config())


def psql(live: Live, sql: str, database: str = "postgres") -> str:
    """As the test server's superuser, over TCP (trust)."""
    return live.run("psql", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres",
                    "-d", database, "-tAc", sql).strip()  # fmt: skip


def test_a_full_cycle_on_postgresql_with_peer_authentication(live: Live) -> None:
    # docs/operations.md, PostgreSQL: a role named like the unit's dynamic user, peer
    # authentication over the local socket, no password anywhere.
    live.stopped()
    database = "keepword"
    psql(live, "CREATE ROLE keepword LOGIN")
    psql(live, "CREATE DATABASE keepword OWNER keepword ENCODING 'UTF8' TEMPLATE template0")
    hba = live.sandbox.path(PG_DIR / "data" / "pg_hba.conf")
    hba.write_text("local keepword keepword peer\n" + hba.read_text())
    psql(live, "SELECT pg_reload_conf()")
    live.run("ln", "-s", str(PG_DIR), "/run/postgresql")  # where Debian's server has it
    url = "postgresql+psycopg://keepword@/keepword?host=/var/run/postgresql"
    live.write_config(config(database=url))
    live.systemctl("start", "keepword")
    live.wait_first_poll()
    message_id = live.customer_writes("An order question, on PostgreSQL")
    live.wait_ack(message_id, timeout=30)
    assert int(psql(live, "select count(*) from message", database)) >= 1
    assert psql(live, "select tableowner from pg_tables where tablename = 'message'") == ""
    assert psql(live, "select tableowner from pg_tables where tablename = 'message'",
                database) == "keepword"  # fmt: skip
    assert not [m for m in live.messages() if "Traceback" in m or "Operation not permitted" in m]
    live.systemctl("stop", "keepword")
    assert live.show("Result")["Result"] == "success"


def test_a_frozen_event_loop_makes_the_watchdog_restart_it(live: Live) -> None:
    # The freeze is injected from outside keepword (a sitecustomize on PYTHONPATH, set in a
    # drop-in for this test only), and WatchdogSec= is shortened so the test takes seconds.
    live.stopped()
    live.stage("sitecustomize.py", FREEZER)
    live.stage("watchdog-test.conf", WATCHDOG_DROP_IN)
    live.run(
        "sh",
        "-c",
        f"""set -e
install -d -m 0755 {HOOKS}
install -m 0644 {STAGE}/sitecustomize.py {HOOKS}/sitecustomize.py
install -m 0644 {STAGE}/watchdog-test.conf {DROP_IN_DIR}/watchdog-test.conf
systemctl daemon-reload""",
    )
    try:
        live.systemctl("start", "keepword")
        live.wait_first_poll()
        frozen_pid, restarts = live.main_pid(), int(live.show("NRestarts")["NRestarts"])
        live.sandbox.path(FREEZE).touch()
        live.wait_log(r"Watchdog timeout", timeout=30)
        live.sandbox.path(FREEZE).unlink()  # the next process runs normally
        wait_for(lambda: int(live.show("NRestarts")["NRestarts"]) == restarts + 1, 30,
                 "Restart= after the watchdog")  # fmt: skip
        wait_for(lambda: live.show("ActiveState")["ActiveState"] == "active", 60, "active again")
        assert live.main_pid() != frozen_pid
        killed = [m for m in live.messages() if "SIGABRT" in m]
        assert killed, live.messages()[-15:]
    finally:
        live.sandbox.path(FREEZE).unlink(missing_ok=True)
        live.run("sh", "-c", f"rm -f {DROP_IN_DIR}/watchdog-test.conf; systemctl daemon-reload")
        live.systemctl("stop", "keepword")
