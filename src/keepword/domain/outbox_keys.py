"""The outbox's dedup-key grammar: every key keepword writes is built here, and only here.

A dedup key is unique in the outbox, so a mail keyed once is queued once however often a
step runs. The grammar:

    ack:<case>                                  the acknowledgement of a case
    note:<case>:<YYYY-MM-DD>                    a follow-up note, at most one a day
    lead_alert:<mailbox>:after:<p>              "we are behind" to the lead, once an episode:
                                                the promises above the maximum after the
                                                mailbox's last promise p within it
    reminder:case:<case>:promise:<p>:<percent>  a reminder at a fraction of promise p
    escalation:case:<case>:promise:<p>          an escalation about promise p
    escalation:case:<case>:unpromised           an escalation about a case with none
    update:case:<case>:promise:<p>              the customer update revising promise p
    breach:case:<case>:promise:<p>              the breach of promise p (never mailed)
    unreachable:case:<case>:outbox:<o>          "the customer cannot be reached" to the
                                                team: the relay refused mail o for good
    digest:<mailbox>:<YYYY-MM-DD>               a mailbox's daily digest
    away:<mailbox>:<address>:<YYYY-MM-DD>       "X is away, their cases moved" to the
                                                lead, once per absence (by its start)
    command_reply:message:<m>                   the one confirmation of command mail m
    update:case:<case>:message:<m>              the customer update a command in mail m
                                                asked for (#waiting; a later #promise)

The chase keys (`case:<case>:` after the kind) sort together per case and kind, so a
case's chase keys are read as index ranges (`chase_key_ranges`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Protocol

CHASE_KINDS = ("reminder", "escalation", "update", "breach", "unreachable")


class RefusedMail(Protocol):
    @property
    def case_id(self) -> int | None: ...

    @property
    def outbox_id(self) -> int: ...


def ack_key(case_id: int) -> str:
    return f"ack:{case_id}"


def note_key(case_id: int, now: datetime) -> str:
    return f"note:{case_id}:{now:%Y-%m-%d}"


def lead_alert_key(mailbox: str, last_within_maximum: int) -> str:
    """One "we are behind" alert per episode: an episode is the run of promises above
    the maximum after the last one within it (promise id `last_within_maximum`, 0 for
    none), so it ends when a promise is back under the maximum."""
    return f"lead_alert:{mailbox}:after:{last_within_maximum}"


def reminder_key(case_id: int, promise_id: int, fraction: float) -> str:
    return f"reminder:case:{case_id}:promise:{promise_id}:{round(fraction * 100)}"


def escalation_key(case_id: int, promise_id: int | None) -> str:
    if promise_id is None:
        return f"escalation:case:{case_id}:unpromised"
    return f"escalation:case:{case_id}:promise:{promise_id}"


def update_key(case_id: int, promise_id: int) -> str:
    """The dedup key of the customer update revising promise `promise_id`."""
    return f"update:case:{case_id}:promise:{promise_id}"


def breach_key(case_id: int, promise_id: int) -> str:
    return f"breach:case:{case_id}:promise:{promise_id}"


def unreachable_key(refused: RefusedMail) -> str:
    """The team hears once of each customer mail the relay refused for good."""
    return f"unreachable:case:{refused.case_id}:outbox:{refused.outbox_id}"


def digest_key(mailbox: str, day: date) -> str:
    return f"digest:{mailbox}:{day}"


def away_key(mailbox: str, address: str, start: date) -> str:
    """The lead hears once of each absence: keyed by who and the day it started."""
    return f"away:{mailbox}:{address.lower()}:{start.isoformat()}"


def command_reply_key(message_pk: int) -> str:
    """One confirmation (or refusal) per command mail, however often it is triaged."""
    return f"command_reply:message:{message_pk}"


def command_update_key(case_id: int, message_pk: int) -> str:
    """The customer update of a command mail (#waiting): in the case's update range, so
    the chase reads it with its own keys, but about no promise (`promise_id_of` None)."""
    return f"update:case:{case_id}:message:{message_pk}"


def chase_key_ranges(case_id: int) -> list[tuple[str, str]]:
    """[low, high) bounds holding exactly this case's chase keys, one range per kind
    ("reminder:case:42:" up to "reminder:case:42;": ';' sorts right after ':')."""
    return [(f"{kind}:case:{case_id}:", f"{kind}:case:{case_id};") for kind in CHASE_KINDS]


def promise_id_of(key: str) -> int | None:
    """The promise a chase key is about (None for case-level keys or foreign keys)."""
    parts = key.split(":")
    if len(parts) >= 5 and parts[1] == "case" and parts[3] == "promise":
        try:
            return int(parts[4])
        except ValueError:
            return None
    return None
