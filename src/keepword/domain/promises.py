"""Promises as first-class values and their pure life cycle.

A promise is a due time somebody relies on: the customer (the acknowledgement's window,
a customer update's new estimate) or the team itself (an internal target). Every
transition returns a new `Promise` whose `reason` says why; nothing here reads a clock.

The rules:

- A staff reply resolves every open promise of the case: KEPT if it came at or before
  the due time, BROKEN (with the lateness in the reason) after it (`keep`,
  `on_staff_reply`). The reply is exactly what was promised, so it is never "withdrawn".
- Waiting on the customer pauses the clock: after a reply no promise runs until the
  customer writes again. A case set to wait on the customer without a reply, or closed,
  owes nothing any more: its open promises are WITHDRAWN - unless already past due, then
  they were BROKEN and stay so (`withdraw`, `on_case_paused`).
- A customer follow-up while a promise is open changes no promise (the first one still
  stands; the chase counts the contacts). A follow-up after a staff reply opens a
  NEXT_RESPONSE promise for the TEAM: an internal target, never mailed to the customer
  (`on_customer_follow_up`). The chase tells the customer only if a customer-facing
  promise would be missed.
- A promise past due with no reply is BROKEN (`break_if_due`); for a customer promise that
  is a *silent breach* unless an update was announced (the shell knows: the chase's
  update key is recorded) or the rate limit held the update back (recorded on the case
  before due; `is_held_back`).
- An announced revision (the chase's customer update) SUPERSEDES the old promise, which
  is only possible strictly before its due time (`supersede`); afterwards the honest
  word is "broken".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Protocol

from keepword.domain.model import PromiseAudience, PromiseKind, PromiseState


class WindowLike(Protocol):
    """What a promise needs from a response window (domain.windows.Window fits)."""

    @property
    def minutes(self) -> int: ...

    @property
    def due_at(self) -> datetime: ...

    @property
    def is_default(self) -> bool: ...

    @property
    def basis(self) -> Mapping[str, object]: ...


class CaseLike(Protocol):
    """What a follow-up needs to know about the case (domain.cases.CaseState fits)."""

    @property
    def id(self) -> int | None: ...

    @property
    def first_response_at(self) -> datetime | None: ...


@dataclass(frozen=True, slots=True)
class Promise:
    id: int | None
    case_id: int
    kind: PromiseKind
    audience: PromiseAudience
    made_at: datetime
    due_at: datetime
    state: PromiseState = PromiseState.OPEN
    resolved_at: datetime | None = None
    reason: str = ""
    basis: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    is_default: bool = False
    superseded_by: int | None = None

    @property
    def is_open(self) -> bool:
        return self.state is PromiseState.OPEN

    @property
    def to_customer(self) -> bool:
        return self.audience is PromiseAudience.CUSTOMER


def make_promise(
    case_id: int,
    kind: PromiseKind,
    audience: PromiseAudience,
    at: datetime,
    window: WindowLike,
    why: str,
) -> Promise:
    """A new open promise from a computed window."""
    return Promise(
        id=None,
        case_id=case_id,
        kind=kind,
        audience=audience,
        made_at=at,
        due_at=window.due_at,
        reason=why,
        basis=MappingProxyType(dict(window.basis)),
        is_default=window.is_default,
    )


def _require_open(promise: Promise, action: str) -> None:
    if not promise.is_open:
        raise ValueError(f"cannot {action} promise {promise.id}: it is {promise.state.value}")


def _late_by(promise: Promise, at: datetime) -> str:
    late = at - promise.due_at
    minutes = late / timedelta(minutes=1)
    return f"{minutes:.0f} min after due {promise.due_at:%Y-%m-%d %H:%M} UTC"


def keep(promise: Promise, at: datetime) -> Promise:
    """A staff reply at `at`: KEPT at or before the due time, BROKEN (and how late) after."""
    _require_open(promise, "keep")
    if at <= promise.due_at:
        return replace(
            promise,
            state=PromiseState.KEPT,
            resolved_at=at,
            reason=f"team replied {at:%Y-%m-%d %H:%M} UTC, before due",
        )
    return replace(
        promise,
        state=PromiseState.BROKEN,
        resolved_at=at,
        reason=f"team replied late: {_late_by(promise, at)}",
    )


HELD_BACK = "broken, its update held back by the rate limit"


def break_if_due(
    promise: Promise, now: datetime, *, announced: bool = False, held: bool = False
) -> Promise:
    """Past due with no reply: BROKEN. Unchanged while not yet due or no longer open.

    `announced` says the customer was told before (a late update does not count); a
    broken customer promise that was not announced is a *silent breach* - unless `held`:
    the update was due, but the per-address limit had no slot before the due time (the
    address got as many automatic mails as it may). That was decided and recorded on
    the case before the due time, and the late update goes out at the limit's slot: a
    breach, but not a silent one (`is_held_back`).
    """
    if not promise.is_open or now <= promise.due_at:
        return promise
    due = f"{promise.due_at:%Y-%m-%d %H:%M} UTC"
    if promise.to_customer and not announced and held:
        why = f"{HELD_BACK} before due {due}"
    elif promise.to_customer and not announced:
        why = f"silent breach: no reply and no update to the customer by due {due}"
    elif promise.to_customer:
        why = f"broken, announced to the customer before due {due}"
    else:
        why = f"internal target missed: no reply by {due}"
    return replace(promise, state=PromiseState.BROKEN, resolved_at=promise.due_at, reason=why)


def is_held_back(promise: Promise) -> bool:
    """A broken customer promise whose update the rate limit held back (not silent)."""
    return promise.state is PromiseState.BROKEN and promise.reason.startswith(HELD_BACK)


def supersede(old: Promise, new_id: int, at: datetime) -> Promise:
    """An announced revision: `old` is replaced by promise `new_id`, told at `at`.

    Only strictly before the old due time; after it the promise was broken (ValueError).
    """
    _require_open(old, "supersede")
    if at >= old.due_at:
        raise ValueError(
            f"promise {old.id} was due {old.due_at.isoformat()}: a revision at "
            f"{at.isoformat()} comes too late to supersede it (it is broken)"
        )
    return replace(
        old,
        state=PromiseState.SUPERSEDED,
        resolved_at=at,
        superseded_by=new_id,
        reason=f"announced revision {at:%Y-%m-%d %H:%M} UTC before due (promise {new_id})",
    )


def never_told(
    old: Promise, new: Promise, reply_at: datetime | None, at: datetime
) -> tuple[Promise, Promise]:
    """The update announcing `new` was withdrawn before it left: the customer still holds
    `old`, and `new` was never theirs.

    `old` is judged as if it had never been superseded: by the team's latest reply
    (`keep`) if it came after `old` was made, or, with none (the case closed), broken if
    already due - its update was held, not silent - and withdrawn otherwise. `new` is
    withdrawn whatever became of it, so a time the customer never heard is never counted
    as kept.
    """
    if old.state is not PromiseState.SUPERSEDED or old.superseded_by != new.id:
        raise ValueError(f"promise {new.id} did not supersede promise {old.id}")
    reopened = replace(old, state=PromiseState.OPEN, resolved_at=None, superseded_by=None)
    if reply_at is not None and reply_at >= old.made_at:
        judged = keep(reopened, reply_at)
    else:
        judged = break_if_due(reopened, at, held=True)
        if judged.is_open:
            judged = withdraw(reopened, at, "the case closed before its update left")
    untold = replace(
        new,
        state=PromiseState.WITHDRAWN,
        resolved_at=at,
        reason=f"never told: its update was withdrawn before it left ({at:%Y-%m-%d %H:%M} UTC)",
    )
    return judged, untold


def withdraw(promise: Promise, at: datetime, why: str) -> Promise:
    """No longer owed (case closed, waiting on the customer): WITHDRAWN with `why`."""
    _require_open(promise, "withdraw")
    return replace(promise, state=PromiseState.WITHDRAWN, resolved_at=at, reason=why)


def _open(promises: Iterable[Promise]) -> list[Promise]:
    return [p for p in promises if p.is_open]


def on_staff_reply(open_promises: Iterable[Promise], at: datetime) -> list[Promise]:
    """A staff reply resolves every open promise (kept, or broken if late)."""
    return [keep(p, at) for p in _open(open_promises)]


def on_case_paused(open_promises: Iterable[Promise], at: datetime, why: str) -> list[Promise]:
    """The case closed or waits on the customer without a reply: nothing is owed any more.

    Promises already past due stay broken (closing a case does not undo a breach); the
    others are withdrawn with `why`.
    """
    settled: list[Promise] = []
    for promise in _open(open_promises):
        broken = break_if_due(promise, at)
        settled.append(broken if not broken.is_open else withdraw(promise, at, why))
    return settled


def on_customer_follow_up(
    case: CaseLike, open_promises: Iterable[Promise], at: datetime, window: WindowLike
) -> list[Promise]:
    """New promises owed after the customer wrote again at `at`.

    - A promise still open: none (it still stands; the chase counts the contacts).
    - No open promise and the team replied before: a NEXT_RESPONSE promise for the TEAM,
      due after `window` - an internal target, not mailed to the customer.
    - No open promise and no team reply ever: none here; the case's first promise comes
      with its acknowledgement.
    """
    if _open(open_promises) or case.first_response_at is None:
        return []
    if case.id is None:
        raise ValueError("a follow-up promise needs a stored case (id is None)")
    why = f"customer wrote again {at:%Y-%m-%d %H:%M} UTC after a team reply: internal target"
    return [make_promise(case.id, PromiseKind.NEXT_RESPONSE, PromiseAudience.TEAM, at, window, why)]
