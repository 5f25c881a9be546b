"""Turning an acknowledgement decision into a promise and a queued mail (one transaction).

The window comes from the mailbox's own stored history (imported history included), so
the first promise after installation is already measured; the inputs are recorded on
the promise so it can be explained later (`keepword case KW-42`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import Connection

from keepword.config import MailboxSettings, Settings
from keepword.domain import acknowledge, cases
from keepword.domain.business_calendar import BusinessCalendar
from keepword.domain.model import (
    MessageFacts,
    OutboxKind,
    PromiseAudience,
    PromiseKind,
)
from keepword.domain.outbox_keys import ack_key, lead_alert_key, note_key
from keepword.domain.promises import make_promise
from keepword.domain.windows import Window, measured_window
from keepword.mail.compose import customer_mail, team_mail
from keepword.mail.render import (
    AcknowledgementContext,
    FollowUpNoteContext,
    LeadAlertContext,
    Renderer,
    acknowledgement_context,
    customer_due,
    window_duration_text,
)
from keepword.pipeline.send import enqueue_mail
from keepword.store import cases as case_store
from keepword.store import promises as promise_store

log = logging.getLogger(__name__)


def calendar_for(settings: Settings, box: MailboxSettings) -> BusinessCalendar:
    return BusinessCalendar.from_settings(box.calendar, settings.keepword.timezone)


def honest_window(
    conn: Connection,
    box: MailboxSettings,
    calendar: BusinessCalendar,
    now: datetime,
    *,
    exclude_case: int | None = None,
) -> Window:
    """The window to promise now, from this mailbox's measured first responses and backlog.

    `exclude_case`: the case being answered is already stored and unanswered; it is not
    part of its own queue. Cases of addresses that write like robots are no queue at
    all (store.cases.first_response_history).
    """
    days = box.promise.history_days
    since = now - timedelta(days=days * 2)  # older cases sharpen the backlog count
    history = case_store.first_response_history(
        conn,
        box.name,
        since,
        exclude_case=exclude_case,
        robot_cases_per_day=box.limits.per_sender_per_day,
    )
    return measured_window(history, now, calendar, box.promise)


class Acknowledger:
    """Called by triage inside the message's transaction."""

    def __init__(self, settings: Settings, box: MailboxSettings, renderer: Renderer) -> None:
        self.settings = settings
        self.box = box
        self.renderer = renderer
        self.calendar = calendar_for(settings, box)

    def __call__(
        self,
        conn: Connection,
        box: MailboxSettings,
        case: cases.CaseState,
        facts: MessageFacts,
        decision: acknowledge.Decision,
        now: datetime,
    ) -> None:
        assert case.id is not None and decision.send is not None
        recipient = acknowledge.reply_address(facts)
        assert recipient is not None
        first = decision.send is OutboxKind.ACKNOWLEDGEMENT
        slot = decision.slot.at if decision.slot is not None else now
        # A follow-up note repeats the time already promised; only without one is the
        # (costly) measured window computed.
        current = None if first else self._current_due(conn, case.id)
        window = current or self._from(
            slot, now, honest_window(conn, box, self.calendar, now, exclude_case=case.id)
        )
        if first:
            dedup = ack_key(case.id)
            body = self.renderer.render(
                "acknowledgement", box.language, self._ack(case, facts, window)
            )
        else:
            dedup = note_key(case.id, now)
            body = self.renderer.render(
                "follow_up_note", box.language, self._note(case, facts, window)
            )
        mail = customer_mail(
            box,
            decision.send,
            dedup_key=dedup,
            to=recipient,
            original_subject=case.subject or facts.subject,
            reference=case.reference,
            now=now,
            in_reply_to=facts.message_id,
            references=facts.references,
        )
        queued = enqueue_mail(
            conn,
            mail,
            body,
            mailbox=box.name,
            case_id=case.id,
            not_before=slot if decision.held else None,
        )
        if not queued:
            return
        if first:
            record_promise(conn, case.id, PromiseKind.FIRST_RESPONSE, window, now)
        kind = cases.EventKind.ACKNOWLEDGEMENT if first else cases.EventKind.FOLLOW_UP_NOTE
        detail = (
            f"{decision.reason}: told {recipient} a reply is due by "
            f"{window.due_at:%Y-%m-%d %H:%M} UTC"
        )
        events = [cases.Event(kind, now, box.address, detail, facts.pk)]
        if decision.held:
            what = "acknowledgement" if first else "follow-up note"
            held = f"{what} deferred until {slot:%Y-%m-%d %H:%M} UTC: {decision.held}"
            events.append(cases.Event(cases.EventKind.DEFERRED, now, None, held, facts.pk))
            log.info("mailbox %s: %s %s", box.name, case.reference, held)
        case_store.add_events(conn, case.id, events)
        if first and window.behind:
            self._alert_lead(conn, box, case, window, now)

    def _from(self, slot: datetime, now: datetime, window: Window) -> Window:
        """The window counted from when the customer is told (a rate limit may hold the
        acknowledgement back): the promise is as long as measured, from the slot."""
        if slot <= now:
            return window
        return replace(window, due_at=self.calendar.add(slot, window.minutes))

    def _current_due(self, conn: Connection, case_id: int) -> Window | None:
        """The earliest open customer promise of the case, as a window (None: none open)."""
        told = [p for p in promise_store.open_promises(conn, case_id) if p.to_customer]
        if not told:
            return None
        first = min(told, key=lambda p: (p.due_at, p.id or 0))  # ties: the older promise
        minutes = int(self.calendar.minutes_between(first.made_at, first.due_at))
        return Window(minutes=minutes, due_at=first.due_at, is_default=False, behind=False)

    def _ack(
        self, case: cases.CaseState, facts: MessageFacts, window: Window
    ) -> AcknowledgementContext:
        return acknowledgement_context(
            window=window,
            calendar=self.calendar,
            reference=case.reference,
            customer_name=_name(facts),
            subject=facts.subject,
            customer_offset_minutes=facts.date_offset_minutes,
            team_name=self.box.display_name or self.box.address,
            language=self.box.language,
        )

    def _note(
        self, case: cases.CaseState, facts: MessageFacts, window: Window
    ) -> FollowUpNoteContext:
        zone = self.calendar.zone
        return FollowUpNoteContext(
            reference=case.reference,
            customer_name=_name(facts),
            subject=facts.subject,
            due_local=window.due_at.astimezone(zone),
            due_customer=customer_due(window.due_at, zone, facts.date_offset_minutes),
            team_name=self.box.display_name or self.box.address,
        )

    def _alert_lead(
        self,
        conn: Connection,
        box: MailboxSettings,
        case: cases.CaseState,
        window: Window,
        now: datetime,
    ) -> None:
        assert case.id is not None
        to = [box.lead] if box.lead else sorted(box.team_addresses() - {box.address})
        if not to:
            return
        context = LeadAlertContext(
            reference=case.reference,
            customer=case.customer or "",
            subject=case.subject,
            window_text=window_duration_text(window.minutes, "en"),
            maximum_text=window_duration_text(box.promise.maximum_window_minutes, "en"),
            due_local=window.due_at.astimezone(self.calendar.zone),
            explanation=window.explain(),
            mailbox_address=box.address,
            team_name=box.display_name or box.address,
        )
        mail = team_mail(
            box,
            OutboxKind.LEAD_ALERT,
            dedup_key=lead_alert_key(case.id),
            to=to,
            reference=case.reference,
            about=f"we are behind: {window_duration_text(window.minutes, 'en')}",
            now=now,
        )
        enqueue_mail(
            conn,
            mail,
            self.renderer.render("lead_alert", "en", context),
            mailbox=box.name,
            case_id=case.id,
        )


def record_promise(
    conn: Connection, case_id: int, kind: PromiseKind, window: Window, now: datetime
) -> None:
    made = make_promise(case_id, kind, PromiseAudience.CUSTOMER, now, window, window.explain())
    promise_store.insert_promise(conn, made)
    case_store.add_events(
        conn,
        case_id,
        [cases.Event(cases.EventKind.PROMISE_MADE, now, None, window.explain())],
    )


def _name(facts: MessageFacts) -> str:
    return facts.sender.name if facts.sender and facts.sender.name else ""
