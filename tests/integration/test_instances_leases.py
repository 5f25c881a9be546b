"""Mailbox leases and fencing on the real (private) PostgreSQL: keepword.store.leases.

Each LeaseKeeper plays one instance on the same store; a short lease stands for the
shipped one so that an expiry takes a second. Waits are on conditions with deadlines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, select, update

from keepword.store import leases, outbox
from keepword.store.db import open_store
from keepword.store.leases import (
    CURRENT_FENCE,
    LEASE_SECONDS,
    RENEW_SECONDS,
    Fence,
    Instance,
    LeaseKeeper,
    LeaseLostError,
    fair_share,
    install_fencing,
)
from keepword.store.tables import job_run, mailbox_lease

pytestmark = pytest.mark.integration

BOXES = [f"box{n:02d}" for n in range(20)]
RAW = b"Message-ID: <ack-1@support.test>\r\nSubject: Re\r\n\r\nWe got it.\r\n"
SHORT = 1.0  # seconds: the lease in these tests


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = open_store(postgres_url)
    install_fencing(engine)
    yield engine
    engine.dispose()


def keeper(engine: Engine, name: str, boxes: list[str] = BOXES) -> LeaseKeeper:
    return LeaseKeeper(
        engine, boxes, instance=Instance(f"test-{name}", "test", 1), lease_seconds=SHORT
    )


def settle(keepers: list[LeaseKeeper], rounds: int = 4) -> None:
    """Run rounds as the daemons do: what is handed over is released the round after."""
    handing: dict[str, list[str]] = {k.holder: [] for k in keepers}
    for _ in range(rounds):
        for k in keepers:
            result = k.round(handing[k.holder])
            handing[k.holder] = result.hand_over


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def record_job(engine: Engine, mailbox: str, job: str = "poll") -> None:
    with engine.begin() as conn:
        conn.execute(insert(job_run).values(mailbox=mailbox, job=job, interval_seconds=60.0))


def job_rows(engine: Engine, mailbox: str) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(job_run.c.id).where(job_run.c.mailbox == mailbox)).all())


def test_shipped_timings_take_over_within_30_seconds() -> None:
    # The holder's last renewal, then LEASE_SECONDS to expire, then one round of a taker.
    assert LEASE_SECONDS + 2 * RENEW_SECONDS <= 30
    assert fair_share(20, 3) == 7 and fair_share(20, 1) == 20 and fair_share(3, 0) == 3


def test_instances_share_the_mailboxes_and_a_newcomer_moves_only_its_share(
    engine: Engine,
) -> None:
    a = keeper(engine, "a")
    a.round()
    assert len(a.held) == 20  # alone: every mailbox
    b = keeper(engine, "b")
    settle([a, b])
    assert (len(a.held), len(b.held)) == (10, 10)
    before = {**dict.fromkeys(a.held, "a"), **dict.fromkeys(b.held, "b")}
    c = keeper(engine, "c")
    settle([a, b, c])
    sizes = sorted(len(k.held) for k in (a, b, c))
    assert sizes == [6, 7, 7]
    assert not set(a.held) & set(b.held) and not set(b.held) & set(c.held)
    moved = [m for m in c.held if m in before] + [
        m for k, name in ((a, "a"), (b, "b")) for m in k.held if before[m] != name
    ]
    assert len(moved) == len(c.held)  # only what the newcomer needed moved


def test_a_dead_instances_mailboxes_are_taken_when_its_lease_expires(engine: Engine) -> None:
    a, b = keeper(engine, "a"), keeper(engine, "b")
    settle([a, b])
    a_boxes = set(a.held)
    # `a` dies (no more rounds): `b` takes nothing before the expiry, everything after.
    assert b.round().won == {}
    wait_until(lambda: bool(b.round().won) or len(b.held) == 20, timeout=SHORT * 10)
    wait_until(lambda: b.round() is not None and len(b.held) == 20, timeout=SHORT * 10)
    assert a_boxes <= set(b.held)


def test_a_holder_that_lost_its_lease_cannot_commit(engine: Engine) -> None:
    a, b = keeper(engine, "a", ["support"]), keeper(engine, "b", ["support"])
    a.round()
    fence = a.fence("support")
    assert fence is not None
    token = CURRENT_FENCE.set(fence)
    try:
        record_job(engine, "support")  # the holder commits
        # `a` is paused past its lease; `b` takes the mailbox (epoch + 1).
        wait_until(lambda: bool(b.round().won), timeout=SHORT * 10)
        with pytest.raises(LeaseLostError, match="lease epoch 1 lost"):
            record_job(engine, "support", "chase")
    finally:
        CURRENT_FENCE.reset(token)
    assert job_rows(engine, "support") == 1  # the paused holder's write is not there
    assert a.round().lost == ["support"]  # and its next round says so


def test_a_takeover_waits_for_a_commit_in_progress(engine: Engine) -> None:
    """The fence's share lock orders the old holder's last commit before the takeover."""
    a, b = keeper(engine, "a", ["support"]), keeper(engine, "b", ["support"])
    a.round()
    fence = a.fence("support")
    assert fence is not None
    inside, go_on = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def slow_commit() -> None:
        CURRENT_FENCE.set(fence)
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(job_run).values(mailbox="support", job="chase", interval_seconds=1.0)
                )
                # The fence is checked at COMMIT: make it hold the lock a while.
                conn.exec_driver_sql(leases.FENCE_CHECK, ("support", fence.holder, fence.epoch))
                inside.set()
                go_on.wait(10)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    writer = threading.Thread(target=slow_commit)
    writer.start()
    assert inside.wait(10)
    time.sleep(SHORT * 1.5)  # the lease expires while the holder is inside its transaction
    assert b.round().won == {}  # SKIP LOCKED: not taken while the holder is committing
    go_on.set()
    writer.join(10)
    assert not failures
    wait_until(lambda: bool(b.round().won), timeout=SHORT * 10)
    assert job_rows(engine, "support") == 1


def test_a_lease_not_taken_is_renewed_after_an_outage(engine: Engine) -> None:
    a = keeper(engine, "a", ["support"])
    a.round()
    epoch = a.held["support"].epoch
    time.sleep(SHORT * 1.5)  # the database was unreachable: nobody renewed, nobody took
    assert a.expire_local() == ["support"]  # the holder stopped working it locally
    result = a.round()
    assert result.won == {"support": epoch}  # same epoch: nobody else worked it
    assert result.lost == []


def test_leave_hands_every_lease_back_at_once(engine: Engine) -> None:
    a, b = keeper(engine, "a"), keeper(engine, "b")
    settle([a, b])
    a.leave()
    b.round()
    assert len(b.held) == 20  # no wait for an expiry after a clean stop
    with engine.connect() as conn:
        seen = leases.view(conn)
    assert [i.instance_id for i in seen.instances] == ["test-b"]
    assert len(seen.instances[0].mailboxes) == 20 and seen.unheld == []


def test_commits_without_a_fence_are_not_checked(engine: Engine) -> None:
    record_job(engine, "anything")  # the CLI and the daemon's own bookkeeping
    with engine.begin() as conn:
        conn.execute(update(mailbox_lease).values(holder=None))
    assert CURRENT_FENCE.get() is None
    assert Fence("m", "h", 1).epoch == 1


# -- the outbox is claimed, not read ------------------------------------------------------


def test_an_outbox_row_is_claimed_by_one_sender_only(engine: Engine) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for n in (1, 2):
            entry = outbox.OutboxEntry(
                "support", None, "acknowledgement", f"ack:{n}", [f"c{n}@x.test"], "Re",
                RAW.replace(b"ack-1@", f"ack-{n}@".encode()),
            )  # fmt: skip
            outbox.enqueue(conn, entry, now)
        row, other = outbox.pending(conn, now, mailbox="support")
    first, second = engine.connect(), engine.connect()
    try:
        first.begin()
        assert outbox.claim_attempts(first, [row]) == {row.id: 1}  # locked until committed
        second.begin()
        # passed by, not waited for; the other row of the same claim is taken
        assert outbox.claim_attempts(second, [row, other]) == {other.id: 1}
        second.rollback()
        first.commit()
        with second.begin():
            assert outbox.claim_attempts(second, [row]) == {}  # read before the claim: stale
            fresh = outbox.pending(second, now, mailbox="support")[0]
            assert outbox.claim_attempts(second, [fresh]) == {row.id: 2}  # a fresh read may
            outbox.release_claims(second, [fresh])  # claimed, never sent: back as read
            assert outbox.pending(second, now, mailbox="support")[0] == fresh
    finally:
        first.close()
        second.close()


def test_a_draining_instance_takes_nothing_and_keeps_its_leases_until_it_leaves(
    engine: Engine,
) -> None:
    a, b = keeper(engine, "a"), keeper(engine, "b")
    settle([a, b])
    a.drain()
    with engine.connect() as conn:
        seen = {i.instance_id: i.draining for i in leases.view(conn).instances}
        assert seen == {"test-a": True, "test-b": False}
        assert leases.live_instances(conn) == 1
    assert b.round().won == {}  # a's jobs in flight still hold their leases
    assert a.round().won == {} and len(a.held) == 10
    a.leave()
    assert len(b.round().won) == 10
