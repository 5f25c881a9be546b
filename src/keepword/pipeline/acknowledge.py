"""Turning an acknowledgement decision into a promise and a queued mail (one transaction).

The window comes from the mailbox's own stored history (imported history included), so
the first promise after installation is already measured; the inputs are recorded on
the promise so it can be explained later (`keepword case KW-42`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection

from keepword.domain import acknowledge, cases
from keepword.domain.model import (
    MessageFacts,
    OutboxKind,
    PromiseAudience,
    PromiseKind,
)
from keepword.domain.outbox_keys import ack_key, lead_alert_key, note_key
from keepword.domain.promises import make_promise
from keepword.domain.trust import customer_recipient
from keepword.domain.windows import Window
from keepword.mail.compose import About, Answering, customer_mail, team_mail
from keepword.mail.render import (
    AcknowledgementContext,
    FollowUpNoteContext,
    LeadAlertContext,
    acknowledgement_context,
    customer_due,
    window_duration_text,
)
from keepword.pipeline.context import MailboxContext
from keepword.pipeline.context import calendar_for as calendar_for  # cli.stats reads it here
from keepword.store import cases as case_store
from keepword.store import outbox as outbox_store
from keepword.store import promises as promise_store
from keepword.timefmt import moment

log = logging.getLogger(__name__)


def acknowledge_case(
    conn: Connection,
    desk: MailboxContext,
    case: cases.CaseState,
    facts: MessageFacts,
    decision: acknowledge.Decision,
    new_case: bool = False,
) -> None:
    """Queue the acknowledgement or follow-up note `decision` earned, with its promise
    and case events; called by triage inside the message's transaction (`new_case`: the
    message opened the case, so nothing of it can be queued yet)."""
    assert case.id is not None and decision.send is not None
    box, now = desk.box, desk.now
    first = decision.send is OutboxKind.ACKNOWLEDGEMENT
    # The first answer goes where the opening mail asked (Reply-To: web forms); every
    # later one to the case's customer of record only, never to the Reply-To of a mail
    # that may have forged the customer's From (domain.trust.customer_recipient).
    recipient = acknowledge.reply_address(facts) if first else customer_recipient(case.customer, ())
    if recipient is None:
        return
    slot = decision.slot.at if decision.slot is not None else now
    # A follow-up note repeats the time already promised; only without one is the
    # (costly) measured window computed.
    current = None if first else _current_due(conn, desk, case.id)
    window = current or _from(desk, slot, desk.honest_window(conn, exclude_case=case.id))
    if first:
        dedup = ack_key(case.id)
        body = desk.renderer.render(
            "acknowledgement", box.language, _ack(desk, case, facts, window)
        )
    else:
        dedup = note_key(case.id, now)
        body = desk.renderer.render(
            "follow_up_note", box.language, _note(desk, case, facts, window)
        )
    mail = customer_mail(
        box,
        decision.send,
        dedup_key=dedup,
        about=About(case.reference, case.subject or facts.subject),
        now=now,
        answering=Answering(recipient, facts.message_id, facts.references),
    )
    entry = outbox_store.mail_entry(
        conn, mail, body, mailbox=box.name, case_id=case.id,
        not_before=slot if decision.held else None,
    )  # fmt: skip
    # A new case's acknowledgement is written at the batch's end (store.deferred).
    queued = outbox_store.enqueue(conn, entry, mail.date, fresh=first and new_case)
    if not queued:
        return
    desk.note_planned(recipient, slot)  # the limits count it for the rest of the run
    if first:
        record_promise(conn, case.id, PromiseKind.FIRST_RESPONSE, window, now)
    kind = cases.EventKind.ACKNOWLEDGEMENT if first else cases.EventKind.FOLLOW_UP_NOTE
    zone = desk.calendar.zone
    detail = f"{decision.reason}: told {recipient} a reply is due by {moment(window.due_at, zone)}"
    events = [cases.Event(kind, now, box.address, detail, facts.pk)]
    if decision.held:
        what = "acknowledgement" if first else "follow-up note"
        held = f"{what} deferred until {moment(slot, zone)}: {decision.held}"
        events.append(cases.Event(cases.EventKind.DEFERRED, now, None, held, facts.pk))
        log.info("mailbox %s: %s %s", box.name, case.reference, held)
    case_store.add_events(conn, case.id, events)
    if first:
        _alert_if_behind(conn, desk, case, window)


def _from(desk: MailboxContext, slot: datetime, window: Window) -> Window:
    """The window counted from when the customer is told (a rate limit may hold the
    acknowledgement back): the promise is as long as measured, from the slot."""
    if slot <= desk.now:
        return window
    return replace(window, due_at=desk.calendar.add(slot, window.minutes))


def _current_due(conn: Connection, desk: MailboxContext, case_id: int) -> Window | None:
    """The earliest open customer promise of the case, as a window (None: none open)."""
    told = [p for p in promise_store.open_promises(conn, case_id) if p.to_customer]
    if not told:
        return None
    first = min(told, key=lambda p: (p.due_at, p.id or 0))  # ties: the older promise
    minutes = int(desk.calendar.minutes_between(first.made_at, first.due_at))
    return Window(minutes=minutes, due_at=first.due_at, is_default=False, behind=False)


def _ack(
    desk: MailboxContext, case: cases.CaseState, facts: MessageFacts, window: Window
) -> AcknowledgementContext:
    return acknowledgement_context(
        window,
        desk.calendar,
        facts,
        reference=case.reference,
        team_name=desk.box.display_name or desk.box.address,
        language=desk.box.language,
    )


def _note(
    desk: MailboxContext, case: cases.CaseState, facts: MessageFacts, window: Window
) -> FollowUpNoteContext:
    zone = desk.calendar.zone
    return FollowUpNoteContext(
        reference=case.reference,
        customer_name=_name(facts),
        subject=facts.subject,
        due_local=window.due_at.astimezone(zone),
        due_customer=customer_due(window.due_at, zone, facts.date_offset_minutes),
        team_name=desk.box.display_name or desk.box.address,
    )


def _alert_if_behind(
    conn: Connection, desk: MailboxContext, case: cases.CaseState, window: Window
) -> None:
    """One "we are behind" alert per episode (not per case: a surge would send the lead
    one per customer). An episode starts with a promise above the maximum and ends with
    one back under it; it is keyed by the last promise within the maximum before it,
    read from the store once a run and then followed from the run's own promises."""
    if not window.behind:
        desk.behind_after = None
        return
    if desk.behind_after is None:
        desk.behind_after = promise_store.last_within_maximum(conn, desk.box.name)
    key = lead_alert_key(desk.box.name, desk.behind_after)
    if key != desk.lead_alerted:
        _alert_lead(conn, desk, case, window, key)
        desk.lead_alerted = key


def _alert_lead(
    conn: Connection, desk: MailboxContext, case: cases.CaseState, window: Window, key: str
) -> None:
    assert case.id is not None
    box = desk.box
    to = [box.lead] if box.lead else sorted(box.team_addresses() - {box.address})
    if not to:
        return
    ahead = window.basis.get("cases_ahead", 0)
    context = LeadAlertContext(
        reference=case.reference,
        customer=case.customer or "",
        subject=case.subject,
        window_text=window_duration_text(window.minutes, "en"),
        maximum_text=window_duration_text(box.promise.maximum_window_minutes, "en"),
        due_local=window.due_at.astimezone(desk.calendar.zone),
        explanation=window.explain(),
        mailbox_address=box.address,
        team_name=box.display_name or box.address,
        cases_waiting=int(ahead) + 1 if isinstance(ahead, int | float) else 1,
    )
    mail = team_mail(
        box,
        OutboxKind.LEAD_ALERT,
        dedup_key=key,
        to=to,
        about=About(
            case.reference, f"{context.cases_waiting} cases waiting, {context.window_text}"
        ),
        now=desk.now,
    )
    outbox_store.enqueue_mail(
        conn,
        mail,
        desk.renderer.render("lead_alert", "en", context),
        mailbox=box.name,
        case_id=case.id,
    )


def record_promise(
    conn: Connection, case_id: int, kind: PromiseKind, window: Window, now: datetime
) -> None:
    reason = window.explain()  # the promise's and its event's: written out once
    made = make_promise(case_id, kind, PromiseAudience.CUSTOMER, now, window, reason)
    promise_store.record_promise(conn, made)
    event = cases.Event(cases.EventKind.PROMISE_MADE, now, None, reason)
    case_store.add_events(conn, case_id, [event])


def _name(facts: MessageFacts) -> str:
    return facts.sender.name if facts.sender and facts.sender.name else ""
