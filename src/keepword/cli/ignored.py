"""`keepword ignored`: the mail keepword did not answer, and why.

Robots, mailing lists and bounces (RFC 3834: never answer a robot); quarantined mail
it could not read; mail whose triage failed and waits for a retry; customer mail it
did not acknowledge, or acknowledged later because a rate limit deferred it; mail
withdrawn from the outbox because it was no longer true; mail without a usable sender
address, which opens no case ("no sender"). For the team lead's question
"did we ignore a customer?".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keepword.cli.common import add_command, now, reading, settings_from
from keepword.store import reports
from keepword.timefmt import moment, short_moment, zone_name, zone_of


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = add_command(
        sub,
        "ignored",
        help="mail keepword did not answer (robots, lists, quarantine, deferred), and why",
        description=__doc__,
    )
    parser.add_argument("--mailbox", help="only this mailbox")
    parser.add_argument("--days", type=int, default=30, help="the last N days (30)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=cmd_ignored)


def cmd_ignored(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    at = now()
    with reading(settings) as conn:
        found = reports.not_answered(conn, args.mailbox, at - timedelta(days=args.days), args.limit)
    if args.json:
        json.dump([_as_json(item) for item in found], sys.stdout, indent=2)
        print()
        return 0
    zone = zone_of(settings)
    table = Table(title=f"{len(found)} mail(s) not answered, last {args.days} days; times "
                  f"{zone_name(at, zone)}")  # fmt: skip
    table.add_column("when", no_wrap=True)
    table.add_column("what", no_wrap=True)
    table.add_column("from", overflow="fold", max_width=24)
    table.add_column("subject", overflow="fold", ratio=1)
    table.add_column("why", overflow="fold", ratio=2)
    for item in found:
        why = item.reason
        if item.next_try is not None:
            why += f" (next try {moment(item.next_try, zone)})"
        if item.case:
            why += f" [{item.case}]"
        table.add_row(
            short_moment(item.at, zone, now=at),
            item.what,
            escape(item.sender or "-"),
            escape(item.subject or ""),
            escape(why),
        )
    Console().print(table)
    return 0


def _as_json(item: reports.NotAnswered) -> dict[str, Any]:
    values = dataclasses.asdict(item)
    for key in ("at", "next_try"):
        values[key] = values[key].isoformat() if values[key] else None
    return values
