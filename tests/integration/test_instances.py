"""Several `keepword run` on one PostgreSQL: real processes, Dovecot, aiosmtpd, PostgreSQL.

Three instances share 20 mailboxes under steady customer traffic. One is SIGKILLed,
another SIGSTOPped for longer than its lease and SIGCONTinued, then PostgreSQL
restarts. At the end every message is stored once, every customer has exactly one
acknowledgement, no case is duplicated, and every mailbox was worked again within 30 s
of losing its instance. `Cluster` is also the rig of scripts/instances (the long run).

The relay files a copy of every mail it takes in the sender's Sent folder (as Gmail
and Microsoft 365 do), so an instance killed between the relay's 250 and its own
record leaves evidence the next holder finds (pipeline.send); `unknown_outcome_wait`
is short so that such a mail is settled within the test, yet longer than the pause.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from keepword.store import leases
from keepword.store.db import make_engine
from keepword.store.tables import case, job_run, message
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.postgres import Postgres
from tests.fixtures.smtp import SmtpServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAKEOVER_BOUND = 30.0  # seconds: the promise with the shipped lease timings
_clusters = itertools.count(1)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(step)


@dataclass
class Node:
    """One `keepword run` process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class CustomerMail:
    customer: str
    mailbox: str
    message_id: str


@dataclass
class Report:
    sent: int
    stored_twice: list[str]
    not_stored: list[str]
    acks_twice: list[str]
    acks_missing: list[str]
    cases_twice: list[str]

    @property
    def clean(self) -> bool:
        return not (
            self.stored_twice or self.not_stored or self.acks_twice or self.acks_missing
            or self.cases_twice
        )  # fmt: skip


@dataclass
class Cluster:
    tmp: Path
    dovecot: Dovecot
    smtp: SmtpServer
    postgres: Postgres
    url: str
    boxes: int = 20
    tag: str = field(default_factory=lambda: f"i{os.getpid() % 1000}n{next(_clusters)}")
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.users = {
            f"{self.tag}b{n:02d}@example.com": self.mailbox_name(n) for n in range(self.boxes)
        }
        self.dovecot.mailserver.add_users(
            self.dovecot.instance, {user: "pw-" + user for user in self.users}
        )
        self.by_name = {name: user for user, name in self.users.items()}
        self.config = self.tmp / "keepword.toml"
        self.config.write_text(self.config_text())
        self.engine: Engine = make_engine(self.url)
        self.smtp.file_sent_copies(self._file_sent_copy)
        self._customers = itertools.count(1)
        self._names = itertools.count(1)

    @staticmethod
    def mailbox_name(n: int) -> str:
        return f"box{n:02d}"

    def config_text(self) -> str:
        lines = [
            "[keepword]",
            f'state_dir = "{self.tmp / "state"}"',
            f'database_url = "{self.url}"',
            "allow_inline_passwords = true",
            'log_level = "INFO"',
        ]
        for user, name in self.users.items():
            lines += [
                "[[mailbox]]",
                f'name = "{name}"',
                f'address = "{user}"',
                'sent_folder = "Sent"',
                "append_to_sent = false",  # the relay files the copy itself
                "poll_interval = 5",
                'team = ["alice@example.com"]',
                "[mailbox.imap]",
                f'host = "{self.dovecot.host}"',
                f"port = {self.dovecot.imap_port}",
                'tls = "plain"',
                f'username = "{user}"',
                f'password = "pw-{user}"',
                "[mailbox.smtp]",
                f'host = "{self.smtp.host}"',
                f"port = {self.smtp.port}",
                'tls = "plain"',
                f'username = "{self.smtp.user}"',
                f'password = "{self.smtp.password}"',
                # Longer than the SIGSTOP below (~25 s): an instance frozen in the middle
                # of DATA finishes it when it wakes, and the relay files its copy then
                # (in production the 15 min default outlasts the minutes a relay waits
                # on a silent client). Shorter, the new holder found no copy and sent
                # again.
                "unknown_outcome_wait = 60",
                "[mailbox.chase]",
                "digest = false",
                "interval_seconds = 30",
            ]
        return "\n".join(lines) + "\n"

    def _file_sent_copy(self, raw: bytes) -> None:
        sender = parseaddr(_header(raw, "From"))[1]
        if sender in self.users:
            self.dovecot.append(sender, "Sent", raw)

    # -- instances -----------------------------------------------------------------------

    def start(self, name: str | None = None) -> Node:
        name = name or f"kw{next(self._names)}"
        log = self.tmp / f"{name}.log"
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")},
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        }
        command = [sys.executable, "-m", "keepword", "--config", str(self.config), "run"]
        with log.open("ab") as out:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def status(self) -> str:
        """`keepword status` as an operator runs it beside the instances."""
        result = subprocess.run(
            [sys.executable, "-m", "keepword", "--config", str(self.config), "status"],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"},
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
        return result.stdout

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.alive()]

    def held(self) -> dict[int, tuple[str, ...]]:
        """pid -> mailboxes it holds (live leases of live instances only)."""
        with self.engine.connect() as conn:
            seen = leases.view(conn)
        return {i.pid: i.mailboxes for i in seen.instances if i.alive}

    def balanced(self, nodes: list[Node]) -> bool:
        held = self.held()
        counts = [len(held.get(n.pid, ())) for n in nodes]
        share = -(-self.boxes // len(nodes))
        return sum(counts) == self.boxes and all(share - 1 <= c <= share for c in counts)

    def first_polls_done(self) -> bool:
        """Every mailbox polled once: mail from now on is new, not history."""
        query = select(func.count()).where(
            job_run.c.job == "poll", job_run.c.last_ok_at.is_not(None)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one()) >= self.boxes

    def wait_balanced(self, nodes: list[Node], timeout: float = 60.0) -> None:
        wait_for(lambda: self.balanced(nodes), timeout, f"{len(nodes)} instances balanced")

    def stop_all(self, timeout: float = 60.0) -> list[int | None]:
        for node in self.live_nodes():
            node.proc.send_signal(signal.SIGCONT)
            node.proc.terminate()
        codes = []
        for node in self.nodes:
            try:
                codes.append(node.proc.wait(timeout))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                codes.append(None)
        return codes

    # -- what was worked -----------------------------------------------------------------

    def polls_since(self, since: datetime) -> dict[str, datetime]:
        query = select(job_run.c.mailbox, job_run.c.started_at).where(
            job_run.c.job == "poll", job_run.c.started_at > since
        )
        with self.engine.connect() as conn:
            return {row.mailbox: row.started_at for row in conn.execute(query)}

    def worked_again(
        self, mailboxes: tuple[str, ...], since: datetime, timeout: float = 60.0
    ) -> dict[str, float]:
        """Seconds from `since` to each mailbox's first poll after it (job_run, DB rows)."""
        first: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while set(first) < set(mailboxes) and time.monotonic() < deadline:
            try:
                polls = self.polls_since(since)
            except Exception:  # the database restarting: look again
                polls = {}
            for name, started in polls.items():
                if name in mailboxes and name not in first:
                    first[name] = (started - since).total_seconds()
            time.sleep(0.25)
        missing = set(mailboxes) - set(first)
        assert not missing, f"never worked again within {timeout:.0f} s: {sorted(missing)}"
        return first

    # -- traffic and the end state -------------------------------------------------------

    def customer_mail(self) -> CustomerMail:
        n = next(self._customers)
        name = self.mailbox_name(random.randrange(self.boxes))
        customer = f"c{n}.{self.tag}@customer.test"
        msg = EmailMessage()
        msg["From"] = f"Customer {n} <{customer}>"
        msg["To"] = self.by_name[name]
        msg["Subject"] = f"Order {n} went missing"
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain="customer.test")
        msg.set_content(f"Hello, my order {n} has not arrived. Can you help?")
        self.dovecot.append(self.by_name[name], "INBOX", bytes(msg))
        return CustomerMail(customer, name, str(msg["Message-ID"]))

    def acknowledgements(self) -> Counter[str]:
        return Counter(
            rcpt for m in list(self.smtp.messages) for rcpt in m.rcpt_tos
            if rcpt.endswith(f".{self.tag}@customer.test")
        )  # fmt: skip

    def wait_acknowledged(self, sent: list[CustomerMail], timeout: float) -> None:
        wanted = {m.customer for m in sent}
        wait_for(
            lambda: wanted <= set(self.acknowledgements()),
            timeout,
            f"{len(wanted - set(self.acknowledgements()))} customers still unacknowledged",
            step=1.0,
        )

    def report(self, sent: list[CustomerMail]) -> Report:
        ids = [m.message_id.strip("<>") for m in sent]  # stored without the brackets
        with self.engine.connect() as conn:
            stored = Counter(
                row.message_id.strip("<>")
                for row in conn.execute(
                    select(message.c.message_id).where(message.c.message_id.in_(ids))
                )
            )
            cases = conn.execute(
                select(case.c.mailbox, case.c.customer, func.count())
                .where(case.c.customer.like(f"%.{self.tag}@customer.test"))
                .group_by(case.c.mailbox, case.c.customer)
            ).all()
        acks = self.acknowledgements()
        customers = {m.customer for m in sent}
        return Report(
            sent=len(sent),
            stored_twice=sorted(i for i, n in stored.items() if n > 1),
            not_stored=sorted(set(ids) - set(stored)),
            acks_twice=sorted(c for c, n in acks.items() if n > 1),
            acks_missing=sorted(customers - set(acks)),
            cases_twice=sorted(f"{b} {c}" for b, c, n in cases if n > 1)
            + sorted(customers - {c for _, c, _ in cases}),
        )

    def close(self) -> None:
        self.stop_all(timeout=30)
        self.smtp.file_sent_copies(None)
        self.engine.dispose()


def _header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode(errors="replace")
    for line in head.splitlines():
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    return ""


class Traffic:
    """Customer mail at a steady rate, from a thread, until stopped."""

    def __init__(self, cluster: Cluster, every: float) -> None:
        self.cluster = cluster
        self.every = every
        self.sent: list[CustomerMail] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sent.append(self.cluster.customer_mail())


def snapshot(cluster: Cluster, node: Node) -> tuple[datetime, tuple[str, ...]]:
    """The mailboxes `node` holds right now, and the time (UTC) it is about to lose them."""
    held = cluster.held().get(node.pid, ())
    assert held, f"{node.name} holds nothing"
    return datetime.now(UTC), held


@pytest.fixture
def cluster(
    tmp_path: Path,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    postgres: Postgres,
    postgres_url: str,
) -> Iterator[Cluster]:
    rig = Cluster(tmp_path, dovecot, smtp_server, postgres, postgres_url)
    try:
        yield rig
    finally:
        rig.close()


def test_three_instances_share_20_mailboxes_through_kill_stop_and_a_database_restart(
    cluster: Cluster, postgres: Postgres
) -> None:
    a, b, c = (cluster.start(name) for name in ("a", "b", "c"))
    cluster.wait_balanced([a, b, c])
    wait_for(cluster.first_polls_done, 60, "every mailbox polled once")
    status = cluster.status()
    for node in (a, b, c):  # every instance, its mailboxes and its last heartbeat
        assert re.search(rf"pid {node.pid} +│ alive +│ \d+ s ago +│ [67]: box", status), status
    takeovers: list[float] = []
    with Traffic(cluster, every=0.4) as traffic:
        wait_for(lambda: len(traffic.sent) >= 15, 30, "traffic flowing")

        since, lost = snapshot(cluster, a)
        a.proc.send_signal(signal.SIGKILL)  # no goodbye: its leases must expire
        a.proc.wait(10)
        takeovers += cluster.worked_again(lost, since).values()
        cluster.wait_balanced([b, c])

        since, lost = snapshot(cluster, b)
        b.proc.send_signal(signal.SIGSTOP)  # paused longer than its lease
        takeovers += cluster.worked_again(lost, since).values()
        paused = (datetime.now(UTC) - since).total_seconds()
        time.sleep(max(0.0, leases.LEASE_SECONDS + 10 - paused))  # a pause, not a wait
        b.proc.send_signal(signal.SIGCONT)  # wakes up fenced off, then takes its share again
        cluster.wait_balanced([b, c])

        since = datetime.now(UTC)
        postgres.restart()
        every = tuple(cluster.mailbox_name(n) for n in range(cluster.boxes))
        takeovers += cluster.worked_again(every, since).values()
        wait_for(lambda: len(traffic.sent) >= 150, 120, "150 customer mails")
    cluster.wait_acknowledged(traffic.sent, timeout=120)

    report = cluster.report(traffic.sent)
    print(f"{report}; takeovers (s): {sorted(round(t, 1) for t in takeovers)}")
    assert report.clean, report
    assert max(takeovers) <= TAKEOVER_BOUND, sorted(takeovers)
    assert a.proc.returncode == -signal.SIGKILL
    assert [b.alive(), c.alive()] == [True, True], (b.tail(), c.tail())
    assert cluster.stop_all()[1:] == [0, 0]  # SIGTERM drains: a clean exit
    assert cluster.held() == {}  # leases handed back, instances gone from `status`
