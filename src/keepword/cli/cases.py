"""`keepword cases | case | assign | close | reopen`: the team's view of its cases."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Connection, Engine

from keepword.cli.common import engine_from, reading, settings_from
from keepword.cli.common import now as clock_now
from keepword.config import Settings
from keepword.domain import cases as case_rules
from keepword.domain.commands import Refused, assign_target
from keepword.domain.model import CaseStatus
from keepword.errors import KeepwordError, StaleCaseError
from keepword.store import cases as case_store
from keepword.store import promises as promise_store
from keepword.store import reports
from keepword.timefmt import moment, short_moment, zone_name, zone_of


def register(sub: argparse._SubParsersAction[Any]) -> None:
    listing = sub.add_parser("cases", help="list cases")
    listing.add_argument("--status", choices=[s.value for s in CaseStatus] + ["open"])
    listing.add_argument("--mailbox")
    listing.add_argument("--owner")
    listing.add_argument("--overdue", action="store_true", help="only cases past a promise")
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=cmd_cases)

    show = sub.add_parser("case", help="show one case's whole timeline")
    show.add_argument("reference")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_case)

    assign = sub.add_parser("assign", help="give a case an owner")
    assign.add_argument("reference")
    assign.add_argument("address")
    assign.add_argument("--by", help="who is assigning (for the timeline)")
    assign.set_defaults(handler=_assign_to_team)

    close = sub.add_parser("close", help="close a case")
    close.add_argument("reference")
    close.add_argument("--by")
    close.set_defaults(handler=_mutation(_close))

    reopen = sub.add_parser("reopen", help="reopen a closed case")
    reopen.add_argument("reference")
    reopen.add_argument("--by")
    reopen.set_defaults(handler=_mutation(_reopen))


def _now() -> datetime:
    return clock_now()  # the daemon's clock, so a sped-up soak and the CLI agree


def _statuses(value: str | None) -> list[CaseStatus] | None:
    if value is None:
        return None
    if value == "open":
        return [s for s in CaseStatus if s is not CaseStatus.CLOSED]
    return [CaseStatus(value)]


#: Short status names so `cases` fits 80 columns; the legend under the table says them.
STATUS_SHORT = {
    CaseStatus.NEW.value: "new",
    CaseStatus.WAITING_ON_TEAM.value: "team",
    CaseStatus.WAITING_ON_CUSTOMER.value: "cust",
    CaseStatus.CLOSED.value: "closed",
}
LEGEND = "status: team = waiting on the team, cust = waiting on the customer"


def cmd_cases(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    now = _now()
    with reading(settings) as conn:
        found = case_store.list_cases(
            conn,
            mailbox=args.mailbox,
            statuses=_statuses(args.status),
            owner=args.owner,
            limit=args.limit,
        )
        due = promise_store.next_due_by_case(conn, [c.id for c in found if c.id is not None])
    if args.overdue:
        found = [c for c in found if c.id in due and due[c.id] < now]
    if args.json:
        rows = [_case_summary(c, due.get(c.id or 0), now) for c in found]
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
        return 0
    Console().print(_cases_table(settings, found, due, now))
    return 0


def _cases_table(
    settings: Settings,
    found: list[case_rules.CaseState],
    due: dict[int, datetime],
    now: datetime,
) -> Table:
    zone = zone_of(settings)
    table = Table(title=f"{len(found)} case(s); times {zone_name(now, zone)}", caption=LEGEND)
    table.add_column("ref", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("owner", overflow="fold", max_width=14)
    table.add_column("customer", overflow="fold", max_width=18)
    table.add_column("subject", overflow="fold", ratio=1)
    table.add_column("msgs", justify="right", no_wrap=True)
    table.add_column("next due", no_wrap=True)
    for c in found:
        at = due.get(c.id or 0)
        when = short_moment(at, zone, now=now)
        table.add_row(
            c.reference,
            STATUS_SHORT.get(c.status.value, c.status.value),
            escape(_local_part(c.owner)),
            escape(c.customer or "-"),
            escape(c.subject or ""),
            str(c.customer_contacts),
            f"[red]{when}[/red]" if at and at < now else when,
        )
    return table


def _local_part(address: str | None) -> str:
    """`alice` for alice@example.com: the team's own domain is the same on every row."""
    return address.split("@", 1)[0] if address else "-"


def _case_summary(c: case_rules.CaseState, due: datetime | None, now: datetime) -> dict[str, Any]:
    return {
        "reference": c.reference,
        "mailbox": c.mailbox,
        "status": c.status.value,
        "owner": c.owner,
        "customer": c.customer,
        "subject": c.subject,
        "customer_contacts": c.customer_contacts,
        "opened_at": c.opened_at.isoformat(),
        "first_response_at": c.first_response_at.isoformat() if c.first_response_at else None,
        "next_due": due.isoformat(timespec="minutes") if due else None,
        "overdue": bool(due and due < now),
    }


def _case_or_fail(conn: Connection, reference: str) -> case_rules.CaseState:
    found = case_store.find_case(conn, reference)
    if found is None:
        raise KeepwordError(f"no case {reference}")
    return found


def cmd_case(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    with reading(settings) as conn:
        current = _case_or_fail(conn, args.reference)
        assert current.id is not None
        story = _story(conn, current.id)
    if args.json:
        summary = _case_summary(current, None, _now())
        json.dump({"case": summary, **story}, sys.stdout, indent=2, default=str)
        print()
        return 0
    _print_story(current, story, _zone_of_case(settings, current.mailbox))
    return 0


def _zone_of_case(settings: Settings, mailbox: str) -> ZoneInfo:
    try:
        return zone_of(settings, settings.mailbox_named(mailbox))
    except KeyError:  # a mailbox no longer configured
        return zone_of(settings)


#: JSON key -> attribute of the report's row, for each part of `keepword case --json`
_TIMELINE_KEYS = {k: k for k in ("at", "kind", "actor", "detail")} | {"message": "message_pk"}
_MESSAGE_KEYS = {
    "id": "id",
    "date": "date",
    "from": "from_addr",
    "kind": "kind",
    "subject": "subject",
}
_PROMISE_KEYS = {
    k: k for k in ("kind", "audience", "made_at", "due_at", "state", "reason", "basis")
}
_OUTGOING_KEYS = {"kind": "kind", "state": "state", "to": "recipients", "created_at": "created_at"}


def _as_json(row: Any, keys: dict[str, str]) -> dict[str, Any]:
    """The row's attributes under their JSON keys, instants as ISO text."""
    values = {key: getattr(row, attribute) for key, attribute in keys.items()}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _story(conn: Connection, case_id: int) -> dict[str, list[dict[str, Any]]]:
    events = [_as_json(e, _TIMELINE_KEYS) for e in reports.case_timeline(conn, case_id)]
    messages = [
        _as_json(m, _MESSAGE_KEYS) | {"excerpt": (m.body_text or "").strip()[:400]}
        for m in reports.case_messages(conn, case_id)
    ]
    promises = [_as_json(p, _PROMISE_KEYS) for p in reports.case_promises(conn, case_id)]
    sent = [_as_json(o, _OUTGOING_KEYS) for o in reports.case_outgoing(conn, case_id)]
    return {"timeline": events, "messages": messages, "promises": promises, "outgoing": sent}


def _when(text: str | None, zone: ZoneInfo) -> str:
    return moment(datetime.fromisoformat(text), zone) if text else "-"


def _print_story(
    current: case_rules.CaseState, story: dict[str, list[dict[str, Any]]], zone: ZoneInfo
) -> None:
    console = Console()
    console.print(
        f"[bold]{current.reference}[/bold]  {escape(current.subject or '')}\n"
        f"status {current.status.value} · owner {escape(current.owner or '-')} · customer "
        f"{escape(current.customer or '-')} · {current.customer_contacts} customer message(s)",
        markup=True,
    )
    table = Table(title="timeline")
    table.add_column("when", no_wrap=True)
    table.add_column("what", no_wrap=True)
    table.add_column("who", overflow="fold", max_width=20)
    table.add_column("detail", overflow="fold", ratio=1)
    for event in story["timeline"]:
        table.add_row(
            _when(event["at"], zone),
            event["kind"],
            escape(event["actor"] or "-"),
            escape(event["detail"] or ""),
        )
    console.print(table)
    for mail in story["messages"]:
        when, sender = _when(mail["date"], zone), escape(str(mail["from"]))
        console.print(f"[bold]{when} {sender} ({mail['kind']})[/bold]")
        console.print(mail["excerpt"], markup=False)
        console.print()
    for item in story["promises"]:
        console.print(
            f"promise ({item['kind']}, to {item['audience']}): due "
            f"{_when(item['due_at'], zone)}, {item['state']} — {item['reason'] or ''}",
            markup=False,
        )


Mutation = Callable[[case_rules.CaseState, argparse.Namespace, datetime], case_rules.Change]


MUTATION_ATTEMPTS = 3


def _mutation(step: Mutation) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        engine = engine_from(settings_from(args))
        for _ in range(MUTATION_ATTEMPTS - 1):
            with contextlib.suppress(StaleCaseError):  # the daemon changed it: decide again
                return _apply(engine, step, args)
        return _apply(engine, step, args)

    return handler


def _apply(engine: Engine, step: Mutation, args: argparse.Namespace) -> int:
    with engine.begin() as conn:
        current = _case_or_fail(conn, args.reference)
        assert current.id is not None
        change = step(current, args, _now())
        if not change.events:
            print(f"{current.reference}: nothing to change")
            return 0
        case_store.save_case(conn, change.case)
        case_store.add_events(conn, current.id, change.events)
    print(f"{current.reference}: {change.events[-1].detail}")
    return 0


def _assign_to_team(args: argparse.Namespace) -> int:
    """`keepword assign`: only to someone on the case's team (exit 2 otherwise): an
    outsider as owner would be sent the case's reminders (issue 12)."""
    settings = settings_from(args)
    with reading(settings) as conn:
        current = _case_or_fail(conn, args.reference)
    box = next((b for b in settings.mailbox if b.name == current.mailbox), None)
    staff = [*box.team, *([box.lead] if box.lead else [])] if box is not None else []
    target = assign_target(args.address, staff)
    if isinstance(target, Refused):
        team = ", ".join(staff) or "nobody (set team in the mailbox's config)"
        print(
            f"keepword: {current.reference}: not assigned: {target.reason} "
            f"(the team of mailbox {current.mailbox}: {team})",
            file=sys.stderr,
        )
        return 2
    args.address = target
    return _mutation(_assign)(args)


def _assign(
    current: case_rules.CaseState, args: argparse.Namespace, now: datetime
) -> case_rules.Change:
    return case_rules.assign(
        current, args.address, at=now, actor=args.by, why="assigned from the CLI"
    )


def _close(
    current: case_rules.CaseState, args: argparse.Namespace, now: datetime
) -> case_rules.Change:
    return case_rules.close(current, at=now, actor=args.by, why="closed from the CLI")


def _reopen(
    current: case_rules.CaseState, args: argparse.Namespace, now: datetime
) -> case_rules.Change:
    return case_rules.reopen(current, at=now, actor=args.by, why="reopened from the CLI")
