"""Times as people read them: in the mailbox's (or the configured) zone, the zone shown.

Everything is stored in UTC; every view a person reads (the CLI, the systemd status
line, logs in a terminal, digests) formats through here, so one screen never mixes
zones and never leaves the reader guessing which one it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from keepword.config import MailboxSettings, Settings


def zone_of(settings: Settings | None, box: MailboxSettings | None = None) -> ZoneInfo:
    """The mailbox's calendar zone, else keepword.timezone, else UTC."""
    if settings is None:
        return ZoneInfo("UTC")
    if box is not None:
        return settings.zone_for(box)
    return ZoneInfo(settings.keepword.timezone)


def _local(at: datetime, zone: tzinfo) -> datetime:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(zone)


def zone_name(at: datetime, zone: tzinfo) -> str:
    """The zone's abbreviation at that instant (CET, CEST, UTC), or its offset."""
    local = _local(at, zone)
    name = local.tzname() or ""
    return name if name and name[0] not in "+-" else local.strftime("UTC%z")


def moment(at: datetime | None, zone: tzinfo, *, never: str = "-") -> str:
    """`2026-11-30 09:05 CET`."""
    if at is None:
        return never
    return f"{_local(at, zone):%Y-%m-%d %H:%M} {zone_name(at, zone)}"


def short_moment(at: datetime | None, zone: tzinfo, *, now: datetime, never: str = "-") -> str:
    """`09:05 CET` today, `Mon 30 Nov 09:05 CET` otherwise (narrow table columns)."""
    if at is None:
        return never
    local = _local(at, zone)
    if local.date() == _local(now, zone).date():
        return f"{local:%H:%M} {zone_name(at, zone)}"
    return f"{local:%a %d %b %H:%M} {zone_name(at, zone)}"


def clock_time(at: datetime, zone: tzinfo) -> str:
    """`09:05:03 CET` (the systemd status line)."""
    return f"{_local(at, zone):%H:%M:%S} {zone_name(at, zone)}"
