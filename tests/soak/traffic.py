"""What happens during a soak: a seeded plan of mail, staff work, CLI calls and faults.

Everything here is a pure function of the seed and the soak's shape (start, business
days, volume), so a failing run is replayed with the same `--seed`. Times are virtual
(aware UTC); the mail builders write Date headers in the sender's own zone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from keepword.config import CalendarSettings
from keepword.domain.business_calendar import BusinessCalendar

ZONE = "Europe/Berlin"
COUNTRY = "DE"
SUPPORT = "support@example.com"
TEAM = ("alice@example.com", "bob@example.com")
LEAD = "carol@example.com"
TICKETS = "tickets@vendor.example.net"
LIST_ADDRESS = "news@lists.example.net"
BOUNCE_DOMAIN = "bounce.example.net"
CUSTOMER_ZONES = ("Europe/Berlin", "Europe/London", "America/New_York", "Asia/Kolkata")

# A Monday morning whose week holds a public holiday in DE (Friday 1 May 2026), so five
# business days span a holiday and a weekend: Mon-Thu, (Fri holiday, Sat, Sun), Mon.
DEFAULT_START = datetime(2026, 4, 27, 7, 0, tzinfo=ZoneInfo(ZONE))


def business_calendar() -> BusinessCalendar:
    return BusinessCalendar.from_settings(CalendarSettings(timezone=ZONE, country=COUNTRY), ZONE)


@dataclass(frozen=True)
class Customer:
    number: int
    address: str
    name: str
    zone: str
    kind: str  # "person", "away" (auto-responder), "bouncing", "gone" (550 at the relay)


@dataclass(frozen=True)
class Event:
    at: datetime  # virtual, aware UTC
    kind: str
    customer: Customer | None = None
    detail: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    kind: str  # "kill", "dovecot", "tempfail", "outage", "slow", "credential"
    start: datetime
    end: datetime


@dataclass
class Plan:
    seed: int
    start: datetime
    end: datetime  # close of the last business day
    business_days: list[date]
    closed_days: list[date]
    events: list[Event]
    faults: list[Fault]
    customers: list[Customer]


def run_span(start: datetime, business_days: int) -> tuple[datetime, list[date], list[date]]:
    """The end of the `business_days`-th business day from `start`, and the days passed."""
    calendar = business_calendar()
    zone = ZoneInfo(ZONE)
    day = start.astimezone(zone).date()
    open_days: list[date] = []
    closed: list[date] = []
    while len(open_days) < business_days:
        (open_days if calendar.day_intervals(day) else closed).append(day)
        day += timedelta(days=1)
    end = datetime.combine(open_days[-1], time(19, 0), tzinfo=zone)
    return end.astimezone(UTC), open_days, closed


def make_plan(
    seed: int,
    *,
    start: datetime = DEFAULT_START,
    business_days: int = 5,
    customers_per_day: int = 8,
    kills: int = 3,
) -> Plan:
    rng = random.Random(seed)
    end, open_days, closed = run_span(start, business_days)
    zone = ZoneInfo(ZONE)
    customers: list[Customer] = []
    events: list[Event] = []
    for day in sorted([*open_days, *closed]):
        count = customers_per_day if day in open_days else rng.randint(1, 2)
        for _ in range(count):
            local = datetime.combine(day, time(7, 0), tzinfo=zone) + timedelta(
                seconds=rng.randint(0, 11 * 3600)
            )
            at = max(local.astimezone(UTC), start.astimezone(UTC) + timedelta(minutes=5))
            customer = _customer(rng, len(customers) + 1)
            customers.append(customer)
            events.extend(_customer_story(rng, customer, at, end))
            if rng.random() < 0.12:  # a second customer in the very same second
                twin = _customer(rng, len(customers) + 1)
                customers.append(twin)
                events.extend(_customer_story(rng, twin, at, end))
        for _ in range(2 if day in open_days else 1):
            at = datetime.combine(day, time(6, 0), tzinfo=zone) + timedelta(
                seconds=rng.randint(0, 14 * 3600)
            )
            events.append(Event(at.astimezone(UTC), "list"))
    events.extend(_sure_ties(rng, customers, start, end))
    events.append(Event(start.astimezone(UTC) + timedelta(hours=2), "ticket"))
    events = [e for e in events if e.at <= end]
    events.sort(key=lambda e: (e.at, e.kind))
    faults = _faults(rng, start.astimezone(UTC), end, kills)
    return Plan(seed, start.astimezone(UTC), end, open_days, closed, events, faults, customers)


def _customer(rng: random.Random, number: int) -> Customer:
    draw = rng.random()
    kind = "person"
    if draw < 0.1:
        kind = "away"
    elif draw < 0.15:
        kind = "bouncing"
    elif draw < 0.17:
        kind = "gone"
    domain = BOUNCE_DOMAIN if kind == "bouncing" else "customers.example.org"
    return Customer(
        number,
        f"c{number}@{domain}",
        f"Customer {number}",
        rng.choice(CUSTOMER_ZONES),
        kind,
    )


def _customer_story(
    rng: random.Random,
    customer: Customer,
    at: datetime,
    end: datetime,
    *,
    dated: bool | None = None,
) -> list[Event]:
    """A new mail, then maybe a follow-up, staff replies, an assign and a close."""
    calendar = business_calendar()
    has_date = rng.random() > 0.1 if dated is None else dated
    story = [Event(at, "customer", customer, {"dated": has_date})]
    if rng.random() < 0.3:
        later = at + timedelta(minutes=rng.randint(30, 2 * 24 * 60))
        story.append(Event(later, "follow_up", customer))
    replied = at
    if rng.random() < 0.75:
        # Business minutes: some replies well inside the default 8 h window, some after it.
        replied = calendar.add(at, rng.uniform(15, 620))
        how = "sent" if rng.random() < 0.6 else "cc"
        story.append(Event(replied, "staff_reply", customer, {"via": how}))
    if rng.random() < 0.25:
        story.append(Event(at + timedelta(minutes=rng.randint(10, 240)), "assign", customer))
    if rng.random() < 0.15:
        story.append(Event(replied + timedelta(minutes=rng.randint(5, 600)), "close", customer))
    return [e for e in story if e.at <= end]


def _sure_ties(
    rng: random.Random, customers: list[Customer], start: datetime, end: datetime
) -> list[Event]:
    """Two customers in one second with Date, and two without Date in one poll."""
    events: list[Event] = []
    for dated, hours in ((True, 3), (False, 27)):
        at = start.astimezone(UTC) + timedelta(hours=hours)
        for _ in range(2):
            number = len(customers) + 1
            customer = Customer(
                number, f"c{number}@customers.example.org", f"Customer {number}", ZONE, "person"
            )
            customers.append(customer)
            events.extend(_customer_story(rng, customer, at, end, dated=dated))
    return events


def _faults(rng: random.Random, start: datetime, end: datetime, kills: int) -> list[Fault]:
    span = (end - start).total_seconds()

    def window(kind: str, minutes: tuple[int, int]) -> Fault:
        at = start + timedelta(seconds=rng.uniform(0.05, 0.9) * span)
        return Fault(kind, at, at + timedelta(minutes=rng.randint(*minutes)))

    faults = [window("kill", (2, 30)) for _ in range(kills)]
    faults += [
        window("dovecot", (3, 15)),
        window("tempfail", (10, 60)),
        window("outage", (10, 60)),
        window("slow", (30, 120)),
        window("credential", (60, 180)),
    ]
    return sorted(faults, key=lambda f: f.start)


# -- mail ------------------------------------------------------------------------------


def _base(sender: str, name: str, to: str, subject: str, message_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{message_id}>"
    return msg


def _dated(msg: EmailMessage, at: datetime, zone: str) -> None:
    msg["Date"] = format_datetime(at.astimezone(ZoneInfo(zone)))


def customer_mail(customer: Customer, at: datetime, message_id: str, *, dated: bool) -> bytes:
    subject = f"Order {1000 + customer.number}: question number {customer.number}"
    msg = _base(customer.address, customer.name, SUPPORT, subject, message_id)
    if dated:
        _dated(msg, at, customer.zone)
    msg.set_content(
        f"Hello,\n\nmy order {1000 + customer.number} has a problem.\n\n{customer.name}\n"
    )
    return bytes(msg)


def follow_up_mail(
    customer: Customer, at: datetime, message_id: str, parent: str, subject: str
) -> bytes:
    msg = _base(customer.address, customer.name, SUPPORT, _re(subject), message_id)
    _dated(msg, at, customer.zone)
    msg["In-Reply-To"] = f"<{parent}>"
    msg["References"] = f"<{parent}>"
    msg.set_content("Any news? I am still waiting.\n")
    return bytes(msg)


# The team's mail server: the soak config trusts its Authentication-Results.
TEAM_MX = "mx.example.com"


def team_proof(staff: str) -> str:
    """What the team's server writes on mail a team member sends from their own client."""
    domain = staff.rpartition("@")[2]
    return f"{TEAM_MX}; dkim=pass header.d={domain}; dmarc=pass header.from={domain}"


def staff_mail(
    staff: str,
    customer: Customer,
    at: datetime,
    message_id: str,
    parent: str,
    subject: str,
    *,
    cc_support: bool,
) -> bytes:
    msg = _base(staff, staff.split("@")[0].title(), customer.address, _re(subject), message_id)
    if cc_support:
        msg["Cc"] = SUPPORT
        # From the staff member's own client: only the team's server vouches for it
        # (the soak config trusts TEAM_MX; docs/trust.md). A Sent copy needs no proof.
        msg["Authentication-Results"] = team_proof(staff)
    _dated(msg, at, ZONE)
    msg["In-Reply-To"] = f"<{parent}>"
    msg["References"] = f"<{parent}>"
    msg.set_content("Hello,\n\nwe fixed it; a new parcel is on its way.\n")
    return bytes(msg)


def out_of_office_mail(
    customer: Customer, at: datetime, message_id: str, parent: str, subject: str
) -> bytes:
    msg = _base(customer.address, customer.name, SUPPORT, f"Automatic reply: {subject}", message_id)
    _dated(msg, at, customer.zone)
    msg["Auto-Submitted"] = "auto-replied"
    msg["In-Reply-To"] = f"<{parent}>"
    msg.set_content("I am out of the office until next week.\n")
    return bytes(msg)


def bounce_mail(at: datetime, message_id: str, recipient: str, original: bytes) -> bytes:
    """A DSN as MTAs write it: multipart/report with delivery-status and the headers."""
    boundary = f"bounce-{message_id.split('@')[0]}"
    headers = original.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode(errors="replace")
    text = f"""From: Mail Delivery System <MAILER-DAEMON@mx.{BOUNCE_DOMAIN}>
To: {SUPPORT}
Subject: Undelivered Mail Returned to Sender
Date: {format_datetime(at)}
Message-ID: <{message_id}>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset=us-ascii

Your message to <{recipient}> could not be delivered: no such user.

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.{BOUNCE_DOMAIN}

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1

--{boundary}
Content-Type: text/rfc822-headers

{headers}

--{boundary}--
"""
    return text.replace("\n", "\r\n").encode()


def ticket_mail(at: datetime, message_id: str, number: int) -> bytes:
    """A customer-side ticket system: each mail it gets opens a ticket under a new subject."""
    msg = _base(
        TICKETS,
        "Vendor Helpdesk",
        SUPPORT,
        f"[Ticket #{number}] We received your request",
        message_id,
    )
    _dated(msg, at, "UTC")
    msg.set_content(f"Thank you, your request is now ticket #{number}.\n")
    return bytes(msg)


def list_mail(at: datetime, message_id: str, number: int) -> bytes:
    msg = _base(LIST_ADDRESS, "Example News", SUPPORT, f"Example newsletter {number}", message_id)
    _dated(msg, at, "UTC")
    msg["List-Id"] = "Example News <news.lists.example.net>"
    msg["List-Unsubscribe"] = f"<mailto:{LIST_ADDRESS}?subject=unsubscribe>"
    msg["Precedence"] = "list"
    msg.set_content("This week's news.\n")
    return bytes(msg)


def _re(subject: str) -> str:
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"
