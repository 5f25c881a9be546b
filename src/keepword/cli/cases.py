"""`keepword cases | case | assign | close | reopen`: the team's view of its cases."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Connection, Engine, select

from keepword.cli.common import engine_from, settings_from
from keepword.cli.common import now as clock_now
from keepword.domain import cases as case_rules
from keepword.domain.model import CaseStatus
from keepword.errors import KeepwordError, StaleCaseError
from keepword.store import cases as case_store
from keepword.store import promises as promise_store
from keepword.store.tables import message, outbox, promise


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
    assign.set_defaults(handler=_mutation(_assign))

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


def cmd_cases(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    engine = engine_from(settings)
    now = _now()
    with engine.connect() as conn:
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
    rows = [_case_summary(c, due.get(c.id or 0), now) for c in found]
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
        return 0
    table = Table(title=f"{len(rows)} case(s)")
    for column in ("ref", "status", "owner", "customer", "subject", "contacts", "next due"):
        table.add_column(column)
    for row in rows:
        overdue = row["overdue"]
        table.add_row(
            row["reference"],
            row["status"],
            row["owner"] or "-",
            row["customer"] or "-",
            (row["subject"] or "")[:50],
            str(row["customer_contacts"]),
            f"[red]{row['next_due']}[/red]" if overdue else (row["next_due"] or "-"),
        )
    Console().print(table)
    return 0


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
    engine = engine_from(settings)
    with engine.connect() as conn:
        current = _case_or_fail(conn, args.reference)
        assert current.id is not None
        story = _story(conn, current.id)
    summary = _case_summary(current, None, _now())
    if args.json:
        json.dump({"case": summary, **story}, sys.stdout, indent=2, default=str)
        print()
        return 0
    _print_story(current, story)
    return 0


def _story(conn: Connection, case_id: int) -> dict[str, list[dict[str, Any]]]:
    events = [
        {
            "at": e.at.isoformat(),
            "kind": e.kind,
            "actor": e.actor,
            "detail": e.detail,
            "message": e.message_pk,
        }
        for e in case_store.timeline(conn, case_id)
    ]
    mails = conn.execute(
        select(
            message.c.id,
            message.c.date,
            message.c.from_addr,
            message.c.kind,
            message.c.subject,
            message.c.body_text,
        )
        .where(message.c.case_id == case_id)
        .order_by(message.c.date, message.c.id)
    )
    messages = [
        {
            "id": m.id,
            "date": m.date.isoformat() if m.date else None,
            "from": m.from_addr,
            "kind": m.kind,
            "subject": m.subject,
            "excerpt": (m.body_text or "").strip()[:400],
        }
        for m in mails
    ]
    promises = [
        {
            "kind": p.kind,
            "audience": p.audience,
            "made_at": p.made_at.isoformat(),
            "due_at": p.due_at.isoformat(),
            "state": p.state,
            "reason": p.reason,
            "basis": p.basis,
        }
        for p in conn.execute(
            select(promise).where(promise.c.case_id == case_id).order_by(promise.c.made_at)
        )
    ]
    sent = [
        {
            "kind": o.kind,
            "state": o.state,
            "to": o.recipients,
            "created_at": o.created_at.isoformat(),
        }
        for o in conn.execute(
            select(outbox).where(outbox.c.case_id == case_id).order_by(outbox.c.id)
        )
    ]
    return {"timeline": events, "messages": messages, "promises": promises, "outgoing": sent}


def _print_story(current: case_rules.CaseState, story: dict[str, list[dict[str, Any]]]) -> None:
    console = Console()
    console.print(
        f"[bold]{current.reference}[/bold]  {current.subject}\n"
        f"status {current.status.value} · owner {current.owner or '-'} · customer "
        f"{current.customer or '-'} · {current.customer_contacts} customer message(s)"
    )
    table = Table(title="timeline")
    for column in ("when (UTC)", "what", "who", "detail"):
        table.add_column(column)
    for event in story["timeline"]:
        table.add_row(event["at"][:16], event["kind"], event["actor"] or "-", event["detail"] or "")
    console.print(table)
    for mail in story["messages"]:
        console.print(f"[bold]{(mail['date'] or '')[:16]} {mail['from']} ({mail['kind']})[/bold]")
        console.print(mail["excerpt"], markup=False)
        console.print()
    for item in story["promises"]:
        console.print(
            f"promise ({item['kind']}, to {item['audience']}): due {item['due_at'][:16]} "
            f"UTC, {item['state']} — {item['reason'] or ''}"
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
