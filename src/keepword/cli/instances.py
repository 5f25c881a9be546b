"""The instance section of `keepword status`: every keepword sharing a PostgreSQL store.

Shown only when the store has instances (several `keepword run` on PostgreSQL, see
keepword.store.leases): each one's host and pid, its last heartbeat, the mailboxes
it holds, and the mailboxes nobody holds right now (a takeover under way).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from keepword.store import leases


def instances_payload(engine: Engine) -> dict[str, Any]:
    """The section as plain data (for `status --json`)."""
    with engine.connect() as conn:
        seen = leases.view(conn)
    return {
        "instances": [
            {
                "instance": i.instance_id,
                "host": i.hostname,
                "pid": i.pid,
                "alive": i.alive,
                "draining": i.draining,
                "heartbeat_at": i.heartbeat_at.isoformat(),
                "heartbeat_age_seconds": round(i.heartbeat_age, 1),
                "started_at": i.started_at.isoformat(),
                "mailboxes": list(i.mailboxes),
            }
            for i in seen.instances
        ],
        "unheld": seen.unheld,
    }


def print_instances(seen: leases.LeaseView, console: Console | None = None) -> None:
    """Print the instances table (`leases.view`); nothing at all for a store no instance
    shares."""
    if not seen.instances:
        return
    console = console or Console()
    table = Table(title="instances", title_justify="left")
    for column in ("instance", "state", "last heartbeat", "mailboxes"):
        table.add_column(column)
    for i in seen.instances:
        state = "draining" if i.draining else ("alive" if i.alive else "gone")
        ago = f"{max(0.0, i.heartbeat_age):.0f} s ago"
        held = f"{len(i.mailboxes)}: {', '.join(i.mailboxes)}" if i.mailboxes else "none"
        table.add_row(f"{i.hostname} pid {i.pid}", state, ago, held)
    console.print(table)
    if seen.unheld:
        console.print(f"not held by any instance right now: {', '.join(seen.unheld)}")
