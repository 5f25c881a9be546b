"""A surge's next batch of live mail is fetched and parsed by a worker process while the
daemon triages the last one (pipeline.prefetch), on the real Dovecot: every mail stored
once and byte for byte as the server holds it, whatever happens to the mailbox or the
worker meanwhile, and no worker process once the surge is over."""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from keepword.pipeline import ingest as ingest_module
from keepword.pipeline.ingest import MailboxPoller
from keepword.pipeline.prefetch import Prefetcher
from keepword.pipeline.send import ImapSentCopy
from keepword.runtime import service as service_module
from keepword.runtime.service import Service
from keepword.store.tables import message
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.installations import customer_mail
from tests.fixtures.smtp import SmtpServer
from tests.fixtures.waiting import wait_until
from tests.integration.test_ingest import (
    count,
    cursor,
    engine,  # noqa: F401 - the fixture
    locations,
    mail,
    mailbox_for,
    now,
    server_messages,
    settings_for,
)

pytestmark = pytest.mark.integration


def no_worker() -> bool:
    """No prefetch worker process is left (active_children also reaps exited ones)."""
    return not multiprocessing.active_children()


def surge_poller(dovecot: Dovecot, user: str, engine: Engine) -> MailboxPoller:  # noqa: F811
    """A poller over real IMAP sessions (as the daemon's) whose history is in: two mails."""
    dovecot.multiappend(user, "INBOX", [mail(n) for n in range(2)])
    box = mailbox_for(dovecot, user, fetch_batch=4)
    poller = MailboxPoller(engine, settings_for(box, engine), box)
    assert poller.poll(now).folders["INBOX"].new == 2
    dovecot.multiappend(user, "INBOX", [mail(n) for n in range(10, 21)])  # 11 at once
    return poller


def polls(poller: MailboxPoller, count: int) -> list[tuple[int, bool]]:
    taken = []
    for _ in range(count):
        result = poller.poll(now)
        taken.append((result.folders["INBOX"].new, result.more))
    return taken


def stored_as_on_the_server(dovecot: Dovecot, user: str, engine: Engine) -> None:  # noqa: F811
    rows = locations(engine)
    assert {row.uid: bytes(row.raw) for row in rows} == server_messages(dovecot, user)
    assert count(engine, message) == len(rows)
    assert cursor(engine).last_uid == max(row.uid for row in rows)


def test_a_surge_is_prefetched_batch_by_batch_and_stored_exactly_once(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
) -> None:
    poller = surge_poller(dovecot, mail_user, engine)
    assert poller.prefetch is not None and not poller.prefetch.running
    try:
        assert polls(poller, 3) == [(4, True), (4, True), (3, False)]
        assert poller.prefetch.taken == 7  # the second and third polls took the worker's
        assert not poller.prefetch.running  # stopped with the surge
        assert wait_until(no_worker, 10)  # its exit is not waited for; it does exit
    finally:
        poller.close()
    stored_as_on_the_server(dovecot, mail_user, engine)
    assert len(locations(engine)) == 13


def test_a_prefetch_of_mail_expunged_meanwhile_is_dropped_and_the_poll_fetches_itself(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
) -> None:
    poller = surge_poller(dovecot, mail_user, engine)
    assert poller.prefetch is not None
    try:
        assert polls(poller, 1) == [(4, True)]  # UIDs 3-6 in; 7-10 asked of the worker
        with dovecot.client(mail_user) as imap:  # a colleague deletes one of them
            imap.select_folder("INBOX")
            imap.delete_messages([8])
            imap.expunge()
        assert polls(poller, 2) == [(4, True), (2, False)]
        # 7-10 were not the UIDs the poll wanted (7, 9, 10, 11): dropped; it asked for
        # 12-13 next, and the last poll took those
        assert poller.prefetch.taken == 2
    finally:
        poller.close()
    stored_as_on_the_server(dovecot, mail_user, engine)
    assert [row.uid for row in locations(engine)] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13]


def test_a_worker_that_dies_costs_no_mail(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    poller = surge_poller(dovecot, mail_user, engine)
    assert poller.prefetch is not None
    try:
        assert polls(poller, 1) == [(4, True)]
        assert poller.prefetch.running
        for worker in multiprocessing.active_children():
            worker.kill()  # the OOM killer, say
            worker.join()
        assert polls(poller, 1) == [(4, True)]  # fetched here instead
        assert "prefetch failed" in caplog.text
        assert polls(poller, 1) == [(3, False)]  # a new worker took the last batch
        assert poller.prefetch.taken == 3
    finally:
        poller.close()
    stored_as_on_the_server(dovecot, mail_user, engine)
    assert wait_until(no_worker, 10)


def test_a_poll_triages_stored_mail_while_the_worker_fetches_and_waits_only_with_none(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's poll in a surge (runtime.service): the worker's first batch is small
    (FIRST_ASK: it is spawned for it); a poll waits for the worker's batch only when no
    stored mail waits for triage; otherwise it triages that and the next poll takes the
    batch. Every mail stored once, none fetched twice, every one triaged."""
    monkeypatch.setattr(service_module, "FIRST_SLICE", 2)
    monkeypatch.setattr(service_module, "TRIAGE_SLICE", 3)
    monkeypatch.setattr(ingest_module, "FIRST_ASK", 4)
    busy = [False]  # what the poll is told of the worker, whatever the worker's state
    monkeypatch.setattr(Prefetcher, "busy", property(lambda self: busy[0]))
    box = mailbox_for(dovecot, mail_user, fetch_batch=6)
    service = Service(settings_for(box, engine), clock=now, engine=engine)
    seen: list[tuple[int | None, int, bool]] = []
    ingest, triage = service.ingest, service.triage
    taken: list[int | None] = []

    def recording_ingest(box: Any, **kwargs: Any) -> Any:
        result = ingest(box, **kwargs)
        taken.append(result.folders["INBOX"].new)
        return result

    def recording_triage(box: Any, limit: int = 5000) -> Any:
        result = triage(box, limit)
        seen.append((taken.pop() if taken else None, result.triaged, result.more))
        return result

    service.ingest = recording_ingest  # type: ignore[method-assign]
    service.triage = recording_triage  # type: ignore[method-assign]

    async def run() -> int:
        try:
            assert not await service.poll(box)  # the empty folders: no history any more
            dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(20)])
            assert await service.poll(box)  # the first slice; the worker asked for 4
            busy[0] = True  # the worker's batch is not ready yet, as far as polls know
            assert await service.poll(box)  # nothing stored to triage: it waits for it
            assert await service.poll(box)  # one stored waits: triaged, the batch left
            busy[0] = False
            while await service.poll(box):
                pass
            prefetch = service._poller(box).prefetch
            assert prefetch is not None and not prefetch.running  # stopped with the surge
            return prefetch.taken
        finally:
            await service.close()

    from_worker = asyncio.run(run())
    assert seen[:5] == [
        (0, 0, False),
        (2, 2, False),  # the first slice
        (4, 3, True),  # the worker's first batch alone (FIRST_ASK), waited for
        (None, 1, False),  # the worker still busy, one stored mail waits: no fetch
        (6, 3, True),  # the worker's batch (a fetch batch now), taken
    ]
    assert sum(t or 0 for t, _, _ in seen) == 20 and sum(n for _, n, _ in seen) == 20
    assert from_worker == 18  # all but the first slice came from the worker
    stored_as_on_the_server(dovecot, mail_user, engine)


def test_a_surges_drains_copy_over_one_sent_connection_let_go_after(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drains of a surge (runtime.service) copy to Sent over one IMAP connection
    (a login a drain was ~14 ms, eleven times in a surge of 2,000); none is kept after
    the surge: an idle daemon holds no connection for it."""
    monkeypatch.setattr(service_module, "FIRST_SLICE", 2)
    monkeypatch.setattr(service_module, "TRIAGE_SLICE", 3)
    box = mailbox_for(dovecot, mail_user, fetch_batch=6)
    box = box.model_copy(update={"smtp": smtp_server.settings()})
    service = Service(settings_for(box, engine), clock=now, engine=engine)
    logins: list[ImapSentCopy] = []
    opened = ImapSentCopy._open

    def counted(self: ImapSentCopy) -> Any:
        if self._session is None:
            logins.append(self)
        return opened(self)

    monkeypatch.setattr(ImapSentCopy, "_open", counted)

    async def run() -> tuple[int, int]:
        try:
            assert not await service.poll(box)  # the empty folders: no history any more
            dated = {"Date": format_datetime(datetime.now(UTC))}  # live mail, not history
            customers = [(f"c{n}@customer.test", f"Order {n}") for n in range(12)]
            surge = [customer_mail(c, box.address, s, **dated) for c, s in customers]
            dovecot.multiappend(mail_user, "INBOX", surge)
            drains = 0
            while await service.poll(box):
                await service.drain(box)
                drains += 1
            await service.drain(box)  # the last slice's
            return drains + 1, len(service._sent_copies)
        finally:
            await service.close()

    drains, kept = asyncio.run(run())
    assert drains >= 4  # slices of 2 and 3: the surge was drained in several drains
    assert len(smtp_server.messages) == 12  # one acknowledgement each
    assert len(dovecot.uids(mail_user, "Sent")) == 12  # each copied once
    assert len(logins) == 1 and kept == 0
