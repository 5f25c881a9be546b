"""Owners in the shell (issue 12): an owner from the start, and the cases of people away.

- `owner_on_open`: a case a customer opens gets its owner by the mailbox's policy
  (`[mailbox.owners] policy`, domain.owners.choose_owner) among the staff on duty, on
  its timeline; in the transaction that opens it.
- `out_of_office`: a team member's own out-of-office auto-reply records them away
  until the return date it states (or `away_default_days`), and their cases move now.
- `settle_absences`: every absence covering today (planned in the config or recorded)
  whose member still owns cases moves them to someone on duty, each move on the
  timeline; the lead is told once per absence (`outbox_keys.away_key`). Triage calls it
  after an out-of-office, the chase every step (a planned absence starts on its day).
- `staff_wrote`: a member who writes themselves is back (an absence without a stated
  return date ends).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection

from keepword.domain import cases
from keepword.domain.model import MessageFacts, OutboxKind
from keepword.domain.outbox_keys import away_key
from keepword.domain.owners import (
    AwayPeriod,
    OwnerPolicy,
    Sharing,
    absence_from_auto_reply,
    assign_on_open,
    away_label,
    away_now,
    choose_owner,
    move_cases,
    policy_of,
)
from keepword.mail.compose import About, team_mail
from keepword.mail.render import Rendered
from keepword.pipeline.context import MailboxContext
from keepword.store import away as away_store
from keepword.store import cases as case_store
from keepword.store import outbox as outbox_store

log = logging.getLogger(__name__)


def owner_on_open(conn: Connection, desk: MailboxContext, case: cases.CaseState) -> cases.Change:
    """The owner of a case just opened (saved), by the mailbox's policy (`none`, or no
    `team` configured: no owner and no line, as before owners)."""
    box = desk.box
    policy = policy_of(box)
    if policy is OwnerPolicy.NONE or not box.team:  # no members: nobody to choose
        return cases.Change(case, ())
    least = policy is OwnerPolicy.LEAST_OPEN  # each policy reads only what it needs
    sharing = Sharing(
        policy,
        open_counts=desk.open_counts(conn) if least else {},
        last_assigned=None if least else away_store.last_assigned(conn, box.name),
    )
    choice = choose_owner(sharing, desk.roster(conn), desk.calendar, desk.now)
    return assign_on_open(case, choice, desk.now)


def out_of_office(
    conn: Connection, desk: MailboxContext, facts: MessageFacts, at: datetime, why: str
) -> int:
    """Record the absence a member's out-of-office (written `at`) states and move their
    cases now. Returns the number of cases moved."""
    assert facts.sender is not None
    address = facts.sender.address.lower()
    period = absence_from_auto_reply(
        address,
        facts.body_text,
        received=at,
        zone=desk.calendar.zone,
        recorded=desk.roster(conn).away,
        default_days=desk.box.owners.away_default_days,
    )
    if period is not None:
        stated = "no return date stated" not in period.why
        away_store.record_away(
            conn,
            desk.box.name,
            period,
            until_they_write=not stated,
            message_pk=facts.pk,
            now=desk.now,
        )
        desk.forget_roster()
        log.info(
            "mailbox %s: %s is away until %s (%s)",
            desk.box.name,
            address,
            period.back_on,
            why,
        )
    return settle_absences(conn, desk, told_anyway=(address,) if period is not None else ())


def staff_wrote(conn: Connection, desk: MailboxContext, address: str) -> None:
    """A member wrote themselves: an absence without a stated return date ends today."""
    today = desk.now.astimezone(desk.calendar.zone).date()
    if away_store.back_again(conn, desk.box.name, address.lower(), today):
        desk.forget_roster()
        log.info("mailbox %s: %s wrote again: back", desk.box.name, address)


def settle_absences(
    conn: Connection, desk: MailboxContext, *, told_anyway: tuple[str, ...] = ()
) -> int:
    """Move the cases of everyone away today to someone on duty; tell the lead once per
    absence (also when nothing had to move, for the members in `told_anyway`: an
    out-of-office the lead should hear of). Returns the number of cases moved."""
    box = desk.box
    roster = desk.roster(conn)
    today = desk.now.astimezone(desk.calendar.zone).date()
    absent = away_now(roster, today)
    if not absent:
        return 0
    owned = away_store.open_cases_of(conn, box.name, [p.address for p in absent])
    policy = policy_of(box)
    moved = 0
    for period in absent:
        mine = [c for c in owned if c.owner == period.address]
        if not mine and period.address not in told_anyway:
            continue
        sharing = Sharing(
            policy,
            open_counts=away_store.open_counts(conn, box.name),
            last_assigned=away_store.last_assigned(conn, box.name),
        )
        notice = move_cases(period, mine, sharing, roster, desk.calendar, desk.now)
        before = {c.id: c.owner_changes for c in mine}
        for change in notice.moves:
            if change.case.owner == period.address:
                continue  # nobody on duty to take it: said once to the lead, not each step
            # An absence is no ping-pong: the move does not count toward
            # chase.escalate_after_owners.
            kept = replace(change.case, owner_changes=before[change.case.id])
            saved = case_store.save_case(conn, kept)
            assert saved.id is not None
            case_store.add_events(conn, saved.id, change.events)
            moved += 1
        text = notice.lead_message or (
            f"{period.address} is away until {_until(period)} ({away_label(period)}). "
            "They own no open cases."
        )
        _tell_lead(conn, desk, period, text)
    return moved


def _until(period: AwayPeriod) -> str:
    return period.back_on.isoformat() if period.back_on else "they write again"


def _tell_lead(conn: Connection, desk: MailboxContext, period: AwayPeriod, text: str) -> None:
    """One mail to the lead (the members on duty without one) per absence."""
    box = desk.box
    to = [box.lead] if box.lead else [a for a in box.team if a != period.address]
    if not to:
        return
    key = away_key(box.name, period.address, period.start)
    if outbox_store.exists(conn, key):
        return
    mail = team_mail(
        box,
        OutboxKind.AWAY_NOTICE,
        dedup_key=key,
        to=to,
        about=About(None, f"{period.address} until {_until(period)}"),
        now=desk.now,
    )
    body = Rendered(
        text=(
            f"{text}\n\n"
            f"Why: {period.why or 'away'} (from {period.start.isoformat()}).\n"
            "New cases go to the others on duty until then. To hand a case on, reply to "
            "its reminder with #take or #assign name@... at the top.\n\n"
            f"-- \nkeepword for {box.address} (automatic notice to the team lead)\n"
        )
    )
    outbox_store.enqueue_mail(conn, mail, body, mailbox=box.name, case_id=None)
