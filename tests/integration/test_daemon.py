"""`keepword run` as a subprocess, the way systemd runs it: notify socket, watchdog, signals.

The use-case layer is replaced by `FakeWorker` below: LAUNCHER runs keepword's own
`main` with `keepword.cli.run.make_worker` swapped for `make_fake_worker` (the CLI wires
the real factory statically). The fake reaches the mailbox's configured server on
loopback and records every call in a file, so the tests see exactly which jobs ran with
which settings.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from keepword.adapters.idle import OnChange
from keepword.adapters.metrics import METRICS
from keepword.clock import SPEED_ENV, Clock, SpedUpClock
from keepword.config import MailboxSettings, Settings
from keepword.errors import DeliveryUnavailable, MailboxError
from keepword.store.db import open_store
from keepword.store.jobs import job_runs
from tests.fixtures.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# src first: the venv's editable install may point at another checkout of keepword.
PYTHONPATH = os.pathsep.join([str(REPO / "src"), str(REPO)])
CALLS_ENV = "KEEPWORD_FAKE_WORKER_CALLS"
PASSWORD_ENV = "KW_TEST_PASSWORD"
LAUNCHER = (
    "import sys, keepword.cli.run as run; "
    "from tests.integration.test_daemon import make_fake_worker; "
    "run.make_worker = make_fake_worker; "
    "from keepword.cli import main; sys.exit(main(sys.argv[1:]))"
)


# -- the fake use-case layer (runs inside the daemon process) ------------------------


class FakeWorker:
    def __init__(self, settings: Settings, dry_run: bool) -> None:
        self.calls = Path(os.environ[CALLS_ENV])
        self.dry_run = dry_run

    def _record(self, kind: str, box: MailboxSettings) -> None:
        with self.calls.open("a") as out:
            out.write(f"{kind} {box.name} interval={box.poll_interval} dry_run={self.dry_run}\n")

    async def poll(self, mailbox: MailboxSettings) -> None:
        self._record("poll-start", mailbox)
        # Reach the configured server, as an IMAP login would.
        _, writer = await asyncio.open_connection(mailbox.imap.host, mailbox.imap.effective_port())
        writer.close()
        await writer.wait_closed()
        if mailbox.name.startswith("broken"):
            raise MailboxError("IMAP server said no")
        if mailbox.name.startswith("frozen"):
            time.sleep(2.5)  # a bug that blocks the event loop itself
        if mailbox.name.startswith("slow"):
            self._record("poll-blocked", mailbox)  # its thread starts in this same loop step
            await asyncio.to_thread(time.sleep, 60)  # a blocking call nobody can cancel
        METRICS.ingested(mailbox.name, 2)
        self._record("poll", mailbox)

    async def chase(self, mailbox: MailboxSettings) -> None:
        self._record("chase", mailbox)

    async def drain(self, mailbox: MailboxSettings) -> None:
        self._record("drain", mailbox)
        if mailbox.name.startswith("norelay"):
            raise DeliveryUnavailable("relay 127.0.0.1:25 refused the login")

    async def watch(
        self, mailbox: MailboxSettings, on_change: OnChange, stop: asyncio.Event
    ) -> None:
        await stop.wait()

    async def close(self) -> None:
        with self.calls.open("a") as out:
            out.write("close\n")


def make_fake_worker(settings: Settings, engine: Engine, clock: Clock) -> FakeWorker:
    return FakeWorker(settings, settings.keepword.dry_run)


# -- test rig --------------------------------------------------------------------------


@pytest.fixture
def imap_port() -> Iterator[int]:
    """A loopback listener standing in for the IMAP server (the kernel accepts for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield server.getsockname()[1]


def config_text(
    state: Path,
    port: int,
    boxes: dict[str, int],
    *,
    metrics: bool = False,
    database_url: str | None = None,
    password_file: Path | None = None,
) -> str:
    lines = ["[keepword]", f'state_dir = "{state}"']
    if database_url:
        lines.append(f'database_url = "{database_url}"')
    if metrics:
        lines.append('metrics_listen = "127.0.0.1:0"')
    for name, interval in boxes.items():
        lines += [
            "[[mailbox]]",
            f'name = "{name}"',
            f'address = "{name}@example.com"',
            f"poll_interval = {interval}",
            "[mailbox.imap]",
            'host = "127.0.0.1"',
            f"port = {port}",
            'tls = "plain"',
            f'username = "{name}@example.com"',
            f'password_file = "{password_file}"'
            if password_file
            else f'password_env = "{PASSWORD_ENV}"',
        ]
    return "\n".join(lines) + "\n"


class DaemonProcess:
    def __init__(
        self,
        tmp: Path,
        *extra: str,
        stop_timeout: float = 3.0,
        prefix: tuple[str, ...] = (),
        fake: bool = True,
        name: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.fake = fake
        self.env = env or {}
        self.prefix = prefix
        self.config = tmp / "keepword.toml"
        self.calls = tmp / f"calls{name}.txt"
        self.stderr = tmp / f"stderr{name}.txt"
        self.notify_path = tmp / f"notify{name}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.1)
        self.messages: list[str] = []
        self.arrivals: list[float] = []  # monotonic time each message was received
        # The kernel queues ~10 datagrams on a unix socket and sd_notify does not wait
        # (a full queue drops the message, as under systemd): a reader drains it all the
        # time, so a test that looks later still finds every notification.
        self._received = threading.Condition()
        self._examined = 0  # wait_notify looks at the messages from here on
        self._closed = False
        self._reader = threading.Thread(target=self._read_notifications, daemon=True)
        self._reader.start()
        self.extra = extra
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "WATCHDOG_PID")}
        env.update(
            PYTHONPATH=PYTHONPATH,
            NOTIFY_SOCKET=str(self.notify_path),
            WATCHDOG_USEC="1000000",  # pings every 0.5 s
            **{CALLS_ENV: str(self.calls), PASSWORD_ENV: "not-used"},
            **self.env,
        )
        self.calls.touch()
        program = ["-c", LAUNCHER] if self.fake else ["-m", "keepword"]
        command = [*self.prefix, sys.executable, *program, "--config", str(self.config)]
        command += ["run", "--stop-timeout", str(self.stop_timeout), *self.extra]
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=err)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read_notifications(self) -> None:
        while not self._closed:
            try:
                message = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            with self._received:
                self.messages.append(message)
                self.arrivals.append(time.monotonic())
                self._received.notify_all()

    def wait_notify(self, wanted: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first wanted notification after the one the previous call returned."""
        deadline = time.monotonic() + timeout
        with self._received:
            while True:
                for index in range(self._examined, len(self.messages)):
                    if wanted(self.messages[index]):
                        self._examined = index + 1
                        return self.messages[index]
                self._examined = len(self.messages)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such notification; got {self.messages}; {self.log()}")
                self._received.wait(remaining)

    def received(self) -> list[tuple[str, float]]:
        """Every notification so far, with when it arrived."""
        with self._received:
            return list(zip(self.messages, self.arrivals, strict=True))

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        return self._wait_file(self.stderr, pattern, timeout)

    def wait_call(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        return self._wait_file(self.calls, pattern, timeout)

    def _wait_file(self, path: Path, pattern: str, timeout: float) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = re.search(pattern, path.read_text(), re.MULTILINE)
            found.extend([match] if match else [])
            return match is not None

        assert wait_until(seen, timeout), f"{pattern!r} not in {path.name}: {path.read_text()}"
        return found[0]

    def log(self) -> str:
        return self.stderr.read_text()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float) -> tuple[int, float]:
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._closed = True
        self._reader.join(timeout=5)
        self.notify.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(*extra: str, **options: Any) -> DaemonProcess:
        process = DaemonProcess(tmp_path, *extra, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def ready(message: str) -> bool:
    return message.startswith("READY=1")


# -- the tests -----------------------------------------------------------------------------


def test_ready_watchdog_metrics_and_clean_stop(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}, metrics=True))
    kw.start()
    first = kw.wait_notify(ready)
    assert re.search(r"STATUS=1 mailbox, last poll (none yet|\d\d:\d\d:\d\d \S+), 0 failing", first)
    for _ in range(7):
        kw.wait_notify(lambda m: m == "WATCHDOG=1")
    pings = [at for message, at in kw.received() if message == "WATCHDOG=1"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    # Every half interval (0.5 s), not once (1 s): the median, since the first pass of
    # jobs on a loaded machine may hold the loop back for one gap or two.
    assert statistics.median(gaps) < 0.8, gaps

    kw.wait_call(r"^poll support interval=60 dry_run=False$")
    kw.wait_call(r"^drain support")  # right after the poll
    status = r"STATUS=1 mailbox, last poll (none yet|\d\d:\d\d:\d\d \S+), 0 failing"
    kw.wait_notify(lambda m: bool(re.fullmatch(status, m)))
    url = kw.wait_log(r"metrics on (http://127\.0\.0\.1:\d+/metrics)").group(1)
    scraped = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'keepword_messages_ingested_total{mailbox="support"} 2.0' in scraped
    assert "keepword_poll_duration_seconds_count" in scraped
    assert "python_gc" not in scraped  # its own registry, not the global one

    code, took = kw.stop(timeout=10)
    assert code == 0, kw.log()
    assert took < 5
    assert "STOPPING=1" in "\n".join(kw.messages) or kw.wait_notify(
        lambda m: m.startswith("STOPPING=1"), timeout=1
    )
    assert kw.calls.read_text().endswith("close\n")
    assert "keepword stopped" in kw.log()


def test_reload_with_broken_config_keeps_the_old_one(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}))
    kw.start()
    kw.wait_notify(ready)
    kw.wait_call(r"^poll support")
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 1}))  # below the minimum
    os.kill(kw.pid, signal.SIGHUP)
    kw.wait_notify(lambda m: m.startswith("RELOADING=1\nMONOTONIC_USEC="))
    kw.wait_notify(ready)
    line = kw.wait_log(r".*reload rejected.*").group(0)
    assert "ERROR" in line
    assert "mailbox[0:support].poll_interval" in line
    assert "greater than or equal to 5" in line
    assert len([x for x in kw.log().splitlines() if "reload rejected" in x]) == 1
    kw.wait_notify(lambda m: m == "WATCHDOG=1")
    assert kw.alive()
    assert "close" not in kw.calls.read_text()  # the old worker keeps working
    code, _ = kw.stop(timeout=10)
    assert code == 0


def test_reload_with_changed_config_reschedules(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60, "sales": 60}))
    kw.start()
    kw.wait_notify(ready)
    kw.wait_call(r"^poll support interval=60")
    kw.wait_call(r"^poll sales interval=60")
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 30, "billing": 60}))
    os.kill(kw.pid, signal.SIGHUP)
    kw.wait_log(r"config reloaded: added billing; removed sales; changed support; 0 unchanged")
    kw.wait_call(r"^poll billing interval=60")  # a new mailbox is polled at once
    kw.wait_call(r"^poll support interval=30")  # a changed one with its new settings
    kw.wait_call(r"^close$")  # the previous worker was closed
    status = kw.wait_notify(ready)
    assert "STATUS=2 mailboxes" in status
    sales_polls = kw.calls.read_text().count("poll sales")
    kw.wait_call(r"^drain billing interval=60")  # both new cycles went round once ...
    kw.wait_call(r"^drain support interval=30")
    assert kw.calls.read_text().count("poll sales") == sales_polls  # ... the removed one not
    code, _ = kw.stop(timeout=10)
    assert code == 0


def test_a_frozen_event_loop_stops_the_watchdog_pings(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"frozen": 60}))
    kw.start()
    kw.wait_notify(ready)
    for _ in range(6):
        kw.wait_notify(lambda m: m == "WATCHDOG=1")
    settled = time.monotonic()  # the freeze is in the first pass
    for _ in range(5):
        kw.wait_notify(lambda m: m == "WATCHDOG=1")
    pings = [at for message, at in kw.received() if message == "WATCHDOG=1"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert max(gaps) >= 2.0, gaps  # no ping while the loop was blocked ...
    after = [gap for gap, at in zip(gaps, pings[1:], strict=True) if at > settled]
    assert statistics.median(after) < 0.8, gaps  # ... and every half interval again afterwards
    kw.wait_call(r"^poll frozen")
    code, _ = kw.stop(timeout=10)
    assert code == 0


def test_failing_mailbox_backs_off_while_others_work(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"broken": 5, "support": 5}))
    kw.start()
    kw.wait_notify(ready)
    line = kw.wait_log(r".*poll failed.*").group(0)
    assert re.search(
        r"ERROR keepword\.runtime\.daemon \[broken\] poll failed \(1 in a row\): "
        r"IMAP server said no; retrying the poll in \d+ s",
        line,
    ), line
    assert "Traceback" not in kw.log()  # a KeepwordError explains itself
    kw.wait_call(r"^poll support")
    kw.wait_notify(lambda m: "1 failing" in m)
    assert kw.alive()
    code, _ = kw.stop(timeout=10)
    assert code == 0


def test_stop_abandons_a_stuck_job_after_the_bound(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon(stop_timeout=2.0)
    kw.config.write_text(config_text(tmp_path, imap_port, {"slow": 60}))
    kw.start()
    kw.wait_notify(ready)
    kw.wait_call(r"^poll-blocked slow")  # inside the blocking call now
    code, took = kw.stop(timeout=15)
    assert code == 0, kw.log()
    assert 2.0 <= took < 8.0
    assert "abandoning 1 job(s) still running after 2 s" in kw.log()
    assert "Traceback" not in kw.log()
    assert kw.calls.read_text().endswith("close\n")


def test_once_runs_one_cycle_per_mailbox(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon("--once", "--dry-run")
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60, "broken": 60}))
    kw.start()
    assert kw.proc is not None
    assert kw.proc.wait(timeout=20) == 1  # the broken mailbox fails the run
    calls = kw.calls.read_text().splitlines()
    for kind in ("poll", "chase", "drain"):
        assert f"{kind} support interval=60 dry_run=True" in calls
    assert "chase broken interval=60 dry_run=True" in calls  # a failed poll skips nothing else
    assert calls[-1] == "close"
    assert "[broken] poll failed: IMAP server said no" in kw.log()
    assert not kw.messages


# The kernel's PR_SET_MDWE (Linux 6.3+) is what MemoryDenyWriteExecute=yes in the unit
# uses on current systemd: no mapping may become writable and executable. It is kept
# across execve, so this wrapper puts the daemon under it.
MDWE_WRAPPER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(78)  # not enforced
except PermissionError:
    pass
os.execv(sys.argv[1], sys.argv[1:])
"""

# What keepword's own stack does at run time: migrations, TLS, templates, the spawned
# parse worker, a ctypes callback.
MDWE_PROBE = """
import ctypes, multiprocessing, ssl, sys
from concurrent.futures import ProcessPoolExecutor
import jinja2
from keepword.mail.parse import parse_many
from keepword.store.db import open_store

if __name__ == "__main__":
    with open_store(f"sqlite:///{sys.argv[1]}").connect() as db:
        assert db.exec_driver_sql("select count(*) from message").scalar() == 0
    ssl.create_default_context()
    assert jinja2.Environment().from_string("{{ n + 1 }}").render(n=1) == "2"
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        (parsed,) = pool.submit(parse_many, [b"Subject: hi\\r\\n\\r\\nbody\\r\\n"]).result()
    print("probe ok", parsed.subject, parsed.body_text.strip())
"""


@pytest.fixture
def mdwe(tmp_path: Path) -> tuple[str, ...]:
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    check = subprocess.run([sys.executable, str(wrapper), "/bin/true"], check=False, timeout=30)
    if check.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (needs Linux 6.3+)")
    assert check.returncode == 0, "PR_SET_MDWE set but W+X memory still allowed"
    return (sys.executable, str(wrapper))


def test_keepword_stack_works_without_writable_executable_memory(
    mdwe: tuple[str, ...], tmp_path: Path
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(MDWE_PROBE)
    result = subprocess.run(
        [*mdwe, sys.executable, str(probe), str(tmp_path / "probe.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["probe", "ok", "hi", "body"]


def test_daemon_runs_under_memory_deny_write_execute(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path, mdwe: tuple[str, ...]
) -> None:
    kw = daemon(prefix=mdwe)
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}))
    kw.start()
    kw.wait_notify(ready)
    kw.wait_call(r"^drain support")
    code, _ = kw.stop(timeout=10)
    assert code == 0, kw.log()


def run_keepword(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keepword", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})},
    )


def test_invalid_config_at_start_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "keepword.toml"
    config.write_text("[keepword]\nlog_level = 'LOUD'\n")
    result = run_keepword(config, "run")
    assert result.returncode == 2
    assert "keepword.log_level" in result.stderr


@pytest.mark.parametrize("once", [False, True])
def test_empty_config_exits_2_and_creates_no_database(tmp_path: Path, once: bool) -> None:
    config = tmp_path / "keepword.toml"
    state = tmp_path / "state"
    config.write_text(f'[keepword]\nstate_dir = "{state}"\n')
    result = run_keepword(config, "run", *(["--once"] if once else []))
    assert result.returncode == 2, result.stderr
    assert "no [[mailbox]] configured" in result.stderr
    assert not state.exists()  # no database (and no directory) made for nothing


@pytest.mark.parametrize("once", [False, True])
def test_missing_password_file_fails_fast_without_ready(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path, once: bool
) -> None:
    missing = tmp_path / "imap.pw"
    kw = daemon(*(["--once"] if once else []))
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}, password_file=missing))
    kw.start()
    assert kw.proc is not None
    assert kw.proc.wait(timeout=30) == 3, kw.log()
    line = kw.log().strip().splitlines()[-1]
    assert line == (
        f"keepword: mailbox support [mailbox.imap]: password_file for support@example.com: "
        f"{missing} does not exist"
    )
    time.sleep(0.3)  # the reader drains what the exited process may have sent
    assert kw.received() == []  # nothing at all was announced
    assert kw.calls.read_text() == ""  # no job ran


def test_unreachable_database_fails_fast(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql+psycopg://keepword@127.0.0.1:{port}/keepword"
    kw = daemon()
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}, database_url=url))
    kw.start()
    assert kw.proc is not None
    assert kw.proc.wait(timeout=30) == 3, kw.log()
    assert f"cannot reach the database postgresql+psycopg://keepword@127.0.0.1:{port}" in kw.log()
    assert "Traceback" not in kw.log()
    assert not kw.messages


def test_once_exits_1_when_the_drain_fails(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    kw = daemon("--once")
    kw.config.write_text(config_text(tmp_path, imap_port, {"norelay": 60}))
    kw.start()
    assert kw.proc is not None
    assert kw.proc.wait(timeout=30) == 1, kw.log()
    assert "[norelay] drain failed: relay 127.0.0.1:25 refused the login" in kw.log()


def test_run_help_lists_the_exit_codes(tmp_path: Path) -> None:
    result = run_keepword(tmp_path / "none.toml", "run", "--help")
    assert result.returncode == 0
    for code in ("0", "1", "2", "3", "4"):
        assert re.search(rf"^  {code}   ", result.stdout, re.MULTILINE), result.stdout


def test_run_honours_the_test_clock(
    daemon: Callable[..., DaemonProcess], imap_port: int, tmp_path: Path
) -> None:
    """KEEPWORD_CLOCK (the soak's hook) sets the daemon's one clock: job records show it."""
    virtual = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    clock = SpedUpClock(60.0, virtual, time.time())
    kw = daemon("--once", env={SPEED_ENV: clock.encode()})
    kw.config.write_text(config_text(tmp_path, imap_port, {"support": 60}))
    kw.start()
    assert kw.proc is not None
    assert kw.proc.wait(timeout=30) == 0, kw.log()
    engine = open_store(f"sqlite:///{tmp_path / 'keepword.db'}")
    with engine.connect() as conn:
        runs = job_runs(conn, "support")
    engine.dispose()
    assert {r.job for r in runs} == {"poll", "chase", "drain"}
    for run in runs:
        assert run.started_at is not None
        assert virtual <= run.started_at <= clock.now()
