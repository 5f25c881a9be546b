"""The daemon's poll takes in a surge of live mail one fetch batch at a time (triage and
the drain answer each batch before the next is fetched): nothing lost, nothing twice,
the cursor at the last UID taken in; history and `keepword import` take everything."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from keepword.domain.model import Origin
from keepword.pipeline.ingest import Folder, MailboxPoller, poll_folder
from keepword.store.tables import message
from tests.fixtures.dovecot import Dovecot
from tests.integration.test_ingest import (
    count,
    cursor,
    engine,  # noqa: F401 - the fixture
    locations,
    mail,
    mailbox_for,
    now,
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
