"""A bounce about keepword's customer mail: the address it says failed for good is
recorded as refused (domain.reachability), as a refusal at the relay is (`record`
serves both).

Called by triage for automatic mail in the message's own transaction; only mail whose
headers look like a delivery failure (`classify.may_be_bounce`) has its raw read. The
bounce itself is handled as before: never answered, joined to its case when threading
finds it, else left without one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import Connection

from keepword.domain.cases import Event, EventKind
from keepword.domain.classify import may_be_bounce
from keepword.domain.model import MessageFacts
from keepword.domain.reachability import Refusal, bounce_about_the_address
from keepword.mail.bounces import Bounce, read_bounce
from keepword.mail.compose import CUSTOMER_KINDS
from keepword.pipeline.context import MailboxContext
from keepword.store import outbox as outbox_store
from keepword.store.cases import add_events
from keepword.store.messages import raw_message
from keepword.store.refusals import record_refusals

log = logging.getLogger(__name__)


def note_bounce(conn: Connection, desk: MailboxContext, facts: MessageFacts) -> list[Refusal]:
    """Record the refusals a bounce reports about our customer mail; the new ones."""
    if not may_be_bounce(facts):
        return []
    raw = raw_message(conn, facts.pk)
    bounce = read_bounce(raw) if raw else None
    if bounce is None or not bounce_about_the_address(bounce.summary):
        return []
    recorded = record(conn, desk.box.name, _refusals(conn, desk, bounce))
    for refusal in recorded:
        if refusal.case_id is not None:
            detail = f"{refusal.what} to {refusal.address} bounced: {bounce.summary}"
            event = Event(EventKind.DELIVERY_FAILED, desk.now, None, detail, facts.pk)
            add_events(conn, refusal.case_id, [event])
    return recorded


def record(conn: Connection, mailbox: str, refusals: Iterable[Refusal]) -> list[Refusal]:
    """Record refusals, the relay's (pipeline.send) or a bounce's, and log each new one;
    the new ones."""
    recorded = record_refusals(conn, mailbox, refusals)
    for refusal in recorded:
        log.warning(
            "mailbox %s: %s; no more automatic mail to it until it writes again",
            mailbox,
            refusal.describe(),
        )
    return recorded


def _refusals(conn: Connection, desk: MailboxContext, bounce: Bounce) -> list[Refusal]:
    """A failed address counts only for customer mail of ours the report names that
    went to that address: a bounce cannot make keepword stop writing to anyone else."""
    reply = f"bounced: {bounce.summary}"
    return [
        Refusal(mail.id, address, mail.kind, reply, desk.now, mail.case_id)
        for mail in outbox_store.mails_named(conn, desk.box.name, bounce.about)
        if mail.kind in CUSTOMER_KINDS  # a StrEnum member equals its value
        for address in sorted(bounce.failed)
        if address in mail.recipients
    ]
