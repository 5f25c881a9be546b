"""The soak driver: runs the real `keepword run` against Dovecot and the relay on a plan.

One loop in the test process paces the plan on the shared sped-up clock: it APPENDs
the traffic into the shared mailbox, makes the robots answer what the relay accepted,
applies and heals the faults, calls the CLI, supervises the daemon (restarts it when
it dies, as systemd's Restart= would, except while a planned kill keeps it down) and
samples the `job_run` table. Everything it did is kept in a `SoakRecord` for the
invariants (tests/soak/invariants.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.exc import SQLAlchemyError

from keepword.clock import SPEED_ENV, SpedUpClock
from keepword.store.tables import case, folder_state, job_run, message
from tests.fixtures.dovecot import Dovecot
from tests.soak import traffic
from tests.soak.relay import RELAY_PASSWORD, RELAY_USER, FaultyRelay, RelayedMail
from tests.soak.traffic import Customer, Event, Fault, Plan

REPO = Path(__file__).resolve().parents[2]
TICK = 0.05  # real seconds between two looks at the world
RESTART_DELAY = 0.3  # real seconds, systemd's RestartSec for a daemon that died by itself
INSTALL = 8.0  # real seconds between the daemon's start and the plan's first minute
SETTLE = timedelta(hours=3)  # virtual time after the last business day: faults healed
CUSTOMER_KINDS = ("acknowledgement", "follow_up_note", "customer_update")
RELAY_FAULTS = ("tempfail", "outage", "slow")


@dataclass
class Appended:
    message_id: str
    kind: str  # customer, follow_up, staff_sent, staff_cc, away, bounce, ticket, list
    folder: str
    at: datetime  # virtual time the mail was written (its Date)
    appended_at: datetime | None = None  # virtual time it reached Dovecot
    customer: Customer | None = None


@dataclass
class DaemonLife:
    started_at: datetime
    ended_at: datetime | None = None
    how: str = "running"  # killed, exited N, stopped


@dataclass
class JobSample:
    at: datetime
    alive_since: datetime | None  # virtual start of the daemon running at the sample
    jobs: tuple[tuple[str, float, datetime | None], ...]  # (job, interval, started_at)
    # job -> finished_at of its last run: a gap with a run still going is keepword's own
    # slowness, a gap after a finished run is a scheduler (or a machine) that did not fire.
    finished: dict[str, datetime | None] = field(default_factory=dict)


@dataclass
class HarnessStall:
    """One turn of the harness's loop that took longer than it should (real seconds): while
    it ran, nothing was sampled, appended or answered; `step` is the slowest part."""

    at: datetime
    seconds: float
    step: str


@dataclass
class FaultWindow:
    kind: str
    start: datetime
    end: datetime | None = None


@dataclass
class CliCall:
    at: datetime
    args: tuple[str, ...]
    returncode: int | None = None
    output: str = ""


@dataclass
class SoakRecord:
    plan: Plan
    speed: float
    appended: list[Appended] = field(default_factory=list)
    lives: list[DaemonLife] = field(default_factory=list)
    samples: list[JobSample] = field(default_factory=list)
    faults: list[FaultWindow] = field(default_factory=list)
    cli: list[CliCall] = field(default_factory=list)
    relayed: list[RelayedMail] = field(default_factory=list)
    relay_answers: dict[str, int] = field(default_factory=dict)
    robots: dict[str, int] = field(default_factory=dict)
    stalls: list[HarnessStall] = field(default_factory=list)
    finished_at: datetime | None = None
    database: Path | None = None  # the SQLite store, or None on PostgreSQL
    log: Path | None = None
    database_url: str | None = None  # PostgreSQL: the store's URL


def store_engine(record: SoakRecord) -> Engine:
    """A read-only engine on the store the run's daemon wrote (SQLite or PostgreSQL)."""
    url = getattr(record, "database_url", None)  # records pickled before PostgreSQL soaks
    return read_only_store(url, record.database)


class Soak:
    def __init__(
        self,
        dovecot: Dovecot,
        workdir: Path,
        plan: Plan,
        *,
        speed: float,
        user: str,
        database_url: str | None = None,
    ) -> None:
        self.dovecot = dovecot
        self.workdir = workdir
        self.database_url = database_url  # None: SQLite in the state directory
        self.plan = plan
        self.user = user
        self.rng = random.Random(plan.seed + 1)
        # The plan's start lies INSTALL real seconds ahead: the daemon is installed and
        # makes first contact with the (empty) mailbox before the first mail, as in life;
        # mail already there at first contact would be history, never answered.
        self.clock = SpedUpClock(speed, plan.start, time.time() + INSTALL)
        self.relay = FaultyRelay(self.clock)
        self.record = SoakRecord(plan, speed)
        self.state = workdir / "state"
        self.config = workdir / "keepword.toml"
        self.imap_password = workdir / "imap.password"
        self.log = workdir / "daemon.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._held_down = 0
        self._died_at: float | None = None
        self._imap: IMAPClient | None = None
        self._pending: deque[tuple[Appended, bytes, tuple[str, ...]]] = deque()
        self._seen_relayed = 0
        self._numbers = iter(range(1, 10**9))
        self._threads: dict[int, tuple[str, str]] = {}  # customer -> (message-id, subject)
        self._cli: list[tuple[CliCall, subprocess.Popen[bytes]]] = []
        self._relay_faults: list[str] = []
        self._engine: Engine | None = None

    # -- set-up ----------------------------------------------------------------------

    def _write_config(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.imap_password.write_text(self.dovecot.users[self.user] + "\n")
        smtp_password = self.workdir / "smtp.password"
        smtp_password.write_text(RELAY_PASSWORD + "\n")
        for secret in (self.imap_password, smtp_password):
            secret.chmod(0o600)
        team = ", ".join(f'"{a}"' for a in traffic.TEAM)
        self.config.write_text(
            f"""[keepword]
state_dir = "{self.state}"
timezone = "{traffic.ZONE}"
{self._database_line()}

[[mailbox]]
name = "support"
address = "{self.user}"
team = [{team}]
lead = "{traffic.LEAD}"

[mailbox.trust]
trusted_authserv_ids = ["{traffic.TEAM_MX}"]

[mailbox.imap]
host = "{self.dovecot.host}"
port = {self.dovecot.imap_port}
tls = "plain"
username = "{self.user}"
password_file = "{self.imap_password}"

[mailbox.smtp]
host = "{self.relay.host}"
port = {self.relay.port}
tls = "plain"
username = "{RELAY_USER}"
password_file = "{smtp_password}"

[mailbox.calendar]
country = "{traffic.COUNTRY}"
"""
        )

    def _database_line(self) -> str:
        return "" if self.database_url is None else f'database_url = "{self.database_url}"'

    def _env(self) -> dict[str, str]:
        path = os.pathsep.join([str(REPO / "src"), str(REPO)])
        return {**os.environ, "PYTHONPATH": path, SPEED_ENV: self.clock.encode()}

    # -- the daemon --------------------------------------------------------------------

    def _start_daemon(self) -> None:
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "keepword", "--config", str(self.config), "run"],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.record.lives.append(DaemonLife(self.clock.now()))

    def _end_life(self, how: str) -> None:
        if self.record.lives and self.record.lives[-1].ended_at is None:
            self.record.lives[-1].ended_at = self.clock.now()
            self.record.lives[-1].how = how

    def _kill_daemon(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            self._end_life("killed")
        self._process = None

    def _supervise(self) -> None:
        process = self._process
        if process is not None and process.poll() is not None:
            self._end_life(f"exited {process.returncode}")
            self._process = None
            self._died_at = time.time()
        if self._process is not None or self._held_down:
            return
        if self._died_at is None or time.time() - self._died_at >= RESTART_DELAY:
            self._died_at = None
            self._start_daemon()

    def _stop_daemon(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
            self._end_life(f"stopped {process.returncode}")
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            self._end_life("stuck at stop, killed")

    def _await_first_contact(self) -> None:
        """Wait (real time) for the first successful poll, then for the plan's start."""
        while not self._first_poll_done():
            if time.time() > self.clock.real_anchor:
                raise RuntimeError(
                    f"harness: the daemon made no first contact within {INSTALL} s; see {self.log}"
                )
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"harness: the daemon exited at start; see {self.log}")
            time.sleep(TICK)
        while time.time() < self.clock.real_anchor:
            time.sleep(TICK)

    def _first_poll_done(self) -> bool:
        engine = self.engine()
        if engine is None:
            return False
        query = select(folder_state.c.last_success_at).where(folder_state.c.folder == "INBOX")
        try:
            with engine.connect() as conn:
                return conn.execute(query).scalar() is not None
        except SQLAlchemyError:
            return False

    def alive_since(self) -> datetime | None:
        if self._process is None or self._process.poll() is not None:
            return None
        return self.record.lives[-1].started_at

    # -- the store (read-only) ---------------------------------------------------------

    @property
    def database(self) -> Path:
        return self.state / "keepword.db"

    def engine(self) -> Engine | None:
        if self._engine is None and (self.database_url or self.database.exists()):
            self._engine = read_only_store(self.database_url, self.database)
        return self._engine

    def _case_of(self, message_id: str) -> str | None:
        engine = self.engine()
        if engine is None:
            return None
        query = (
            select(case.c.reference)
            .select_from(message.join(case, message.c.case_id == case.c.id))
            .where(message.c.message_id == message_id)
        )
        try:
            with engine.connect() as conn:
                return conn.execute(query).scalar()
        except SQLAlchemyError:
            return None

    def _sample(self) -> None:
        engine = self.engine()
        if engine is None:
            return
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(
                        job_run.c.job,
                        job_run.c.interval_seconds,
                        job_run.c.started_at,
                        job_run.c.finished_at,
                    )
                ).all()
        except SQLAlchemyError:
            return  # not migrated yet, or locked for a moment
        jobs = tuple((str(r.job), float(r.interval_seconds), r.started_at) for r in rows)
        finished = {str(r.job): r.finished_at for r in rows}
        self.record.samples.append(JobSample(self.clock.now(), self.alive_since(), jobs, finished))

    # -- mail into Dovecot -------------------------------------------------------------

    def _message_id(self, domain: str) -> str:
        return f"soak.{self.plan.seed}.{next(self._numbers)}@{domain}"

    def _append(self, item: Appended, raw: bytes, flags: tuple[str, ...] = ()) -> None:
        self.record.appended.append(item)
        self._pending.append((item, raw, flags))
        self._flush()

    def _flush(self) -> None:
        """APPEND what waits; while Dovecot is down the mail queues, as at a real MTA."""
        while self._pending:
            item, raw, flags = self._pending[0]
            try:
                imap = self._imap or self._connect()
                imap.append(item.folder, raw, flags=flags, msg_time=item.at)
            except Exception:
                self._drop_imap()
                return
            item.appended_at = self.clock.now()
            self._pending.popleft()

    def _connect(self) -> IMAPClient:
        imap = IMAPClient(self.dovecot.host, self.dovecot.imap_port, ssl=False, timeout=5)
        imap.login(self.user, self.dovecot.users[self.user])
        self._imap = imap
        return imap

    def _drop_imap(self) -> None:
        imap, self._imap = self._imap, None
        if imap is not None:
            with contextlib.suppress(Exception):
                imap.logout()

    # -- the plan ----------------------------------------------------------------------

    def _perform(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event.kind}")
        handler(event)

    def _on_customer(self, event: Event) -> None:
        customer = event.customer
        assert customer is not None
        mid = self._message_id("customers.example.org")
        raw = traffic.customer_mail(customer, event.at, mid, dated=bool(event.detail["dated"]))
        subject = f"Order {1000 + customer.number}: question number {customer.number}"
        self._threads[customer.number] = (mid, subject)
        self._append(Appended(mid, "customer", "INBOX", event.at, customer=customer), raw)

    def _parent(self, customer: Customer) -> tuple[str, str] | None:
        """What a reply answers: keepword's acknowledgement if it came, else the mail."""
        thread = self._threads.get(customer.number)
        if thread is None:
            return None
        for mail in self.relay.accepted:
            if mail.kind == "acknowledgement" and customer.address in mail.rcpt_tos:
                return mail.message_id, mail.subject
        return thread

    def _on_follow_up(self, event: Event) -> None:
        customer = event.customer
        assert customer is not None
        parent = self._parent(customer)
        if parent is None:
            return
        mid = self._message_id("customers.example.org")
        raw = traffic.follow_up_mail(customer, event.at, mid, *parent)
        self._append(Appended(mid, "follow_up", "INBOX", event.at, customer=customer), raw)

    def _on_staff_reply(self, event: Event) -> None:
        customer = event.customer
        assert customer is not None
        parent = self._parent(customer)
        if parent is None:
            return
        staff = self.rng.choice(traffic.TEAM)
        mid = self._message_id("example.com")
        via_cc = event.detail["via"] == "cc"
        raw = traffic.staff_mail(staff, customer, event.at, mid, *parent, cc_support=via_cc)
        kind, folder = ("staff_cc", "INBOX") if via_cc else ("staff_sent", "Sent")
        flags = () if via_cc else ("\\Seen",)
        self._append(Appended(mid, kind, folder, event.at, customer=customer), raw, flags)

    def _on_assign(self, event: Event) -> None:
        self._cli_on_case(event, "assign", self.rng.choice(traffic.TEAM))

    def _on_close(self, event: Event) -> None:
        self._cli_on_case(event, "close")

    def _cli_on_case(self, event: Event, command: str, *extra: str) -> None:
        assert event.customer is not None
        thread = self._threads.get(event.customer.number)
        reference = self._case_of(thread[0]) if thread else None
        if reference is None:
            self.record.robots[f"{command} skipped (no case yet)"] = (
                self.record.robots.get(f"{command} skipped (no case yet)", 0) + 1
            )
            return
        args = ("--config", str(self.config), command, reference, *extra)
        call = CliCall(self.clock.now(), args)
        process = subprocess.Popen(
            [sys.executable, "-m", "keepword", *args],
            env=self._env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._cli.append((call, process))
        self.record.cli.append(call)

    def _reap_cli(self) -> None:
        for call, process in list(self._cli):
            if process.poll() is not None:
                call.returncode = process.returncode
                call.output = (process.stdout.read() if process.stdout else b"").decode()[-500:]
                self._cli.remove((call, process))

    def _on_list(self, event: Event) -> None:
        mid = self._message_id("lists.example.net")
        raw = traffic.list_mail(event.at, mid, next(self._numbers))
        self._append(Appended(mid, "list", "INBOX", event.at), raw)

    def _on_ticket(self, event: Event) -> None:
        self._ticket(event.at)

    def _ticket(self, at: datetime) -> None:
        mid = self._message_id("vendor.example.net")
        self._append(
            Appended(mid, "ticket", "INBOX", at),
            traffic.ticket_mail(at, mid, 4000 + next(self._numbers)),
        )
        self._count("ticket system mail")

    # -- robots on the other side ------------------------------------------------------

    def _count(self, what: str) -> None:
        self.record.robots[what] = self.record.robots.get(what, 0) + 1

    def _answer_relayed(self) -> None:
        accepted = self.relay.accepted
        fresh, self._seen_relayed = accepted[self._seen_relayed :], len(accepted)
        customers = {c.address: c for c in self.plan.customers}
        for mail in fresh:
            for rcpt in mail.rcpt_tos:
                if rcpt == traffic.TICKETS:
                    self._ticket(mail.at)
                customer = customers.get(rcpt)
                if customer is None:
                    continue
                if customer.kind == "away" and mail.kind in CUSTOMER_KINDS:
                    mid = self._message_id("customers.example.org")
                    raw = traffic.out_of_office_mail(
                        customer, mail.at, mid, mail.message_id, mail.subject
                    )
                    self._append(Appended(mid, "away", "INBOX", mail.at, customer=customer), raw)
                    self._count("out-of-office reply")
                elif customer.kind == "bouncing":
                    mid = self._message_id(f"mx.{traffic.BOUNCE_DOMAIN}")
                    raw = traffic.bounce_mail(mail.at, mid, rcpt, mail.raw)
                    self._append(Appended(mid, "bounce", "INBOX", mail.at, customer=customer), raw)
                    self._count("bounce")

    # -- faults ------------------------------------------------------------------------

    def _fault_actions(self) -> deque[tuple[datetime, str, Fault]]:
        actions: list[tuple[datetime, str, Fault]] = []
        for fault in self.plan.faults:
            actions += [(fault.start, "begin", fault), (fault.end, "end", fault)]
        return deque(sorted(actions, key=lambda a: a[0]))

    def _fault(self, what: str, fault: Fault) -> None:
        if what == "begin":
            self.record.faults.append(FaultWindow(fault.kind, self.clock.now()))
        getattr(self, f"_{what}_{fault.kind}")()
        if what == "end":
            for window in self.record.faults:
                if window.kind == fault.kind and window.end is None:
                    window.end = self.clock.now()
                    break

    def _begin_kill(self) -> None:
        self._held_down += 1
        self._kill_daemon()

    def _end_kill(self) -> None:
        self._held_down -= 1

    def _begin_dovecot(self) -> None:
        self._drop_imap()
        self.dovecot.stop()

    def _end_dovecot(self) -> None:
        self.dovecot.start()

    def _relay_mode(self) -> None:
        self.relay.set_mode(self._relay_faults[-1] if self._relay_faults else "normal")

    def _begin_relay(self, kind: str) -> None:
        self._relay_faults.append(kind)
        self._relay_mode()

    def _end_relay(self, kind: str) -> None:
        self._relay_faults.remove(kind)
        self._relay_mode()

    def _begin_tempfail(self) -> None:
        self._begin_relay("tempfail")

    def _end_tempfail(self) -> None:
        self._end_relay("tempfail")

    def _begin_outage(self) -> None:
        self._begin_relay("outage")

    def _end_outage(self) -> None:
        self._end_relay("outage")

    def _begin_slow(self) -> None:
        self._begin_relay("slow")

    def _end_slow(self) -> None:
        self._end_relay("slow")

    def _begin_credential(self) -> None:
        # The password file goes away and the daemon starts again without it (a
        # restart during a botched secret rotation): the supervisor restarts it at once.
        self.imap_password.rename(self.imap_password.with_suffix(".away"))
        self._kill_daemon()

    def _end_credential(self) -> None:
        self.imap_password.with_suffix(".away").rename(self.imap_password)

    # -- the run -----------------------------------------------------------------------

    def _perform_due(
        self,
        now: datetime,
        events: deque[Event],
        actions: deque[tuple[datetime, str, Fault]],
    ) -> None:
        while events and events[0].at <= now:
            self._perform(events.popleft())
        while actions and actions[0][0] <= now:
            _, what, fault = actions.popleft()
            self._fault(what, fault)

    def run(self, progress: Any = None) -> SoakRecord:
        self._write_config()
        for customer in self.plan.customers:
            if customer.kind == "gone":
                self.relay.refuse(customer.address)
        self.relay.start()
        events = deque(self.plan.events)
        actions = self._fault_actions()
        finish = self.plan.end + SETTLE
        self._start_daemon()
        self._await_first_contact()
        try:
            while (now := self.clock.now()) < finish:
                turn = _Turn(now)
                turn.timed("events and faults", lambda: self._perform_due(now, events, actions))
                turn.timed("relay answers", self._answer_relayed)
                turn.timed("appends to Dovecot", self._flush)
                turn.timed("daemon supervision", self._supervise)
                turn.timed("CLI reaping", self._reap_cli)
                turn.timed("job sample", self._sample)
                if (stall := turn.stall()) is not None:
                    self.record.stalls.append(stall)
                if progress is not None:
                    progress(now)
                time.sleep(TICK)
        finally:
            self._stop_daemon()
            self.relay.set_mode("normal")
            if not self.dovecot.is_running():
                self.dovecot.start()
            self._drop_imap()
            for _, process in self._cli:
                process.wait(timeout=30)
            self._reap_cli()
            self.relay.stop()
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
        self.record.finished_at = self.clock.now()
        self.record.relayed = self.relay.accepted
        self.record.relay_answers = self.relay.answers
        self.record.database = self.database if self.database_url is None else None
        self.record.database_url = self.database_url
        self.record.log = self.log
        return self.record


class _Turn:
    """Times the steps of one turn of the harness's loop, to name what held it up."""

    SLOW = 0.5  # real seconds: a turn normally takes a few milliseconds

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.steps: dict[str, float] = {}

    def timed(self, step: str, action: Callable[[], None]) -> None:
        began = time.monotonic()
        try:
            action()
        finally:
            self.steps[step] = time.monotonic() - began

    def stall(self) -> HarnessStall | None:
        total = sum(self.steps.values())
        if total < self.SLOW:
            return None
        slowest = max(self.steps, key=lambda step: self.steps[step])
        return HarnessStall(self.at, round(total, 2), slowest)


def read_only_store(database_url: str | None, path: Path | None) -> Engine:
    """PostgreSQL at `database_url` in read-only transactions (connections checked after a
    server restart), else the SQLite file at `path` opened read-only."""
    if database_url is not None:
        options = {"postgresql_readonly": True}
        return create_engine(database_url, pool_pre_ping=True, execution_options=options)
    assert path is not None, "the daemon made no store"
    return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
