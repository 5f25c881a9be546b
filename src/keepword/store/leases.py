"""Mailbox leases on a shared PostgreSQL store: several `keepword run` share the mailboxes.

Each mailbox has one row in `mailbox_lease`: its holder (an instance id), an `epoch`
that grows on every change of holder, and `expires_at`. Every time is the database's
own `now()`, never a keepword machine's clock. Each instance, every RENEW_SECONDS:

1. heartbeats its row in `keepword_instance` (expires LEASE_SECONDS later);
2. renews the leases it holds (`WHERE holder = me`: a lease that expired but was not
   yet taken is renewed, since nobody else can have worked it: the epoch is unchanged);
3. counts the live instances and its fair share, ceil(mailboxes / instances);
4. takes free or expired leases up to its share (epoch + 1; `FOR UPDATE SKIP LOCKED`,
   so two instances never wait on each other), or hands over what it holds beyond it
   (after the mailbox's cycle has finished its job). An instance that joins or leaves
   moves only the shares that change.

Fencing. A holder that lost its lease must not commit anything for that mailbox. The
daemon runs each mailbox's cycle with its Fence (mailbox, holder, epoch) in a context
variable, which asyncio tasks and `asyncio.to_thread` carry along; `install_fencing`
hooks the engine's COMMIT: just before it, the same transaction reads the lease row
`FOR SHARE` and raises LeaseLostError if the holder or epoch changed. The share lock
makes a takeover (an UPDATE of that row) wait until that commit is over, so every
commit of the old holder comes strictly before the new holder's first read. No change
to the pipeline: its per-item transactions are fenced where they commit.

Failure cases (docs/operations.md, "Several instances"):
- A paused process (SIGSTOP, a VM frozen, a long GC): its lease expires, another
  instance takes it (epoch + 1). When it wakes, its in-flight job's next commit fails
  the fence; its next lease round finds the lease gone and ends the cycle. A pause
  inside a transaction holding the share lock is ended by the server
  (`idle_in_transaction_session_timeout`, IDLE_IN_TRANSACTION) so it cannot block the
  takeover. What no database can fence is a mail handed to the SMTP relay by a process
  that was paused between committing the attempt and sending: the new holder finds
  that row's outcome "unknown" and holds it (pipeline.send), looking for the copy in
  the Sent folder before it ever sends again.
- A partition from the database: the instance cannot renew; its cycles stop locally
  once LEASE_SECONDS have passed since the last renewal it sent (monotonic time, so
  before the database lets anyone else take them), and nothing it does meanwhile can
  commit. When the database is back, a lease nobody took is renewed and worked again.
- A clock step: leases use only the database's `now()` for expiry and each instance's
  monotonic clock for its local deadline, so a step of a keepword machine's wall clock
  changes nothing. A step of the database server's clock forward expires every lease at
  once: the holders renew within RENEW_SECONDS and fencing keeps any move safe.
- A restart of PostgreSQL: every connection ends, the rows stay; holders renew when it
  is back (their epoch is unchanged), others take what expired.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, and_, delete, event, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from keepword.errors import StoreError
from keepword.store.tables import keepword_instance, mailbox_lease

# Takeover after a holder dies: at most LEASE_SECONDS + RENEW_SECONDS (+ one round).
LEASE_SECONDS: Final = 15.0
RENEW_SECONDS: Final = 5.0
IDLE_IN_TRANSACTION: Final = 10.0  # the server ends a session paused inside a transaction
TAKE_LOCK_TIMEOUT: Final = "2s"
FORGET_GONE: Final = timedelta(days=1)  # an instance gone this long leaves `status`


class LeaseLostError(StoreError):
    """This instance no longer holds the mailbox's lease: its work must not commit."""


@dataclass(frozen=True)
class Fence:
    mailbox: str
    holder: str
    epoch: int


CURRENT_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar(
    "keepword_fence", default=None
)


@dataclass(frozen=True)
class Instance:
    instance_id: str
    hostname: str
    pid: int

    @classmethod
    def this_process(cls) -> Instance:
        host = socket.gethostname()
        pid = os.getpid()
        return cls(f"{host[:60]}-{pid}-{secrets.token_hex(3)}", host[:255], pid)


def fair_share(mailboxes: int, instances: int) -> int:
    """The most mailboxes one instance holds; shares sum to at least `mailboxes`."""
    return math.ceil(mailboxes / max(instances, 1))


# -- fencing ---------------------------------------------------------------------------

FENCE_CHECK: Final = (
    "SELECT 1 FROM mailbox_lease WHERE mailbox = %s AND holder = %s AND epoch = %s FOR SHARE"
)


def install_fencing(engine: Engine) -> None:
    """Fence every commit made under a Fence; sessions paused in a transaction end."""
    event.listen(engine, "connect", _session_limits)
    event.listen(engine, "commit", _check_fence)
    engine.dispose()  # pooled connections were made before the hook: start afresh


@contextlib.contextmanager
def unfenced() -> Iterator[None]:
    """The lease rows themselves are written outside any mailbox's fence."""
    token = CURRENT_FENCE.set(None)
    try:
        yield
    finally:
        CURRENT_FENCE.reset(token)


def _session_limits(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    millis = int(IDLE_IN_TRANSACTION * 1000)
    cursor.execute(f"SET idle_in_transaction_session_timeout = {millis}")
    cursor.close()
    dbapi_connection.commit()


def _check_fence(conn: Connection) -> None:
    fence = CURRENT_FENCE.get()
    if fence is None:
        return
    # The raw cursor: this runs inside SQLAlchemy's own commit, in the same transaction.
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(FENCE_CHECK, (fence.mailbox, fence.holder, fence.epoch))
        held = cursor.fetchone() is not None
    finally:
        cursor.close()
    if not held:
        raise LeaseLostError(
            f"mailbox {fence.mailbox}: lease epoch {fence.epoch} lost: nothing committed"
        )


# -- the rows ---------------------------------------------------------------------------


def _later(seconds: float) -> Any:
    return func.now() + timedelta(seconds=seconds)


def heartbeat(conn: Connection, instance: Instance, seconds: float, draining: bool) -> None:
    values = {
        "hostname": instance.hostname,
        "pid": instance.pid,
        "heartbeat_at": func.now(),
        "expires_at": _later(seconds),
        "draining": draining,
    }
    stmt = pg_insert(keepword_instance).values(
        instance_id=instance.instance_id, started_at=func.now(), **values
    )
    conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=values))


def ensure_leases(conn: Connection, mailboxes: Iterable[str]) -> None:
    rows = [{"mailbox": name} for name in mailboxes]
    if rows:
        conn.execute(pg_insert(mailbox_lease).values(rows).on_conflict_do_nothing())


def renew(conn: Connection, holder: str, seconds: float) -> dict[str, int]:
    """Extend every lease this instance holds; {mailbox: epoch} of those it still holds."""
    stmt = (
        update(mailbox_lease)
        .where(mailbox_lease.c.holder == holder)
        .values(expires_at=_later(seconds))
        .returning(mailbox_lease.c.mailbox, mailbox_lease.c.epoch)
    )
    return {row.mailbox: int(row.epoch) for row in conn.execute(stmt)}


def live_instances(conn: Connection) -> int:
    query = select(func.count()).where(
        keepword_instance.c.expires_at > func.now(), keepword_instance.c.draining.is_(False)
    )
    return int(conn.execute(query).scalar_one())


def take(
    conn: Connection, holder: str, mailboxes: Sequence[str], count: int, seconds: float
) -> dict[str, int]:
    """Take up to `count` free or expired leases among `mailboxes`; {mailbox: new epoch}."""
    if count <= 0 or not mailboxes:
        return {}
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{TAKE_LOCK_TIMEOUT}'")
    free = (
        select(mailbox_lease.c.mailbox)
        .where(
            mailbox_lease.c.mailbox.in_(mailboxes),
            or_(mailbox_lease.c.holder.is_(None), mailbox_lease.c.expires_at < func.now()),
        )
        .order_by(mailbox_lease.c.holder.is_not(None), mailbox_lease.c.mailbox)
        .limit(count)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    stmt = (
        update(mailbox_lease)
        .where(mailbox_lease.c.mailbox.in_(free))
        .values(
            holder=holder,
            epoch=mailbox_lease.c.epoch + 1,
            acquired_at=func.now(),
            expires_at=_later(seconds),
        )
        .returning(mailbox_lease.c.mailbox, mailbox_lease.c.epoch)
    )
    return {row.mailbox: int(row.epoch) for row in conn.execute(stmt)}


def release(conn: Connection, holder: str, mailboxes: Iterable[str]) -> None:
    """Hand leases back at once (the epoch moves on when someone takes them)."""
    names = list(mailboxes)
    if names:
        conn.execute(
            update(mailbox_lease)
            .where(mailbox_lease.c.holder == holder, mailbox_lease.c.mailbox.in_(names))
            .values(holder=None, expires_at=func.now())
        )


def leave(conn: Connection, holder: str) -> None:
    """A clean stop: every lease back, the instance row gone (others take over at once)."""
    conn.execute(
        update(mailbox_lease)
        .where(mailbox_lease.c.holder == holder)
        .values(holder=None, expires_at=func.now())
    )
    conn.execute(delete(keepword_instance).where(keepword_instance.c.instance_id == holder))


def forget_gone(conn: Connection) -> None:
    conn.execute(
        delete(keepword_instance).where(keepword_instance.c.expires_at < func.now() - FORGET_GONE)
    )


# -- what `keepword status` shows ---------------------------------------------------------


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float  # seconds, on the database's clock
    alive: bool
    draining: bool
    mailboxes: tuple[str, ...]


@dataclass(frozen=True)
class LeaseView:
    instances: list[InstanceView]
    unheld: list[str]  # mailboxes with a lease row but no live holder


def view(conn: Connection) -> LeaseView:
    """Every instance (live or gone), the mailboxes each holds, and the unheld ones."""
    if not conn.dialect.has_table(conn, "keepword_instance"):
        return LeaseView([], [])
    live_lease = and_(mailbox_lease.c.holder.is_not(None), mailbox_lease.c.expires_at > func.now())
    held: dict[str, list[str]] = {}
    unheld: list[str] = []
    for row in conn.execute(
        select(mailbox_lease.c.mailbox, mailbox_lease.c.holder, live_lease.label("live")).order_by(
            mailbox_lease.c.mailbox
        )
    ):
        if row.live:
            held.setdefault(str(row.holder), []).append(row.mailbox)
        else:
            unheld.append(row.mailbox)
    alive = (keepword_instance.c.expires_at > func.now()).label("alive")
    age = func.extract("epoch", func.now() - keepword_instance.c.heartbeat_at).label("age")
    query = select(keepword_instance, alive, age).order_by(
        keepword_instance.c.hostname, keepword_instance.c.pid
    )
    instances = [_instance_view(r, held.get(r.instance_id, [])) for r in conn.execute(query)]
    return LeaseView(instances, unheld)


def _instance_view(r: Any, mailboxes: list[str]) -> InstanceView:
    return InstanceView(
        r.instance_id, r.hostname, r.pid, r.started_at, r.heartbeat_at, float(r.age),
        bool(r.alive), bool(r.draining), tuple(mailboxes),
    )  # fmt: skip


# -- one instance's side ---------------------------------------------------------------------


@dataclass
class Held:
    epoch: int
    valid_until: float  # monotonic: the holder stops before the database lets others take it


@dataclass
class Round:
    """What one lease round changed for this instance."""

    won: dict[str, int] = field(default_factory=dict)  # mailbox -> epoch: start its cycle
    lost: list[str] = field(default_factory=list)  # end its cycle now
    hand_over: list[str] = field(default_factory=list)  # beyond the fair share: end, then release
    instances: int = 0
    share: int = 0


class LeaseKeeper:
    """This instance's leases; `round` runs in a thread every RENEW_SECONDS."""

    def __init__(
        self,
        engine: Engine,
        mailboxes: Iterable[str],
        *,
        instance: Instance | None = None,
        lease_seconds: float = LEASE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.instance = instance or Instance.this_process()
        self.mailboxes = sorted(set(mailboxes))
        self.lease_seconds = lease_seconds
        self._monotonic = monotonic
        self.held: dict[str, Held] = {}
        self.draining = False
        self._left = False
        self._turn = threading.Lock()  # a round still in its thread never follows `leave`

    @property
    def holder(self) -> str:
        return self.instance.instance_id

    def fence(self, mailbox: str) -> Fence | None:
        held = self.held.get(mailbox)
        return Fence(mailbox, self.holder, held.epoch) if held else None

    def valid(self, mailbox: str) -> bool:
        held = self.held.get(mailbox)
        return held is not None and self._monotonic() < held.valid_until

    def expire_local(self) -> list[str]:
        """Leases not renewed in time (the database unreachable): stop working them."""
        now = self._monotonic()
        gone = [name for name, held in self.held.items() if now >= held.valid_until]
        for name in gone:
            del self.held[name]
        return gone

    def round(self, released: Iterable[str] = ()) -> Round:
        """Heartbeat, renew, release `released` (their cycles ended), take up to the share."""
        with self._turn, unfenced():
            if self._left:
                return Round()
            return self._round(released)

    def _round(self, released: Iterable[str]) -> Round:
        released = [name for name in released if self.held.pop(name, None) is not None]
        sent = self._monotonic()
        with self.engine.begin() as conn:
            heartbeat(conn, self.instance, self.lease_seconds, self.draining)
            ensure_leases(conn, self.mailboxes)
            release(conn, self.holder, released)
            mine = renew(conn, self.holder, self.lease_seconds)
            unwanted = [name for name in mine if name not in self.mailboxes]
            release(conn, self.holder, unwanted)  # a mailbox removed from the config
            for name in unwanted:
                del mine[name]
            instances = live_instances(conn)
            share = 0 if self.draining else fair_share(len(self.mailboxes), instances)
            won = take(conn, self.holder, self.mailboxes, share - len(mine), self.lease_seconds)
            forget_gone(conn)
        return self._apply(mine, won, sent, instances, share)

    def _apply(
        self, mine: dict[str, int], won: dict[str, int], sent: float, instances: int, share: int
    ) -> Round:
        result = Round(instances=instances, share=share)
        result.lost = sorted(
            name for name, held in self.held.items() if mine.get(name) != held.epoch
        )
        for name in result.lost:
            del self.held[name]
        readopted = {name: epoch for name, epoch in mine.items() if name not in self.held}
        result.won = {**readopted, **won}
        for name, epoch in {**mine, **won}.items():
            self.held[name] = Held(epoch, sent + self.lease_seconds)
        excess = len(self.held) - share
        if excess > 0:
            result.hand_over = sorted(self.held, reverse=True)[:excess]
        return result

    def drain(self) -> None:
        """Stopping: take nothing new, and let the others know (they count one less)."""
        with self._turn, unfenced():
            self.draining = True
            if not self._left:
                with self.engine.begin() as conn:
                    heartbeat(conn, self.instance, self.lease_seconds, draining=True)

    def leave(self) -> None:
        with self._turn, unfenced():
            self._left = True
            self.held.clear()
            with self.engine.begin() as conn:
                leave(conn, self.holder)
