"""The daemon's poll takes in a surge of live mail one fetch batch at a time (triage and
the drain answer each batch before the next is fetched): nothing lost, nothing twice,
the cursor at the last UID taken in; history and `keepword import` take everything."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from email import message_from_bytes
from email.utils import format_datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from keepword.domain.model import Origin
from keepword.pipeline.ingest import Folder, MailboxPoller, poll_folder
from keepword.runtime import service as service_module
from keepword.runtime.service import OTHER_FOLDERS_WAIT, Service
from keepword.store import outbox
from keepword.store.tables import message
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.smtp import SmtpServer
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


def test_a_surge_of_live_mail_is_taken_in_one_fetch_batch_a_poll(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    session_for: Any,
) -> None:
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(4)])  # history
    box = mailbox_for(dovecot, mail_user, fetch_batch=3)
    poller = MailboxPoller(engine, settings_for(box, engine), box, session_factory=session_for)
    try:
        first = poller.poll(now)
        assert first.folders["INBOX"].new == 4 and not first.more  # history: all at once
        dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(10, 17)])
        taken = []
        for _ in range(3):
            result = poller.poll(now)
            taken.append((result.folders["INBOX"].new, result.more))
        assert taken == [(3, True), (3, True), (1, False)]
        assert poller.poll(now).folders["INBOX"].new == 0
    finally:
        poller.close()
    rows = locations(engine)
    assert len(rows) == count(engine, message) == 11
    assert [row.uid for row in rows] == list(range(1, 12))
    assert cursor(engine).last_uid == 11


def test_import_takes_every_live_mail_in_one_poll(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    session_for: Any,
) -> None:
    box = mailbox_for(dovecot, mail_user, fetch_batch=3)
    session = session_for(box)
    inbox = Folder(engine, box, "INBOX", Origin.INBOX, now)
    assert not poll_folder(session, inbox).more
    dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(7)])
    result = poll_folder(session, inbox)
    assert (result.new, result.more) == (7, False)


def test_a_surge_is_taken_in_before_the_sent_and_done_folders_but_they_wait_30_s_at_most(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    session_for: Any,
) -> None:
    """While the daemon's poll leaves more live mail (a surge), the next poll takes in the
    inbox alone: the acknowledgements it sends come back through Sent, and fetching and
    triaging them slice by slice made the last customer wait (issue 14). A staff reply
    in Sent stops its case's chase, so the other folders wait OTHER_FOLDERS_WAIT at most,
    and are polled again as soon as the surge is in."""
    box = mailbox_for(dovecot, mail_user, fetch_batch=3)
    clock = [now()]
    service = Service(
        settings_for(box, engine), clock=lambda: clock[0], engine=engine,
        session_factory=session_for,
    )  # fmt: skip
    seen: list[dict[str, int]] = []
    ingest = service.ingest

    def recording(box: Any, *, inbox_only: bool = False, first_slice: int | None = None) -> Any:
        result = ingest(box, inbox_only=inbox_only, first_slice=first_slice)
        seen.append({name: polled.new for name, polled in result.folders.items()})
        return result

    service.ingest = recording  # type: ignore[method-assign]

    async def polls(count: int) -> None:
        for _ in range(count):
            await service.poll(box)
            clock[0] += timedelta(seconds=1)

    async def run() -> None:
        try:
            await polls(1)  # the empty folders: nothing is history any more
            dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(7)])
            dovecot.multiappend(mail_user, "Sent", [mail(n) for n in range(20, 22)])
            await polls(2)
            dovecot.multiappend(mail_user, "Sent", [mail(30)])
            await polls(2)
            dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(40, 44)])
            await polls(1)  # one batch of 3 of the 4: a surge again
            clock[0] += OTHER_FOLDERS_WAIT
            dovecot.multiappend(mail_user, "Sent", [mail(50)])
            await polls(1)  # still in it, but the other folders waited long enough
        finally:
            await service.close()

    asyncio.run(run())
    both, inbox = {"INBOX": 0, "Sent": 0, "Done": 0}, {"INBOX": 0}
    assert seen == [
        both,
        {**both, "INBOX": 3, "Sent": 2},  # not yet known to be a surge: every folder
        {**inbox, "INBOX": 3},  # more was left: the inbox alone
        {**inbox, "INBOX": 1},  # the last of it; then the rest waits no more
        {**both, "Sent": 1},
        {**both, "INBOX": 3},
        {**both, "INBOX": 1, "Sent": 1},
    ]


def test_the_first_slice_of_a_surge_is_small_and_the_rest_goes_by_fetch_batch_and_slice(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    session_for: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poll that is not already in a surge takes in and triages FIRST_SLICE of the
    customers' mails at most, so the first acknowledgements leave after a small fetch;
    the team's replies in Sent are not held back by it (each stops a chase). Once in a
    surge, a poll takes a whole fetch batch and triages TRIAGE_SLICE. A poll after the
    surge starts small again."""
    monkeypatch.setattr(service_module, "FIRST_SLICE", 2)
    monkeypatch.setattr(service_module, "TRIAGE_SLICE", 3)
    box = mailbox_for(dovecot, mail_user, fetch_batch=500)
    service = Service(
        settings_for(box, engine), clock=now, engine=engine, session_factory=session_for
    )
    seen: list[tuple[int, int | None, int, bool]] = []
    ingest, triage = service.ingest, service.triage
    taken: list[tuple[int, int | None]] = []

    def recording_ingest(box: Any, **kwargs: Any) -> Any:
        result = ingest(box, **kwargs)
        sent = result.folders.get("Sent")  # not polled while a surge is taken in
        taken.append((result.folders["INBOX"].new, sent.new if sent else None))
        return result

    def recording_triage(box: Any, limit: int = 5000) -> Any:
        result = triage(box, limit)
        seen.append((*taken[-1], result.triaged, result.more))
        return result

    service.ingest = recording_ingest  # type: ignore[method-assign]
    service.triage = recording_triage  # type: ignore[method-assign]

    async def run() -> list[bool]:
        try:
            mores = [await service.poll(box)]  # the empty folders: nothing is history any more
            dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(8)])
            dovecot.multiappend(mail_user, "Sent", [mail(n) for n in range(10, 14)])
            for _ in range(5):
                mores.append(await service.poll(box))
            dovecot.multiappend(mail_user, "INBOX", [mail(n) for n in range(20, 25)])
            mores.append(await service.poll(box))
            return mores
        finally:
            await service.close()

    mores = asyncio.run(run())
    assert seen == [
        (0, 0, 0, False),
        (2, 4, 2, True),  # not in a surge yet: 2 customers' mails, every team reply
        (6, None, 3, True),  # in it: the inbox's fetch batch, slices of 3
        (0, None, 3, True),
        (0, None, 3, True),
        (0, None, 1, False),  # the surge is over
        (2, 0, 2, False),  # the next one starts small again (3 wait on the server)
    ]
    assert mores == [False, True, True, True, True, False, True]
    assert count(engine, message) == 14  # 12, then 2 of the 5: the rest waits for the next poll


def fresh_mail(number: int) -> bytes:
    """A customer's mail written now (an old Date is not acknowledged)."""
    dated = f"Date: {format_datetime(now())}\r\n".encode()
    return re.sub(rb"Date: [^\r]*\r\n", dated, mail(number), count=1)


def test_a_surges_drains_defer_the_sent_copies_and_the_drain_after_it_makes_them(
    dovecot: Dovecot,
    mail_user: str,
    engine: Engine,  # noqa: F811
    session_for: Any,
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's order, poll then drain, through a surge: the drains while the poll
    leaves more send the acknowledgements and leave their Sent copies; the drain after
    the surge's last slice copies every one, once."""
    monkeypatch.setattr(service_module, "FIRST_SLICE", 2)
    monkeypatch.setattr(service_module, "TRIAGE_SLICE", 3)
    box = mailbox_for(dovecot, mail_user, fetch_batch=500).model_copy(
        update={"smtp": smtp_server.settings()}
    )
    service = Service(
        settings_for(box, engine), clock=now, engine=engine, session_factory=session_for
    )
    deferred_after: list[tuple[bool, int]] = []

    def deferred() -> int:
        with engine.connect() as conn:
            return len(outbox.copies_deferred(conn, now(), 100, mailbox=box.name))

    async def run() -> None:
        try:
            await service.poll(box)  # the empty folders: what comes next is live
            dovecot.multiappend(mail_user, "INBOX", [fresh_mail(n) for n in range(8)])
            while True:
                more = await service.poll(box)
                await service.drain_now(box)
                deferred_after.append((more, deferred()))
                if not more:
                    return
        finally:
            await service.close()

    asyncio.run(run())
    assert deferred_after[-1] == (False, 0), deferred_after
    assert any(waiting > 0 for more, waiting in deferred_after if more), deferred_after
    acknowledged = {m.parsed()["To"] for m in smtp_server.messages}
    assert len(acknowledged) == len(smtp_server.messages) == 8  # each customer once
    copies = server_messages(dovecot, mail_user, "Sent").values()
    copied = sorted(message_from_bytes(raw)["Message-ID"] for raw in copies)
    assert copied == sorted(m.parsed()["Message-ID"] for m in smtp_server.messages)  # once each
